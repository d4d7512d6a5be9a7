"""The fusion ablation's outputs: tables (md, csv), every validation point (csv), and plots.

    <results>/fusion_ablation.md          the table, with budget, device, date, signatures,
                                          the command, and each cell's reproducing commands
    <results>/fusion_ablation.csv         one row per cell (failed cells: no numbers)
    <results>/fusion_ablation_sweeps.csv  every validation point (λ or checkpoint) of every cell
    <results>/fusion_ablation_bleu.png    test BLEU against parallel-data fraction, per method,
                                          one panel per backbone
    <results>/fusion_ablation_lambda.png  validation BLEU against λ, per decode-time method, one
                                          panel per (backbone, fraction)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmfuse.experiments.ledger import OK, CellRecord
from lmfuse.experiments.report_parts import (
    commands_lines,
    csv_text,
    fmt,
    header_lines,
    not_finished,
    score,
    shared_models_lines,
)
from lmfuse.experiments.runner import ReportInput

NAME = "fusion_ablation"
COLUMNS = ("fraction", "backbone", "method", "status", "lambda", "step", "val_bleu", "val_pinc",
           "test_bleu", "test_chrf", "test_pinc", "lm_perplexity", "val_perplexity",
           "wall_seconds", "error", "commands")
SWEEP_COLUMNS = ("fraction", "backbone", "method", "kind", "value", "chosen", "val_bleu",
                 "val_chrf", "val_pinc", "val_perplexity")
DECODE_TIME = ("shallow", "density_ratio", "ilme")


def write_report(report: ReportInput, task: str) -> list[Path]:
    """Writes every output (see the module docstring); returns their paths."""
    out = report.results_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{NAME}.md", out / f"{NAME}.csv", out / f"{NAME}_sweeps.csv",
             out / f"{NAME}_bleu.png", out / f"{NAME}_lambda.png"]
    rows = [cell_row(r) for r in report.records]
    paths[0].write_text(markdown(report, rows, task), encoding="utf-8")
    paths[1].write_text(csv_text(COLUMNS, rows), encoding="utf-8")
    paths[2].write_text(csv_text(SWEEP_COLUMNS, sweep_rows(report.records)), encoding="utf-8")
    plot_bleu(report.records, paths[3])
    plot_lambda(report.records, paths[4])
    return paths


def cell_row(record: CellRecord) -> dict[str, Any]:
    v, ok = record.values, record.status == OK
    row = {**record.labels, "status": record.status, "error": record.error,
           "wall_seconds": round(record.seconds + v.get("attributed_seconds", 0.0), 1)}
    if ok:
        row.update(lambda_=v["lambda"], step=v["step"], val_bleu=v["val"]["bleu"],
                   val_pinc=v["val"]["pinc"], test_bleu=v["test"]["bleu"],
                   test_chrf=v["test"]["chrf"], test_pinc=v["test"]["pinc"],
                   lm_perplexity=v["lm_perplexity"], val_perplexity=v["val_perplexity"],
                   commands=" && ".join(v["commands"]))
        row["lambda"] = row.pop("lambda_")
    return {k: fmt(row.get(k)) for k in COLUMNS}


def sweep_rows(records: list[CellRecord]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        if record.status != OK:
            continue
        kind = "lambda" if record.labels["method"] in DECODE_TIME else "step"
        chosen = record.values[kind]
        for point in record.values["sweep"]:
            rows.append({k: fmt(v) for k, v in {
                **record.labels, "kind": kind, "value": point[kind],
                "chosen": point[kind] == chosen, "val_bleu": point["val"]["bleu"],
                "val_chrf": point["val"]["chrf"], "val_pinc": point["val"]["pinc"],
                "val_perplexity": point.get("val_perplexity")}.items()})
    return rows


# ---------------------------------------------------------------------------------------------
# Markdown


def markdown(report: ReportInput, rows: list[dict[str, str]], task: str) -> str:
    lines = [
        f"# Fusion ablation ({report.experiment.budget} budget)",
        "",
        f"- Task: {task}",
        *header_lines(report),
        "- Selection on validation BLEU only: the checkpoint of each trained model (every kept "
        "one), and λ of each decode-time method over "
        f"{', '.join(f'{x:g}' for x in report.experiment.settings.get('lambdas', ()))} "
        "(ILME μ = λ, density-ratio λ2 = λ); test is decoded once, at the choice.",
        "- Decode-time methods fuse the `none` model's chosen checkpoint; deep and linear "
        "fusion start from its last checkpoint. At 100% data the density-ratio source LM is "
        "the target LM (same text), so density ratio is no fusion there.",
        "- Wall time: the cell's own work (training, checkpoint choice, λ sweep, decoding); "
        "`none` counts its encoder-decoder's training and checkpoint choice, which the "
        "decode-time cells then reuse; the LMs are listed below.",
        *copy_baseline_lines(report.records),
        "",
        "| fraction % | backbone | method | choice | val BLEU | val PINC | test BLEU | "
        "test chrF | test PINC | LM ppl | wall s |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record, row in zip(report.records, rows, strict=True):
        head = f"| {row['fraction']} | {row['backbone']} | {row['method']} "
        if record.status != OK:
            lines.append(head + f"| {not_finished(record)} | | | | | | | | |")
            continue
        choice = f"step {row['step']}" + (f", λ {row['lambda']}" if row["lambda"] else "")
        cells = [choice] + [score(record, *path) for path in (
            ("val", "bleu"), ("val", "pinc"), ("test", "bleu"), ("test", "chrf"),
            ("test", "pinc"))]
        lm = record.values.get("lm_perplexity")
        cells += [f"{lm:.2f}" if lm is not None else "", row["wall_seconds"]]
        lines.append(head + "| " + " | ".join(cells) + " |")
    lines += ["", f"![test BLEU against data fraction]({NAME}_bleu.png)", "",
              f"![validation BLEU against λ]({NAME}_lambda.png)", ""]
    lines += shared_models_lines(report)
    lines += commands_lines(report)
    return "\n".join(lines)


def copy_baseline(records: list[CellRecord]) -> dict[str, float] | None:
    """Test scores of the source copied as the output: every cell decodes the same verses, so
    any finished cell holds them. The bar a style-transfer system has to clear."""
    for record in records:
        if record.status == OK:
            test = record.values["test"]
            return {"bleu": test["copy_bleu"], "chrf": test["copy_chrf"]}
    return None


def copy_baseline_lines(records: list[CellRecord]) -> list[str]:
    copy = copy_baseline(records)
    if copy is None:
        return []
    return [f"- Copying the source as the output scores test BLEU {copy['bleu']:.2f} "
            f"(chrF {copy['chrf']:.2f}, PINC 0): the dotted line in the plot."]


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API renders with Agg; pyplot's global state is never touched)


def plot_bleu(records: list[CellRecord], path: Path) -> None:
    from matplotlib.figure import Figure

    ok = [r for r in records if r.status == OK]
    copy = copy_baseline(records)
    backbones = list(dict.fromkeys(r.labels["backbone"] for r in records)) or ["-"]
    fig = Figure(figsize=(5.5 * len(backbones), 4.2), layout="constrained")
    axes = fig.subplots(1, len(backbones), squeeze=False)[0]
    for ax, backbone in zip(axes, backbones, strict=True):
        methods = dict.fromkeys(r.labels["method"] for r in ok if r.labels["backbone"] == backbone)
        for method in methods:
            points = sorted((r.labels["fraction"], r.values["test"]["bleu"]) for r in ok
                            if r.labels["backbone"] == backbone and r.labels["method"] == method)
            # The baseline in black, decode-time fusion solid, trained fusion dashed.
            style = ({"color": "black", "linewidth": 2.2} if method == "none" else
                     {"linestyle": "-" if method in DECODE_TIME else "--"})
            ax.plot(*zip(*points, strict=True), marker="o", label=method, **style)
        if copy is not None:
            ax.axhline(copy["bleu"], color="gray", linestyle=":", label="copy source")
        fractions = sorted({r.labels["fraction"] for r in ok if r.labels["backbone"] == backbone})
        ax.set_xscale("log")
        if fractions:
            ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
            ax.minorticks_off()
        ax.set_xlabel("parallel data (% of training pairs)")
        ax.set_ylabel("test BLEU")
        ax.set_title(backbone)
        ax.grid(alpha=0.3)
        if methods:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no finished cells", ha="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110)


def plot_lambda(records: list[CellRecord], path: Path) -> None:
    from matplotlib.figure import Figure

    ok = [r for r in records if r.status == OK and r.labels["method"] in DECODE_TIME]
    panels = sorted({(r.labels["backbone"], r.labels["fraction"]) for r in ok}) or [("-", 0)]
    backbones = list(dict.fromkeys(b for b, _ in panels))
    fractions = sorted({f for _, f in panels})
    fig = Figure(figsize=(4 * len(fractions), 3.4 * len(backbones)), layout="constrained")
    axes = fig.subplots(len(backbones), len(fractions), squeeze=False)
    for i, backbone in enumerate(backbones):
        for j, fraction in enumerate(fractions):
            ax = axes[i][j]
            cells = [r for r in ok if (r.labels["backbone"], r.labels["fraction"]) == (backbone, fraction)]
            for record in cells:
                points = sorted((p["lambda"], p["val"]["bleu"]) for p in record.values["sweep"])
                ax.plot(*zip(*points, strict=True), marker="o", label=record.labels["method"])
                ax.plot([record.values["lambda"]], [record.values["val"]["bleu"]], marker="*",
                        markersize=12, color=ax.lines[-1].get_color())
            ax.set_title(f"{backbone}, {fraction:g}% data")
            ax.set_xlabel("λ")
            ax.set_ylabel("validation BLEU")
            ax.grid(alpha=0.3)
            if cells:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "no decode-time cells", ha="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110)
