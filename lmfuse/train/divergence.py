"""Stopping a diverged run before it saves anything diverged.

The train step returns each step's loss (of the state it was given) and a `finite` flag (of the
state it returns). The loop fetches both at its host syncs (log, eval and checkpoint points;
every save follows one) and `check` stops the run at the first step where either fails, so no
checkpoint ever holds nan/inf and rotation (train.keep_checkpoints) only ever drops finite ones.
"""

from __future__ import annotations

from collections.abc import Iterable

import ml_collections
import numpy as np

from lmfuse.errors import LmfuseError


def check(metrics: Iterable[tuple[int, dict]], newest_checkpoint: int | None,
          optimizer: ml_collections.ConfigDict) -> None:
    """Raises a one-line `LmfuseError` at the first (step index, fetched metrics) whose loss or
    updated state is not finite, naming the newest checkpoint kept and a fix."""
    for at_step, values in metrics:
        loss = float(values["loss"])
        if not np.isfinite(loss):
            what = f"loss became {loss} at step {at_step + 1}"
        elif not bool(values.get("finite", True)):
            what = (f"the parameters or optimizer state became nan/inf at step {at_step + 1} "
                    f"(loss {loss:.4g} before the update)")
        else:
            continue
        kept = ("no checkpoint was written" if newest_checkpoint is None else
                f"the newest checkpoint, step {newest_checkpoint}, is finite and kept")
        raise LmfuseError(f"{what}; training stopped without saving it and {kept}. {fix(optimizer)}")


def fix(optimizer: ml_collections.ConfigDict) -> str:
    """What to change: a lower learning rate, and gradient clipping where it is off."""
    text = f"Lower optimizer.learning_rate (now {optimizer.learning_rate:g})"
    if not optimizer.get("clip_norm"):
        text += ", or set optimizer.clip_norm (e.g. 1.0; it is off)"
    return text
