"""The config schema: every key a config may set, each with its one typed default.

Experiment files in configs/ start from `base_config()` and override what they need (their
shared presets live in configs/presets.py). A misspelt key or a value of the wrong type in an
override fails at load time with the key's name (see `lmfuse.config`).

Each key is declared once. The model group's keys are the model families' config dataclass
fields (`lmfuse.models.registry.model_defaults`), the fusion group's fields of `FusionConfig`
plus the keys only a config holds (below); every other group is written out here.
"""

from __future__ import annotations

import ml_collections

from lmfuse.models.registry import fusion_defaults, model_defaults


def data_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Corpus: 'bible' (versions below, plus 'rv1909' for Spanish, which needs Debian's
    # sword-text-sparv), a TFDS name such as 'lm1b' or 'wmt14_translate/de-en' (downloaded by
    # `lmfuse data prepare` only), or 'text' for the user's own files.
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
    # '' (the default): 'all' (every validated English version), or 'all,rv1909' when
    # data.versions, data.source or data.target names rv1909 (only then is SWORD needed);
    # see `lmfuse.data.corpora.tokenizer_spec`. Non-Bible corpora train on their own train text.
    c.versions = ""
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
    c.steps = 1000  # the step budget, unless train.epochs > 0
    # > 0: the step budget is ceil(epochs * steps_per_epoch) instead, where steps_per_epoch =
    # the rows one pass over the training split makes (after packing, if data.pack) / the
    # rows of a step (batch_size); counted by running the training pipeline once.
    c.epochs = 0.0
    c.batch_size = 32  # global, in rows (packed LM rows or seq2seq pairs)
    c.accum_steps = 1  # micro-batches per step (gradient accumulation)
    c.label_smoothing = 0.0
    c.z_loss = 0.0
    c.adversarial_epsilon = 0.0  # > 0: FGSM on the input embeddings (see lmfuse.train.step)
    c.log_every = 50
    c.eval_every = 500
    # > 0: early stopping. Stop (saving a checkpoint; the run counts as finished) once the
    # validation loss (nll per token) has not improved on its best by more than min_delta for
    # `patience` consecutive evaluations (every eval_every steps, which must be > 0).
    c.patience = 0
    c.min_delta = 0.0
    # What early stopping (and training.json's best_validation_step) watches: 'nll' (lower
    # is better), or 'bleu' / 'chrf' (higher is better) of the validation sample below, which
    # an encoder-decoder's loss can stop improving long before (label noise, copy-heavy tasks).
    c.stop_metric = "nll"
    c.eval_batches = 0  # 0: the whole validation split
    # Encoder-decoders on a translate view, trained with `lmfuse train`: BLEU and chrF of
    # this many validation pairs (a sample seeded by `seed`, spread over every book, decoded
    # as the `decode` group says) at each evaluation; 0 turns them off.
    c.eval_translate_sample = 64
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.peak_tflops = 0.0  # per device, for MFU; 0 looks the device up
    return c


def mesh_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Mesh axis sizes; -1 means "fill with whatever devices are left" (at most one axis).
    c.data = -1
    c.fsdp = 1
    c.tensor = 1
    # Logical axis -> mesh axes ('a,b' for several, '' to replicate): parameters are named as
    # in lmfuse.models.layers.LOGICAL_AXES, activations with an 'activation_' prefix, so each
    # name appears once and the table's order never matters (lmfuse.train.sharding).
    c.rules = ml_collections.ConfigDict({
        "activation_batch": "data,fsdp",
        "activation_length": "",
        "activation_embed": "",
        "activation_vocab": "tensor",
        "activation_mlp": "tensor",
        "activation_heads": "tensor",
        "activation_kv": "",
        "activation_hidden": "tensor",
        "activation_gates": "",
        "embed": "fsdp",
        "vocab": "tensor",
        "mlp": "tensor",
        "heads": "tensor",
        "kv": "",
        "hidden": "tensor",
        "gates": "",
        "layers": "",
    })
    return c


def fusion_config() -> ml_collections.ConfigDict:
    """Trained fusion of an LM into the encoder-decoder (`lmfuse.models.fusion`); off by default."""
    c = ml_collections.ConfigDict()
    c.method = ""  # '' (none) | 'deep' | 'cold' | 'simple_postnorm' | 'simple_prenorm' | 'linear' | 'lm_prior'
    c.lm_workdir = ""  # a trained decoder-only LM (every method), same tokenizer as the data
    c.s2s_workdir = ""  # the trained encoder-decoder that deep and linear fusion start from
    # Its checkpoint to start from: 0, the newest intact one; a studies' choice is the step
    # chosen on validation (training.json's best_validation_step when it stopped early).
    c.s2s_step = 0
    c.update(fusion_defaults())  # weights_kind, train_bases, cold_dim, prior_* (FusionConfig)
    # The LM's model config, copied from lm_workdir when training starts (not set by hand), so
    # a fused workdir rebuilds its model without the LM's workdir.
    c.lm_model = ml_collections.ConfigDict()
    return c


def base_config() -> ml_collections.ConfigDict:
    """Every group with its defaults; configs/ files override what their experiment needs."""
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


def decode_config() -> ml_collections.ConfigDict:
    """How `lmfuse translate` and seq2seq `lmfuse eval` decode (command-line flags override).
    Seq2seq configs add it as the group `decode`."""
    c = ml_collections.ConfigDict()
    c.beam_size = 4
    c.alpha = 0.6  # GNMT length penalty
    c.max_new_tokens = 0  # 0: data.max_length
    c.no_repeat_ngram_size = 0  # > 0: no n-gram of this size twice in a hypothesis; 0 disables
    # A translation has at most max_len_a * |source| + max_len_b tokens, both counting EOS
    # (fairseq's --max-len-a/b; 0 and 0: only max_new_tokens). 1.5 and 10 cut no reference of
    # the Bible validation split; the limit lets beam search stop as soon as its rows are done.
    c.max_len_a = 1.5
    c.max_len_b = 10
    c.batch_size = 64  # sentences per decoding batch
    return c
