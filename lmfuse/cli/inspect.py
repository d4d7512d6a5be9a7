"""`lmfuse inspect`: a trained workdir's step, parameter counts, shapes, shardings and digest,
then where its config.json is and its provenance (commit, versions, devices, first and latest
command line: `lmfuse.train.provenance`)."""

from __future__ import annotations

import argparse


def add_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommands.add_parser("inspect",
                               help="step, parameter counts, shapes, digest, provenance")
    p.set_defaults(handler=run, reads_config_file=False)
    p.add_argument("--workdir", required=True)
    return p


def run(args: argparse.Namespace) -> str:
    """Prints the description; returns the parameters' SHA-256."""
    from lmfuse.cli.paths import workdir_to_read

    workdir_to_read(args.workdir)  # before JAX loads
    from lmfuse.train import provenance
    from lmfuse.train.workdir import count_by_module, describe, load_model, params_digest

    model, params, step = load_model(args.workdir)
    counts = count_by_module(params)
    print(f"workdir {args.workdir}: step {step}, model {model.config.model.name}, "
          f"mesh {dict(model.mesh.shape)}")
    print(f"parameters: {sum(counts.values()):,}")
    for module, count in counts.items():
        print(f"  {module:<32} {count:>12,}")
    for path, shape, dtype, spec in describe(params):
        print(f"  {path:<60} {str(shape):<18} {dtype:<8} {spec}")
    digest = params_digest(params)
    print(f"params sha256: {digest}")
    for line in provenance.describe(args.workdir):
        print(line)
    return digest
