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


RECORDED_ON = GOLDEN.get("platform", values.RECORDED_ON)


def readable_differences(recorded, computed, where: str = "") -> list[str]:
    """Where two recorded values differ beyond what another processor explains: numbers by
    more than 1e-4 (absolute or relative), integers (tokens, counts) at all, structure at all;
    digests (strings) are not compared."""
    if isinstance(recorded, dict) and isinstance(computed, dict):
        if sorted(recorded) != sorted(computed):
            return [where or "keys"]
        return [d for key in recorded
                for d in readable_differences(recorded[key], computed[key], f"{where}/{key}")]
    if isinstance(recorded, list) and isinstance(computed, list):
        if len(recorded) != len(computed):
            return [where]
        return [d for i, (a, b) in enumerate(zip(recorded, computed, strict=True))
                for d in readable_differences(a, b, f"{where}[{i}]")]
    if isinstance(recorded, str) and isinstance(computed, str):
        return []
    if isinstance(recorded, float) or isinstance(computed, float):
        return [] if recorded == pytest.approx(computed, rel=1e-4, abs=1e-4) else [where]
    return [] if recorded == computed else [where]


@pytest.mark.parametrize("part", values.PARTS)
def test_golden_values_are_unchanged(part):
    """Bit for bit on the machine that recorded them (and always for the configs); on another
    processor the digests cannot match, so the losses, scores and tokens must, within 1e-4."""
    computed = values.compute((part,))[part]
    recorded = GOLDEN[part]
    assert sorted(computed) == sorted(recorded)
    changed = [name for name in recorded if computed[name] != recorded[name]]
    if part == "configs" or values.platform() == RECORDED_ON:
        assert not changed, f"{part}: changed values for {changed}"
    else:
        moved = [d for name in changed
                 for d in readable_differences(recorded[name], computed[name], name)]
        assert not moved, f"{part} (on {values.platform()}, recorded on {RECORDED_ON}): {moved}"
