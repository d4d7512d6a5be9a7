"""Reproducible experiment grids: `lmfuse experiment experiments/<name>.py`.

An experiment file defines `get_experiment(budget, settings) -> Experiment`: a list of cells,
each a function of the run's context that returns its result row, and a report writer. The
runner (`runner.py`) runs the cells in order, records each one's result in the workdir's ledger
(`ledger.py`) as it finishes, and skips finished cells when run again; trained models are shared
between cells through `artifacts.py`.

What experiments' cells share lives in `shared_models.py` (trained models, LM text),
`cell_decoding.py` (evaluation subsets, checkpoint and λ choice, test decoding, commands) and
`sizes.py`; what their reports share, in `report_parts.py`.
"""
