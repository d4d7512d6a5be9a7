"""Building a decode-time fusion from workdirs, with the checks that make it meaningful.

    decoder, params = build_decode_fusion(s2s_model, s2s_params, FusionFlags(...), max_new)
    rescorer = build_rescorer(s2s_model, FusionFlags('rescore', lm=..., lm_weight=...), max_new)

The fused DecodeStep comes from `lmfuse.decode.fusion`; this module reads the LMs' workdirs
(`lmfuse.train.workdir`), so it sits above both. Those imports are inside the functions that
use them: the CLI parses and checks `FusionFlags` before anything loads JAX.

Checks, each a one-line `LmfuseError`: the method is known; its flags fit it (an LM for
shallow/density_ratio, a source LM only for density_ratio, an ILM weight only for ilme); every
workdir exists and holds a checkpoint; the fused models are decoder-only LMs; all models use the
same tokenizer (SentencePiece model SHA-256); and an LM with learned positions can hold the
longest output.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from lmfuse.errors import LmfuseError

if TYPE_CHECKING:
    from lmfuse.decode import DecodeStep
    from lmfuse.decode.rescoring import Rescorer
    from lmfuse.train.trainer import Model

# Decode-time methods: three fused DecodeSteps, and n-best rescoring after a plain beam search.
METHODS = ("shallow", "density_ratio", "ilme", "rescore")


@dataclasses.dataclass(frozen=True)
class FusionFlags:
    method: str | None = None
    lm: str | None = None  # target-domain LM workdir
    lm_weight: float = 0.3
    source_lm: str | None = None  # density ratio: LM of the seq2seq training targets
    # Each weight is its own: density ratio needs λ_src and ILME μ stated (no tie to λ), so
    # a study can select every one of them on validation.
    source_lm_weight: float | None = None  # density ratio: λ_src
    ilm_weight: float | None = None  # ILME: μ
    length_reward: float = 0.0  # β per output token


def check_flags(flags: FusionFlags) -> None:
    """Flag combinations that cannot work fail before anything is loaded."""
    if flags.method is None:
        given = [name for name in ("lm", "source_lm", "ilm_weight", "source_lm_weight")
                 if getattr(flags, name) is not None]
        if given:
            raise LmfuseError(f"--{given[0]} needs --fusion ({' | '.join(METHODS)})")
        return
    if flags.method not in METHODS:
        raise LmfuseError(f"unknown fusion method {flags.method!r}; choose one of {', '.join(METHODS)}")
    if flags.method in ("shallow", "density_ratio", "rescore") and flags.lm is None:
        raise LmfuseError(f"--fusion {flags.method} needs --lm <LM workdir>")
    if flags.method == "density_ratio" and flags.source_lm is None:
        raise LmfuseError("--fusion density_ratio needs --source_lm <workdir of an LM trained on "
                          "the seq2seq training targets>")
    if flags.method == "density_ratio" and flags.source_lm_weight is None:
        raise LmfuseError("--fusion density_ratio needs --source_lm_weight (λ_src; 0 makes it "
                          "shallow fusion)")
    if flags.method == "ilme" and flags.ilm_weight is None:
        raise LmfuseError("--fusion ilme needs --ilm_weight (μ, the internal LM's weight)")
    if flags.method != "density_ratio" and (flags.source_lm or flags.source_lm_weight is not None):
        raise LmfuseError(f"--source_lm is for --fusion density_ratio, not {flags.method}")
    if flags.method != "ilme" and flags.ilm_weight is not None:
        raise LmfuseError(f"--ilm_weight is for --fusion ilme, not {flags.method}")


def load_lm(workdir: str, tokenizer_sha256: str, min_positions: int, role: str
            ) -> tuple[DecodeStep, Any]:
    """(DecodeStep, params) of a trained decoder-only LM, checked against the seq2seq model."""
    from lmfuse.decode import lm_decode_step
    from lmfuse.models.registry import LM_NAMES
    from lmfuse.train.workdir import load_model, load_workdir_config

    config = load_workdir_config(workdir)  # fails with a one-line error if there is none
    if config.model.name not in LM_NAMES:
        raise LmfuseError(
            f"{role} {workdir} holds a {config.model.name!r} model; fusion needs a decoder-only "
            f"LM ({', '.join(LM_NAMES)})"
        )
    trainer, params, _ = load_model(workdir)
    if trainer.tokenizer.sha256 != tokenizer_sha256:
        raise LmfuseError(
            f"vocab mismatch: {role} {workdir} uses tokenizer {trainer.tokenizer.path.name} "
            f"(sha256 {trainer.tokenizer.sha256[:12]}), the seq2seq model sha256 "
            f"{tokenizer_sha256[:12]}; train both from the same tokenizer settings"
        )
    model_cfg = trainer.config.model
    if model_cfg.name == "transformer" and model_cfg.positions == "learned" \
            and model_cfg.max_len < min_positions:
        raise LmfuseError(
            f"{role} {workdir} has model.max_len={model_cfg.max_len} learned positions, but "
            f"decoding needs {min_positions}; lower --max_len or use a longer LM"
        )
    from flax import linen as nn  # here: the CLI checks FusionFlags before JAX loads

    return lm_decode_step(trainer.model), nn.meta.unbox(params)


def build_decode_fusion(s2s_model: Model, s2s_params: Any, flags: FusionFlags,
                        max_new_tokens: int) -> tuple[DecodeStep, Any]:
    """The fused (or plain) DecodeStep and its params for a loaded seq2seq workdir."""
    from lmfuse.decode import fusion, seq2seq_decode_step

    check_flags(flags)
    base = seq2seq_decode_step(s2s_model.model)
    if flags.method in (None, "rescore"):  # rescoring re-ranks a plain beam (`build_rescorer`)
        return base, s2s_params
    sha, positions = s2s_model.tokenizer.sha256, 1 + max_new_tokens  # BOS + the output
    lm_terms = {}
    if flags.lm is not None:
        lm_terms["lm"] = load_lm(flags.lm, sha, positions, "--lm")
    # Every token's score stays <= 0 only when no term is subtracted and no reward added;
    # beam search then stops early and ranks by GNMT, else by the raw sum (`beam.py`). A
    # weight of 0 thus removes its term exactly, ranking included.
    monotone = (flags.lm_weight >= 0 and flags.length_reward <= 0
                and not flags.source_lm_weight and not flags.ilm_weight)
    if flags.method == "shallow":
        decoder = fusion.shallow_fusion(base, lm_terms["lm"][0], monotone=monotone)
        weights = fusion.fusion_weights(flags.lm_weight, length_reward=flags.length_reward)
    elif flags.method == "density_ratio":
        lm_terms["source_lm"] = load_lm(flags.source_lm, sha, positions, "--source_lm")
        decoder = fusion.density_ratio(base, lm_terms["lm"][0], lm_terms["source_lm"][0],
                                       monotone=monotone)
        weights = fusion.fusion_weights(flags.lm_weight, flags.source_lm_weight, None,
                                        flags.length_reward)
    else:
        internal = seq2seq_decode_step(s2s_model.model, zero_context=True)
        lm = lm_terms["lm"][0] if "lm" in lm_terms else None
        decoder = fusion.ilme(base, internal, lm, monotone=monotone)
        weights = fusion.fusion_weights(flags.lm_weight if lm else 0.0, None, flags.ilm_weight,
                                        flags.length_reward)
        lm_terms["ilm"] = (internal, s2s_params)
    params = fusion.fused_params(
        s2s_params, weights, **{name: p for name, (_, p) in lm_terms.items()}
    )
    if "lm" not in params:
        params["weights"].pop("lm")
    return decoder, params


def build_rescorer(s2s_model: Model, flags: FusionFlags, max_new_tokens: int) -> Rescorer | None:
    """The n-best `Rescorer` of `--fusion rescore` (its LM checked as any fused LM), else None."""
    from lmfuse.decode.rescoring import Rescorer

    check_flags(flags)
    if flags.method != "rescore":
        return None
    lm, params = load_lm(flags.lm, s2s_model.tokenizer.sha256, 1 + max_new_tokens, "--lm")
    return Rescorer(lm, params, flags.lm_weight, flags.length_reward)
