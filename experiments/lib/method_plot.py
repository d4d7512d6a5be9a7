"""Every method of a study side by side: one panel per group (a fraction and backbone, a
Carlson row), one line per method, each seed's test BLEU with its 95% paired-bootstrap
interval, and the `none` mean and copying the source as vertical lines. Where the study has a
single fraction this is the picture to read; a curve over fractions stacks the methods on one
x value."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lib.runner import OK, CellRecord
from lib.tables import fmt

SEED_OFFSET = 0.18  # seeds of one method drawn a little apart, so intervals do not overlap


def plot_methods(records: Sequence[CellRecord], group: Sequence[str], path: Path,
                 title: str = "test BLEU, each seed with its 95% bootstrap interval") -> None:
    """Writes the figure to `path`; `group` names the labels that make a panel."""
    from matplotlib.figure import Figure

    ok = [r for r in records if r.status == OK and "confidence" in r.values]
    panels = list(dict.fromkeys(tuple(r.labels[k] for k in group) for r in ok)) or [None]
    methods = list(dict.fromkeys(r.labels["method"] for r in ok))
    fig = Figure(figsize=(5.0 * len(panels), 1.0 + 0.42 * max(len(methods), 1)),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, panel in zip(axes, panels, strict=True):
        members = [r for r in ok if tuple(r.labels[k] for k in group) == panel]
        if not members:
            ax.text(0.5, 0.5, "no finished cells", ha="center", transform=ax.transAxes)
            continue
        seeds = sorted({r.labels.get("seed", 0) for r in members})
        for row, method in enumerate(methods):
            for r in (r for r in members if r.labels["method"] == method):
                system = r.values["confidence"]["none"]["system"]
                offset = (seeds.index(r.labels.get("seed", 0)) - (len(seeds) - 1) / 2) * SEED_OFFSET
                color = "black" if method == "none" else f"C{row % 10}"
                ax.errorbar(system["bleu"], row + offset, xerr=system["bleu_ci"], fmt="o",
                            color=color, capsize=2, markersize=4)
        plain = [r.values["test"]["bleu"] for r in members if r.labels["method"] == "none"]
        if plain:
            ax.axvline(sum(plain) / len(plain), color="black", linewidth=1,
                       label=f"none, mean of {len(plain)} seed(s)")
        copy = members[0].values["confidence"]["copy"]["baseline"]["bleu"]
        ax.axvline(copy, color="gray", linestyle=":", label="copy the source")
        ax.set_yticks(range(len(methods)), methods)
        ax.invert_yaxis()
        ax.set_xlabel("test BLEU")
        ax.set_title(", ".join(f"{k} {fmt(v)}" for k, v in zip(group, panel, strict=True)),
                     fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
