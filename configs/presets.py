"""Study presets the config files here share: the LM and seq2seq experiment settings, the
Carlson et al. 2018 rows, and the reading of a `kind,tiny` variant.

Config files import this module by name (`from presets import lm_config`): while
`lmfuse.config.load_config` runs a config file, the file's directory and the one above it come
first on `sys.path`.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from lmfuse.schema import base_config, decode_config

TINY = "tiny"


def split_variant(
    variant: str | None, kinds: Sequence[str] = (), default: str | None = None
) -> tuple[str | None, bool]:
    """Reads a variant of comma-separated options, e.g. 'lstm,tiny' -> ('lstm', True).

    At most one option is a kind, one of `kinds`: `default` when none is named (with no
    default, one must be). 'tiny' asks for the small variant."""
    options = variant.split(",") if variant else []
    named = [option for option in options if option != TINY]
    with_tiny = f", with ',tiny' for the small variant (e.g. '{kinds[0]},tiny')" if kinds else ""
    if kinds and default is None and not named:
        raise ValueError(f"this file needs a variant naming one of {', '.join(kinds)}{with_tiny}")
    if len(named) > 1 or (named and named[0] not in kinds) or options.count(TINY) > 1:
        optional = " or leave it out" if default is not None or not kinds else ""
        choices = f"one of {', '.join(kinds)}{optional}{with_tiny}" if kinds else "tiny" + optional
        raise ValueError(f"unknown variant {variant!r}; choose {choices}")
    kind = named[0] if named else default
    return kind, TINY in options


def tiny_variant(variant: str | None) -> bool:
    """Whether a file with no other variants was asked for 'tiny' (else it must have none)."""
    return split_variant(variant)[1]


def _experiment(tiny: bool, model: dict, tiny_model: dict, learning_rate: float,
                tiny_learning_rate: float, length: int, warmup_steps: int,
                train: dict) -> ml_collections.ConfigDict:
    """What LM and seq2seq experiments share: the model (tiny fields on top), one length for
    rows, examples and positions, the rate and its warmup, the train schedule."""
    config = base_config()
    config.data.seq_len = config.data.max_length = length
    config.model.update(model)
    if tiny:
        config.model.update(tiny_model)
    config.model.max_len = length
    config.optimizer.learning_rate = tiny_learning_rate if tiny else learning_rate
    config.optimizer.warmup_steps = warmup_steps
    config.train.update(train)
    return config


def lm_config(
    tiny: bool,
    model: dict,
    tiny_model: dict,
    learning_rate: float,
    tiny_learning_rate: float,
) -> ml_collections.ConfigDict:
    """An LM experiment on the Bible LM view (ASV train books): the settings every LM config
    shares, with the model-specific fields and rates passed in. `tiny` runs in about a minute
    on a CPU."""
    train = (dict(steps=300, batch_size=16, log_every=25, eval_every=300, eval_batches=0,
                  checkpoint_every=100) if tiny else
             dict(steps=20_000, batch_size=64, eval_every=1000, checkpoint_every=1000))
    config = _experiment(tiny, model, tiny_model, learning_rate, tiny_learning_rate,
                         64 if tiny else 128, 20 if tiny else 200, train)
    config.data.view = "lm"
    config.data.versions = "asv"
    return config


def s2s_config(
    tiny: bool,
    model: dict,
    tiny_model: dict,
    learning_rate: float,
    tiny_learning_rate: float,
    source: str = "ylt",
    target: str = "asv",
    tiny_train: dict | None = None,
) -> ml_collections.ConfigDict:
    """A seq2seq experiment on the Bible translate view (Carlson et al. 2018's split): the
    settings every seq2seq config shares. `tiny` trains in about 10 minutes on a 2-core CPU.
    Change the pair with --config.data.source / --config.data.target (e.g. kjv, public,
    rv1909 for Spanish). `tiny_train` overrides the tiny variant's train settings (and
    `warmup_steps`) for a model that learns better with other batch/step counts."""
    train = (dict(steps=400, batch_size=32, log_every=50, eval_every=400, checkpoint_every=200)
             if tiny else
             dict(steps=40_000, batch_size=64, eval_every=2000, checkpoint_every=2000))
    overrides = dict(tiny_train or {}) if tiny else {}
    warmup_steps = overrides.pop("warmup_steps", 50 if tiny else 1000)
    config = _experiment(tiny, model, tiny_model, learning_rate, tiny_learning_rate,
                         96 if tiny else 128, warmup_steps, {**train, **overrides})
    config.decode = decode_config()
    config.data.view = "translate"
    config.data.source = source
    config.data.target = target
    config.train.label_smoothing = 0.1
    return config


def carlson_config(source: str, target: str, variant: str | None) -> ml_collections.ConfigDict:
    """One row of Carlson et al. 2018 ("Evaluating prose style transfer with the Bible") at
    full size, on their split: a 3-layer, 512-unit bi-LSTM encoder-decoder with attention, as
    in the paper, or (variant 'transformer') a Transformer of similar cost."""
    if variant not in (None, "transformer"):
        raise ValueError(f"unknown variant {variant!r}; choose transformer or leave it out")
    if variant == "transformer":
        model = dict(name="s2s_transformer", emb_dim=512, num_layers=3, num_encoder_layers=3,
                     num_heads=8, mlp_dim=2048, dropout=0.1, positions="learned")
    else:
        model = dict(name="s2s_rnn", cell="lstm", attention="bahdanau", emb_dim=512,
                     hidden_dim=512, num_layers=3, num_encoder_layers=3, dropout=0.2,
                     tie_embeddings=False)
    rate = 5e-4 if variant == "transformer" else 1e-3
    return s2s_config(False, model, {}, rate, rate, source=source, target=target)
