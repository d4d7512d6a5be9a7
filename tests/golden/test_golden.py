"""Structure may move; numbers may not: every golden value recomputed bit for bit.

The values and how they are made: `tests/golden/values.py`. A change that is meant to change
numbers re-records them (`python tests/golden/values.py --record <part>`) and says why in its
commit.
"""

from __future__ import annotations

import json

import pytest
import values

GOLDEN = json.loads(values.GOLDEN.read_text())


@pytest.mark.parametrize("part", values.PARTS)
def test_golden_values_are_unchanged(part):
    computed = values.compute((part,))[part]
    recorded = GOLDEN[part]
    assert sorted(computed) == sorted(recorded)
    changed = [name for name in recorded if computed[name] != recorded[name]]
    assert not changed, f"{part}: changed values for {changed}"
