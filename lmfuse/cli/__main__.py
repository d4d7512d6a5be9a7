"""`python -m lmfuse.cli ...`: the same as the `lmfuse` console script."""

import sys

from lmfuse.cli import main

sys.exit(main())
