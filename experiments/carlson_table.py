"""Carlson et al. 2018 ("Evaluating prose style transfer with the Bible"): their rows, each with
and without fusing a target-side LM.

    lmfuse data prepare --config configs/data_bible.py      # once: the Bible and its tokenizer
    lmfuse experiment experiments/carlson_table.py --budget cpu   # tiny models (see SIZES)
    lmfuse experiment experiments/carlson_table.py --budget gpu   # paper-size models, full splits
    lmfuse experiment experiments/carlson_table.py --set rows=kjv_asv,ylt_bbe --set methods=none

Workdirs go to workdirs/carlson_table_<budget> (--workdir), tables to
experiments/results/carlson_table.{md,csv} (--results); both list every `lmfuse train` and
`lmfuse translate` command a cell ran, so each number can be reproduced by hand.

Rows, in the paper's order: KJV→ASV, public→ASV, BBE→ASV, YLT→BBE, public→BBE, YLT→ASV, on
their split (`public`: every other English version paired with the target, verse by verse).
Systems: `none`, the row's encoder-decoder alone, and `shallow`, the same checkpoint with a
Transformer LM of the target version's train text fused in beam search (configs/
lm_transformer.py with data.versions=<target>: one LM per target version, shared by its rows),
λ chosen on validation BLEU. Budget `gpu` trains the paper-size configs configs/carlson/<row>.py
(3-layer bi-LSTM with attention) and the full LM, and scores the full validation and test
splits; budget `cpu` trains configs/s2s_transformer.py:tiny per row and the tiny LM with the
SIZES below and scores the first `eval_sentences` pairs of each split (for the public rows those
are the first eval_sentences/6 verses, every version of each). `lmfuse.experiments.
carlson_cells` says which model is trained from what.

Run it from the repository root (config paths are relative to it). Rerunning resumes: finished
cells are skipped, trained models reused, failed cells retried. `--set` changes the settings
below; `--config.key=value` goes to every training run whose config has the key (e.g.
--config.data.corpus=text --config.data.files.train='src.txt|tgt.txt' ... runs a row on your own
files).
"""

from lmfuse.experiments import carlson_cells
from lmfuse.experiments.carlson_report import write_report
from lmfuse.experiments.runner import Experiment
from lmfuse.experiments.settings import check_at_least, parse_settings
from lmfuse.experiments.sizes import size_overrides

NAME = "carlson_table"

# Every size of both budgets, in one place. `cpu`: 6 tiny encoder-decoders, 2 tiny LMs (ASV,
# BBE) and 42 beam-search decodes of 200 pairs (per row: validation and test for `none`, 4 λ
# and test for `shallow`); a decode takes 30-50 s on a 2-core CPU, so the grid is about an
# hour, half of it decoding. `gpu`: the configs as they are (s2s 40k steps, LM 20k steps) and
# the full splits.
SIZES = {
    "cpu": {
        "s2s_config": "configs/s2s_transformer.py:tiny",  # data.source / target set per row
        "lm_config": "configs/lm_transformer.py:tiny",
        "s2s_steps": 400,
        "lm_steps": 300,
        "lm_seq_len": 96,  # as long as the tiny encoder-decoders' outputs (tiny LM: 64)
        "beam_size": 4,
        "checkpoints": 1,  # kept per encoder-decoder, chosen between on validation BLEU
        "eval_sentences": 200,  # first N pairs of validation and of test
    },
    "gpu": {
        "s2s_config": "configs/carlson/{row}.py",
        "lm_config": "configs/lm_transformer.py",
        "s2s_steps": 0,  # 0: the config's
        "lm_steps": 0,
        "lm_seq_len": 0,  # 0: the config's (128, as the encoder-decoders)
        "beam_size": 0,  # 0: the config's (4)
        "checkpoints": 4,
        "eval_sentences": 0,  # 0: the full splits
    },
}

GRID = ("rows", "methods")  # settings that only choose cells


def defaults(budget: str) -> dict:
    sizes = SIZES[budget]
    return {
        "rows": tuple(carlson_cells.ROWS),
        "methods": carlson_cells.METHODS,
        "lambdas": (0.1, 0.2, 0.3, 0.5),  # shallow fusion's LM weight λ
        "eval_sentences": sizes["eval_sentences"],
        "checkpoints": sizes["checkpoints"],
    }


def plan(budget: str, settings: dict) -> carlson_cells.Plan:
    sizes = SIZES[budget]
    s2s, lm = size_overrides(budget, sizes)
    return carlson_cells.Plan(
        s2s_config=sizes["s2s_config"],
        lm_config=sizes["lm_config"],
        lm_overrides=lm,
        s2s_overrides=s2s,
        checkpoints=settings["checkpoints"],
        lambdas=settings["lambdas"],
        eval_sentences=settings["eval_sentences"],
    )


def get_experiment(budget: str, settings: dict) -> Experiment:
    parsed = parse_settings(defaults(budget), settings)
    check_at_least(parsed, {"checkpoints": 1, "eval_sentences": 0})
    sizes = plan(budget, parsed)
    rows = parsed["rows"]
    cells = carlson_cells.build_cells(sizes, rows, parsed["methods"])
    return Experiment(
        name=NAME,
        budget=budget,
        settings=parsed,
        cells=cells,
        report=lambda report: write_report(
            report, carlson_cells.describe_task(sizes, rows, report.context)),
        grid_settings=GRID,
        check=lambda context: carlson_cells.check_overrides(sizes, rows, context),
    )
