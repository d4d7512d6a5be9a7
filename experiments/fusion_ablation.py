"""Fusion ablation: how much does fusing a target-side LM help as parallel data shrinks?

    lmfuse experiment experiments/fusion_ablation.py --budget cpu
    lmfuse experiment experiments/fusion_ablation.py --budget gpu
    lmfuse experiment experiments/fusion_ablation.py --set fractions=5 --set methods=none,shallow

Grid: parallel-data fraction {1, 5, 20, 100}% of the training pairs (`data.train_fraction`, a
fixed subset, smaller fractions inside larger ones) x method {none, shallow, density_ratio,
ilme, deep, cold, simple_postnorm, simple_prenorm, linear} x backbone {transformer, rnn}, on
Bible style transfer YLT -> ASV (configs/s2s_transformer.py and configs/s2s_rnn.py). The LM is
configs/lm_transformer.py on all ASV training text, for both backbones (the fused models take
any decoder-only LM; a Transformer LM with an RNN encoder-decoder trains and decodes).
`lmfuse.experiments.fusion_cells` says which model is trained from what, and how choices are
made on validation only; the results go to experiments/results/fusion_ablation.{md,csv,png}.

Run it from the repository root (config paths are relative to it). Rerunning resumes: finished
cells are skipped, trained models reused, failed cells retried. `--set` changes the settings
below; `--config.key=value` goes to every training run (whose config has the key).
"""

from lmfuse.experiments import fusion_cells
from lmfuse.experiments.artifacts import override
from lmfuse.experiments.fusion_report import write_report
from lmfuse.experiments.runner import Experiment
from lmfuse.experiments.settings import check_at_least, parse_settings
from lmfuse.experiments.sizes import size_overrides

NAME = "fusion_ablation"

# Every size of both budgets, in one place. `cpu`: the tiny configs with few steps and the
# first `eval_sentences` verses of validation and test: about 40 minutes per (fraction,
# backbone) on a 2-core CPU, so a fraction or two at a time (`--set fractions=5`) rather than
# the 72-cell grid at once. `gpu`: the full configs and the full splits.
SIZES = {
    "cpu": {
        "variant": "tiny",
        "lm_steps": 300,  # configs/lm_transformer.py:tiny
        "lm_seq_len": 96,  # as long as the tiny encoder-decoders' outputs (tiny LM: 64)
        "s2s_steps": 250,  # every encoder-decoder trained from scratch (tiny config: 400)
        "deep_steps": 100,  # deep / linear fusion, from the plain encoder-decoder
        "linear_steps": 100,
        "rnn_step_scale": 2,  # the tiny RNN's batches are 16 rows, the Transformer's 32
        "beam_size": 4,
        "checkpoints": 2,  # kept per encoder-decoder, chosen between on validation BLEU
        "eval_sentences": 100,  # first N verses of validation and of test
    },
    "gpu": {
        "variant": None,
        "lm_steps": 0,  # 0: the config's (lm 20k, s2s 40k, deep 10k, linear 5k steps)
        "lm_seq_len": 0,  # 0: the config's (128, as the encoder-decoders)
        "s2s_steps": 0,
        "deep_steps": 0,
        "linear_steps": 0,
        "rnn_step_scale": 1,  # the full configs' batches are the same size
        "beam_size": 0,  # 0: the config's (4)
        "checkpoints": 4,
        "eval_sentences": 0,  # 0: the full splits
    },
}

GRID = ("fractions", "methods", "backbones")  # settings that only choose cells


def defaults(budget: str) -> dict:
    sizes = SIZES[budget]
    return {
        "fractions": (1.0, 5.0, 20.0, 100.0),  # % of the training pairs
        "methods": fusion_cells.METHODS,
        "backbones": tuple(fusion_cells.BACKBONES),
        "lambdas": (0.1, 0.2, 0.3, 0.5),  # decode-time LM weight λ (ILME μ and DR λ2 = λ)
        "eval_sentences": sizes["eval_sentences"],
        "checkpoints": sizes["checkpoints"],
    }


def plan(budget: str, settings: dict) -> fusion_cells.Plan:
    sizes = SIZES[budget]
    s2s, lm = size_overrides(budget, sizes)
    # The trained fusions read the encoder-decoder's vocab logits, which a copy (pointer-
    # generator) output does not have, so every encoder-decoder here is the plain one.
    s2s = (*s2s, override("model.copy_source", False))
    return fusion_cells.Plan(
        variant=sizes["variant"],
        lm_overrides=lm,
        s2s_overrides=s2s,
        method_steps={"deep": sizes["deep_steps"], "linear": sizes["linear_steps"]},
        checkpoints=settings["checkpoints"],
        lambdas=settings["lambdas"],
        eval_sentences=settings["eval_sentences"],
        step_scale={"rnn": sizes["rnn_step_scale"]},
    )


def get_experiment(budget: str, settings: dict) -> Experiment:
    parsed = parse_settings(defaults(budget), settings)
    check_at_least(parsed, {"checkpoints": 1, "eval_sentences": 0})
    sizes = plan(budget, parsed)
    cells = fusion_cells.build_cells(sizes, parsed["fractions"], parsed["backbones"],
                                     parsed["methods"])
    return Experiment(
        name=NAME,
        budget=budget,
        settings=parsed,
        cells=cells,
        report=lambda report: write_report(
            report, fusion_cells.describe_task(sizes, report.context)),
        grid_settings=GRID,
        check=lambda context: fusion_cells.check_overrides(sizes, context),
    )
