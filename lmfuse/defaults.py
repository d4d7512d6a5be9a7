"""Default config groups that experiment files in configs/ start from and override.

Every key a user may set exists here with a typed default, so an override of a misspelt key or
of the wrong type fails at load time with the key's name (see `lmfuse.config`).
"""

from __future__ import annotations

import ml_collections


def data_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Corpus: 'bible' (versions below, plus 'rv1909' for Spanish), a TFDS name such as 'lm1b' or
    # 'wmt14_translate/de-en', or 'text' for the user's own files.
    c.corpus = "bible"
    c.view = "lm"  # 'lm' (monolingual text) or 'translate' (source -> target pairs)
    c.data_dir = ""  # '' means $LMFUSE_DATA_DIR, else ~/.cache/lmfuse

    # Bible views. `versions` feeds the lm view: a comma list, or 'all' for every validated
    # English version. `source` may be 'public': every other English version, one pair each.
    c.versions = "asv"
    c.source = "kjv"
    c.target = "asv"
    c.tag_source = False  # prefix each source line with its version tag, e.g. '<ylt>'
    c.keep_brackets = True  # keep KJV's [bracketed] italics markers
    c.train_fraction = 1.0  # use only the first fraction of the (fixed-order) train pairs

    # TFDS translate direction ('' = the order in the dataset name) and users' files.
    c.source_lang = ""
    c.target_lang = ""
    c.files = ml_collections.ConfigDict({"train": "", "validation": "", "test": ""})

    # Lengths in tokens, counting BOS/EOS. Longer examples are truncated or dropped, and counted.
    c.max_length = 128
    c.overlong = "truncate"  # 'truncate' or 'drop'
    c.pack = True  # pack examples into rows with segment ids (lm, and seq2seq if set)
    c.seq_len = 128  # length of a packed LM row
    c.shuffle = True
    # Self-supervised noising of lm-view text: '' (none), 'bert_mask' (masked LM: 15% of
    # tokens, 80/10/10 mask/random/keep) or 'span_corruption' (T5: source with sentinels ->
    # the hidden spans, for an encoder-decoder).
    c.noising = ""

    # Augmentation (training split only, off by default), applied to LM text / seq2seq sources.
    c.augment = ml_collections.ConfigDict(
        {
            "token_dropout": 0.0,  # drop each token with this probability
            "token_replace": 0.0,  # replace each token by a random one with this probability
            "local_reorder": 0,  # shuffle tokens within windows of this many positions
            "noise_insert": 0.0,  # insert a random token after each token with this probability
        }
    )
    return c


def tokenizer_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.vocab_size = 8000
    c.model_type = "unigram"  # 'unigram' or 'bpe'
    c.character_coverage = 1.0
    # The tokenizer is trained on the train split of these Bible versions, whatever the view,
    # so an LM and a seq2seq model prepared from the same settings share one vocabulary.
    # Non-Bible corpora train on their own train text.
    c.versions = "all,rv1909"
    c.max_sentences = 2_000_000
    # A trained SentencePiece model to use as it is ('' = train one from the data, or find it
    # cached), so runs on different text (an LM and a seq2seq model) can share one vocabulary.
    c.model_file = ""
    return c


def optimizer_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "adamw"
    c.learning_rate = 1e-3
    c.schedule = "warmup_cosine"
    c.warmup_steps = 100
    c.end_learning_rate_factor = 0.1  # final lr = factor * lr (cosine and linear)
    c.decay_rate = 0.5  # exponential: lr * decay_rate ** (step / transition_steps)
    c.transition_steps = 1000
    c.clip_norm = 1.0  # 0 disables clipping
    c.weight_decay = 0.01
    c.b1 = 0.9
    c.b2 = 0.98
    c.eps = 1e-9
    c.momentum = 0.9  # sgd; 0 for plain SGD
    c.nesterov = False
    c.initial_accumulator_value = 0.1  # adagrad
    c.decay = 0.9  # rmsprop
    return c


def train_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.steps = 1000
    c.batch_size = 32  # global, in rows (packed LM rows or seq2seq pairs)
    c.accum_steps = 1  # micro-batches per step (gradient accumulation)
    c.label_smoothing = 0.0
    c.z_loss = 0.0
    c.adversarial_epsilon = 0.0  # > 0: FGSM on the input embeddings (see lmfuse.train.step)
    c.log_every = 50
    c.eval_every = 500
    c.eval_batches = 0  # 0: the whole validation split
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.peak_tflops = 0.0  # per device, for MFU; 0 looks the device up
    return c


def mesh_config() -> ml_collections.ConfigDict:
    # -1 means "fill with whatever devices are left" (at most one axis may say so).
    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})


def fusion_config() -> ml_collections.ConfigDict:
    """Trained fusion of an LM into the encoder-decoder (`lmfuse.models.fusion`); off by default."""
    c = ml_collections.ConfigDict()
    c.method = ""  # '' (none) | 'deep' | 'cold' | 'simple_postnorm' | 'simple_prenorm' | 'linear'
    c.lm_workdir = ""  # a trained decoder-only LM (every method), same tokenizer as the data
    c.s2s_workdir = ""  # the trained encoder-decoder that deep and linear fusion start from
    c.weights_kind = "scalar"  # linear: 'scalar' | 'vector' | 'context'
    c.train_bases = False  # linear: fine-tune both bases with the weights (else both frozen)
    c.cold_dim = 256  # cold: width of h^LM, of the gate and of the output DNN's hidden layer
    # The LM's model config, copied from lm_workdir when training starts (not set by hand), so
    # a fused workdir rebuilds its model without the LM's workdir.
    c.lm_model = ml_collections.ConfigDict()
    return c


def base_config() -> ml_collections.ConfigDict:
    """Every group with its defaults; configs/ files override what their experiment needs."""
    from lmfuse.models.registry import model_defaults

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = data_config()
    c.tokenizer = tokenizer_config()
    c.model = model_defaults()
    c.optimizer = optimizer_config()
    c.train = train_config()
    c.mesh = mesh_config()
    c.fusion = fusion_config()
    return c


LM_VARIANTS = (None, "tiny")


def lm_config(
    variant: str | None,
    model: dict,
    tiny_model: dict,
    learning_rate: float,
    tiny_learning_rate: float,
) -> ml_collections.ConfigDict:
    """An LM experiment on the Bible LM view (ASV train books): the settings every LM config
    shares, with the model-specific fields and rates passed in. `tiny` runs in about a minute
    on a CPU."""
    if variant not in LM_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose tiny or leave it out")
    tiny = variant == "tiny"
    config = base_config()
    config.data.view = "lm"
    config.data.versions = "asv"
    config.data.seq_len = config.data.max_length = 64 if tiny else 128
    config.model.update(model)
    if tiny:
        config.model.update(tiny_model)
    config.model.max_len = config.data.seq_len
    config.optimizer.learning_rate = tiny_learning_rate if tiny else learning_rate
    config.optimizer.warmup_steps = 20 if tiny else 200
    if tiny:
        config.train.update(
            dict(
                steps=300,
                batch_size=16,
                log_every=25,
                eval_every=300,
                eval_batches=0,
                checkpoint_every=100,
            )
        )
    else:
        config.train.update(
            dict(steps=20_000, batch_size=64, eval_every=1000, checkpoint_every=1000)
        )
    return config


def decode_config() -> ml_collections.ConfigDict:
    """How `lmfuse translate` and seq2seq `lmfuse eval` decode (command-line flags override)."""
    c = ml_collections.ConfigDict()
    c.beam_size = 4
    c.alpha = 0.6  # GNMT length penalty
    c.max_new_tokens = 0  # 0: data.max_length
    c.batch_size = 64  # sentences per decoding batch
    return c


S2S_VARIANTS = (None, "tiny")


def s2s_config(
    variant: str | None,
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
    if variant not in S2S_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose tiny or leave it out")
    tiny = variant == "tiny"
    config = base_config()
    config.decode = decode_config()
    config.data.view = "translate"
    config.data.source = source
    config.data.target = target
    config.data.max_length = 96 if tiny else 128
    config.data.seq_len = config.data.max_length
    config.model.update(model)
    if tiny:
        config.model.update(tiny_model)
    config.model.max_len = config.data.max_length
    config.optimizer.learning_rate = tiny_learning_rate if tiny else learning_rate
    config.optimizer.warmup_steps = 50 if tiny else 1000
    config.train.label_smoothing = 0.1
    if tiny:
        config.train.update(
            dict(steps=400, batch_size=32, log_every=50, eval_every=400, checkpoint_every=200)
        )
        train = dict(tiny_train or {})
        config.optimizer.warmup_steps = train.pop("warmup_steps", config.optimizer.warmup_steps)
        config.train.update(train)
        config.decode.beam_size = 4
    else:
        config.train.update(
            dict(steps=40_000, batch_size=64, eval_every=2000, checkpoint_every=2000)
        )
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
    return s2s_config(None, model, {}, rate, rate, source=source, target=target)


# One encoder-decoder definition valid for both backbones, so --config.model.name=s2s_rnn
# switches a fusion experiment (and the s2s it starts from) to the RNN with nothing else.
FUSION_S2S_MODEL = dict(
    name="s2s_transformer", emb_dim=512, hidden_dim=512, num_layers=3, num_encoder_layers=3,
    num_heads=8, mlp_dim=2048, positions="learned", norm="pre", dropout=0.1,
    tie_embeddings=True, share_embeddings=True, cell="lstm", attention="bahdanau",
)
FUSION_S2S_TINY_MODEL = dict(
    emb_dim=256, hidden_dim=256, num_layers=2, num_encoder_layers=2, num_heads=4, mlp_dim=1024,
)


def fusion_experiment_config(
    method: str,
    variant: str | None,
    learning_rate: float,
    tiny_learning_rate: float,
    steps: int = 0,
    tiny_steps: int = 0,
) -> ml_collections.ConfigDict:
    """A trained-fusion experiment (`lmfuse.models.fusion`) on the Bible translate view: a
    `s2s_config` whose fusion group names the LM of configs/lm_transformer.py (tiny: its :tiny
    variant) in the workdir its docstring uses, and for deep and linear fusion the
    encoder-decoder they start from (this same experiment trained with fusion.method='')."""
    from lmfuse.models.fusion import PRETRAINED_S2S

    config = s2s_config(variant, FUSION_S2S_MODEL, FUSION_S2S_TINY_MODEL, learning_rate,
                        tiny_learning_rate)
    tiny = variant == "tiny"
    suffix = "_tiny" if tiny else ""
    config.fusion.method = method
    config.fusion.lm_workdir = f"workdirs/lm_transformer{suffix}"
    if method in PRETRAINED_S2S:
        config.fusion.s2s_workdir = f"workdirs/fusion_s2s{suffix}"
    if tiny and tiny_steps:
        config.train.steps = tiny_steps
    elif not tiny and steps:
        config.train.steps = steps
    return config
