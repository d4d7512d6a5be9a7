"""What the study scripts in experiments/ share (not part of the installed package).

    runner.py          cells keyed by name, a ledger on disk (finished cells are skipped on a
                       rerun, a failing cell is recorded and the others go on), the report
                       rewritten after every cell
    study_cli.py       a study script's command line: budget, workdir, the protocol's flags,
                       --config.key=value overrides; exit status 0 / 1 (a cell failed) / 2
    runs.py            training runs as the `lmfuse train` commands that reproduce them:
                       trained once, reused while the config is the same
    shared_models.py   models several cells share (trained once per run, timed apart) and the
                       LMs' text
    scoring.py         evaluation subsets, the checkpoint and λ chosen on validation, the test
                       decode at the choice (`lmfuse.evaluate.translation.translate_and_score`),
                       and the `lmfuse translate` commands that reproduce it
    sweeps.py          a decode-time cell's validation points, logged as decoded (a cut sweep
                       resumes) and reused when a wider grid reruns the cell
    trained_fusion.py  trained fusion as a cell: fine-tuned from the plain model's choice
    tables.py          report pieces: number formatting, csv, the sections every report has
    method_plot.py     every method side by side, each seed's test BLEU with its interval

A study script runs from the repository root (its config paths are relative to it) with the
scripts' folder first on sys.path, as `python experiments/<study>.py` puts it.
"""
