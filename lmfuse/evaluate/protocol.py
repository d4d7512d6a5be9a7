"""The evaluation protocol: what a fusion result must go through before it is a claim.

    sample = seeded_sample(ids, 1000, seed=0)               # spread over every book, by seed
    best = select_on_validation({'lm': (0.1, 0.3)}, score)  # 0 joins every weight's grid
    report = paired_bootstrap({'none': h0, 'shallow': h1, 'copy': sources}, refs, 'none')

* Samples are seeded, never "the first N": drawn within each group (a Bible book, from the
  verse id) in proportion to its size, so every book of the split is represented; the ids are
  written next to the results.
* Weights are chosen on validation only, over grids that always hold 0, so a selected
  decode-time method never scores below no fusion on the validation sample.
* Confidence comes from sacrebleu's own paired bootstrap resampling (`PairedTest`, the test
  `sacrebleu --paired-bs` runs): each system's mean and 95% interval half-width over the
  resamples, and the p-value of its difference to the baseline.
* Several training seeds are summarised as mean ± sd, and a difference is called a gain (or a
  loss) only when it has the same sign and p < 0.05 in every seed (`verdict`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from sacrebleu.significance import PairedTest

from lmfuse.errors import LmfuseError
from lmfuse.evaluate.metrics import reference_metrics

_REFERENCE = re.compile(r"^(.*?)\s+\d+:\d+")


def group_of(example_id: str) -> str:
    """The stratum of an id: the book of a verse reference ('1 Samuel 3:4' -> '1 Samuel'),
    else one group for all."""
    match = _REFERENCE.match(example_id)
    return match.group(1) if match else ""


def seeded_sample(ids: Sequence[str], size: int, seed: int) -> list[int]:
    """Sorted indices of `size` examples drawn without replacement, each group (book) getting
    its share of `size` in proportion to its examples (largest remainders); all indices when
    `size` is 0 or covers the split."""
    if size < 0:
        raise LmfuseError(f"--sample {size} must be >= 0 (0: the whole split)")
    if size == 0 or size >= len(ids):
        return list(range(len(ids)))
    groups: dict[str, list[int]] = {}
    for index, example_id in enumerate(ids):
        groups.setdefault(group_of(example_id), []).append(index)
    quotas = {g: size * len(members) / len(ids) for g, members in groups.items()}
    counts = {g: int(q) for g, q in quotas.items()}
    by_remainder = sorted(groups, key=lambda g: (-(quotas[g] - counts[g]), g))
    for g in by_remainder[: size - sum(counts.values())]:
        counts[g] += 1
    rng = np.random.default_rng(seed)
    picked = []
    for g in sorted(groups):  # a fixed order: the same seed gives the same sample
        members = groups[g]
        picked.extend(int(i) for i in rng.choice(members, counts[g], replace=False))
    return sorted(picked)


def with_zero(grid: Sequence[float]) -> tuple[float, ...]:
    """The grid with 0 in it (no fusion is always a candidate), sorted."""
    return tuple(sorted({0.0, *map(float, grid)}))


def select_on_validation(grids: Mapping[str, Sequence[float]],
                         score: Callable[[dict[str, float]], float]) -> tuple[dict[str, float], float]:
    """The weights (one per grid, each grid holding 0) with the best validation score, and
    that score; ties go to the earlier candidate, all-zero first. `score` must read
    validation data only."""
    names = sorted(grids)
    candidates = itertools.product(*(with_zero(grids[n]) for n in names))
    best, best_score = None, -np.inf
    for values in sorted(candidates, key=lambda v: (any(v), v)):
        weights = dict(zip(names, values, strict=True))
        value = score(weights)
        if value > best_score:
            best, best_score = weights, value
    return best, best_score


# sacrebleu's paired test passes its seed on as `seed if seed else None`, so SACREBLEU_SEED=0
# draws unseeded resamples (p-values and intervals that change from run to run). Seed 0 is
# handed to it as this value instead; every other seed as itself.
SACREBLEU_SEED_FOR_ZERO = 2**31 - 1


def sacrebleu_seed(seed: int) -> int:
    """The SACREBLEU_SEED that reproduces lmfuse's paired bootstrap with `seed` (for the
    sacrebleu command line: `SACREBLEU_SEED=<this> sacrebleu ... --paired-bs`)."""
    return seed if seed else SACREBLEU_SEED_FOR_ZERO


@contextlib.contextmanager
def _sacrebleu_seed(seed: int) -> Iterator[None]:
    """sacrebleu reads its resampling seed from SACREBLEU_SEED at each test."""
    previous = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(sacrebleu_seed(seed))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = previous


def paired_bootstrap(systems: Mapping[str, Sequence[str]], references: Sequence[str],
                     baseline: str, seed: int = 12345, resamples: int = 1000
                     ) -> dict[str, dict[str, Any]]:
    """sacrebleu's paired bootstrap of every system against `baseline`, for BLEU and chrF:
    {system: {'bleu': score, 'bleu_mean', 'bleu_ci' (95% half-width), 'bleu_p' (None for
    the baseline), and the same for 'chrf'}}."""
    if baseline not in systems:
        raise LmfuseError(f"the baseline {baseline!r} is not among the systems {sorted(systems)}")
    named = [(baseline, list(systems[baseline]))]
    named += [(name, list(hyps)) for name, hyps in systems.items() if name != baseline]
    for name, hyps in named:  # sacrebleu would pair the first lines and drop the rest
        if len(hyps) != len(references):
            raise LmfuseError(f"{len(hyps)} lines of {name!r} against {len(references)} "
                              "references: the paired bootstrap needs one line per reference")
    # None: the references' n-grams the metrics already hold.
    metrics = dict(reference_metrics(tuple(references)))
    with _sacrebleu_seed(seed):
        _, results = PairedTest(named, metrics, None, test_type="bs", n_samples=resamples)()
    report: dict[str, dict[str, Any]] = {name: {} for name, _ in named}
    # sacrebleu keys its results by the metric's own name (chrF with beta 2 is 'chrF2').
    # sacrebleu counts only resamples whose difference strictly exceeds the observed one, so
    # a system identical to the baseline (validation chose weight 0) would get p = 1/(n+1);
    # identical outputs differ in nothing: p = 1.
    identical = {name: hyps == named[0][1] for name, hyps in named[1:]}
    for metric, key in (("BLEU", "bleu"), ("chrF2", "chrf")):
        for (name, _), result in zip(named, results[metric], strict=True):
            p_value = None if result.p_value is None else float(result.p_value)
            if identical.get(name):
                p_value = 1.0
            report[name].update({key: float(result.score), f"{key}_mean": float(result.mean),
                                 f"{key}_ci": float(result.ci), f"{key}_p": p_value})
    return report


def sample_split(ids: Sequence[str], columns: Sequence[Sequence[str]], size: int, seed: int
                 ) -> tuple[list[str], list[list[str]]]:
    """`seeded_sample` applied to ids and to each column aligned with them."""
    keep = seeded_sample(ids, size, seed)
    return [ids[i] for i in keep], [[column[i] for i in keep] for column in columns]


def against_copy(hypotheses: Sequence[str], sources: Sequence[str], references: Sequence[str],
                 seed: int) -> dict[str, Any]:
    """The system and copying the source under `paired_bootstrap` (the copy as baseline)."""
    report = paired_bootstrap({"copy": sources, "system": hypotheses}, references, "copy", seed)
    return {"seed": seed, "system": report["system"], "copy": report["copy"]}


def format_confidence(confidence: Mapping[str, Any]) -> str:
    """Two lines: the system's and the copy's BLEU / chrF with 95% intervals, and p."""
    lines = []
    for name, label in (("system", "system"), ("copy", "copy source")):
        r = confidence[name]
        line = (f"  {label:<12} BLEU {r['bleu']:6.2f} ({r['bleu_mean']:.2f} ± {r['bleu_ci']:.2f})"
                f"   chrF {r['chrf']:6.2f} ({r['chrf_mean']:.2f} ± {r['chrf_ci']:.2f})")
        if r["bleu_p"] is not None:
            line += f"   p vs copy: BLEU {r['bleu_p']:.4f}, chrF {r['chrf_p']:.4f}"
        lines.append(line)
    return ("paired bootstrap (sacrebleu, 95% CI, seed "
            f"{confidence['seed']}):\n" + "\n".join(lines))


SIGNIFICANCE = 0.05  # a seed's difference counts when sacrebleu's p-value is below this
# One seed's significant difference can be that seed's luck (the 5% Transformer's `none` spans
# 17.31-17.82 BLEU over three seeds), so a gain or loss is only called across seeds.
MIN_SEEDS = 2
ONE_SEED = "one seed: not called"


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.asarray(values, dtype=float)
    if not array.size:
        raise LmfuseError("no values to summarise")
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def verdict(differences: Sequence[float], p_values: Sequence[float | None]) -> str:
    """'gain' / 'loss' when at least MIN_SEEDS seeds were run and every seed's difference to
    the baseline has that sign and p < SIGNIFICANCE; ONE_SEED with fewer seeds; else 'no clear
    difference'."""
    if not differences or len(differences) != len(p_values):
        raise LmfuseError("a verdict needs one difference and one p-value per seed")
    if len(differences) < MIN_SEEDS:
        return ONE_SEED
    if any(p is None or p >= SIGNIFICANCE for p in p_values):
        return "no clear difference"
    if all(d > 0 for d in differences):
        return "gain"
    if all(d < 0 for d in differences):
        return "loss"
    return "no clear difference"
