"""Golden values: numbers that a change of structure must leave bit for bit as they are.

For every model family and trained-fusion method: the digest of the parameters after three
train steps from the config's seed, the step losses and the eval loss sums. For a Transformer
LM (unscanned and scanned), an LSTM LM, both encoder-decoders (and a copy model), the trained
fusions and the three decode-time fusions: greedy, sampled and beam-search tokens with the
digest of their scores. And every config file, resolved, as a dict.

    python tests/golden/values.py --record    # rewrites tests/golden/golden.json

`tests/golden/test_golden.py` recomputes the values and compares them with the file. Floats
are compared through their bytes (sha256 of float32 / int32 arrays in a fixed key order).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fusion"))

import tiny_fusion  # noqa: E402

from lmfuse.config import load_config  # noqa: E402
from lmfuse.data.tokenizer import BOS_ID, PAD_ID  # noqa: E402
from lmfuse.train.provenance import cpu_model  # noqa: E402

GOLDEN = Path(__file__).with_name("golden.json")
VOCAB = 41
STEPS = 3
ROWS, LEN = 4, 12

# Config files with their variants, resolved as users load them (values compared as dicts).
CONFIG_SPECS = (
    "configs/lm_transformer.py", "configs/lm_transformer.py:tiny",
    "configs/lm_rnn.py", "configs/lm_rnn.py:tiny", "configs/lm_rnn.py:lstm",
    "configs/lm_rnn.py:lstm,tiny", "configs/lm_rnn.py:gru", "configs/lm_rnn.py:gru,tiny",
    "configs/mlm_bert.py:tiny", "configs/t5_span.py:tiny",
    "configs/s2s_transformer.py", "configs/s2s_transformer.py:tiny", "configs/s2s_rnn.py",
    "configs/s2s_rnn.py:tiny", "configs/data_bible.py",
    *(f"configs/fusion.py:{m}{v}" for m in tiny_fusion.METHODS for v in ("", ",tiny")),
    *(f"configs/carlson/{r}.py" for r in
      ("kjv_asv", "public_asv", "bbe_asv", "ylt_bbe", "public_bbe", "ylt_asv")),
)

SMALL = {"model.emb_dim": 16, "model.hidden_dim": 16, "model.num_layers": 2, "model.num_heads": 2,
         "model.mlp_dim": 32, "model.dropout": 0.1, "model.max_len": 32, "data.seq_len": LEN,
         "data.max_length": LEN, "train.batch_size": ROWS, "optimizer.warmup_steps": 2}

# (name, config file, overrides): one trainer each.
TRAINED = (
    ("transformer", "configs/lm_transformer.py:tiny", {}),
    ("transformer_scan_post", "configs/lm_transformer.py:tiny",
     {"model.scan_layers": True, "model.norm": "post", "model.positions": "learned"}),
    ("rnn", "configs/lm_rnn.py:tiny", {}),
    ("lstm", "configs/lm_rnn.py:lstm,tiny", {}),
    ("gru", "configs/lm_rnn.py:gru,tiny", {}),
    ("masked_lm", "configs/mlm_bert.py:tiny", {}),
    ("s2s_transformer", "configs/s2s_transformer.py:tiny", {"model.num_encoder_layers": 1}),
    ("s2s_transformer_scan_copy", "configs/s2s_transformer.py:tiny",
     {"model.scan_layers": True, "model.copy_source": True, "model.tie_embeddings": False}),
    ("s2s_rnn_luong_copy", "configs/s2s_rnn.py:tiny", {"model.num_encoder_layers": 1}),
    ("s2s_rnn_bahdanau_gru", "configs/s2s_rnn.py:tiny",
     {"model.attention": "bahdanau", "model.cell": "gru", "model.copy_source": False}),
)


def digest(tree) -> str:
    """sha256 over a pytree's leaves (path, dtype, shape, bytes) in key order."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:24]


def tokenizer():
    return types.SimpleNamespace(vocab_size=VOCAB, sha256=tiny_fusion.SHA, path=Path("tiny.model"))


def overrides(values: dict) -> list[str]:
    return [f"--config.{k}={v}" for k, v in values.items()]


def lm_batch(masked: bool = False) -> dict[str, np.ndarray]:
    """A packed LM batch: row r holds two documents (a cut at 5 + r % 3), tokens 5..VOCAB."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, VOCAB, (ROWS, LEN + 1)).astype(np.int32)
    segments = np.ones((ROWS, LEN), np.int32)
    positions = np.tile(np.arange(LEN, dtype=np.int32), (ROWS, 1))
    for r in range(ROWS):
        cut = 5 + r % 3
        segments[r, cut:] = 2
        positions[r, cut:] -= cut
        segments[r, LEN - r:] = 0  # trailing padding
        positions[r, LEN - r:] = 0
    inputs, targets = tokens[:, :-1] * (segments > 0), tokens[:, 1:] * (segments > 0)
    if masked:  # BERT view: targets only where the input was masked
        chosen = rng.random((ROWS, LEN)) < 0.3
        targets = np.where(chosen & (segments > 0), inputs, PAD_ID).astype(np.int32)
        inputs = np.where(chosen, 4, inputs).astype(np.int32)
    return {"inputs": inputs, "targets": targets, "inputs_segment_ids": segments,
            "targets_segment_ids": segments, "inputs_positions": positions,
            "targets_positions": positions}


def s2s_batch() -> dict[str, np.ndarray]:
    return tiny_fusion.train_batch(rows=ROWS, seed=3)


def train_values(config, build_trainer) -> dict:
    """Three train steps from the config's seed, then the eval sums, as digests."""
    trainer = build_trainer(config, tokenizer())
    if trainer.objective.name == "seq2seq":
        batch = s2s_batch()
    else:
        batch = lm_batch(masked=trainer.objective.name == "mlm")
    from lmfuse.train import sharding

    state = trainer.init_fn(jax.random.key(config.seed))
    init_digest = digest(state.params)
    losses = []
    with sharding.activate(trainer.mesh, trainer.rules):
        global_batch = sharding.global_batch(batch, trainer.mesh, trainer.rules)
        for _ in range(STEPS):
            state, metrics = trainer.train_step(state, global_batch, jax.random.key(config.seed + 1))
            losses.append(float(metrics["loss"]))
        sums = trainer.eval_step(state.params, global_batch)
    return {"init_params": init_digest, "params": digest(state.params),
            "opt_state": digest(state.opt_state), "losses": digest(np.asarray(losses, np.float32)),
            "loss_values": [round(x, 6) for x in losses], "eval": digest(sums)}


def trained_model_values() -> dict:
    from lmfuse.train.trainer import build_trainer

    out = {}
    for name, spec, extra in TRAINED:
        config = load_config(spec, overrides({**SMALL, **extra}))
        out[name] = train_values(config, build_trainer)
    return out


def trained_fusion_values(root: Path) -> dict:
    """Every trained-fusion method on both backbones, from base workdirs of random params."""
    from lmfuse.train.trainer import build_trainer

    out = {}
    for backbone in tiny_fusion.BACKBONES:
        lm_kind = tiny_fusion.LM_KIND[backbone]
        lm_dir = root / f"lm_{lm_kind}"
        if not lm_dir.exists():
            tiny_fusion.save_workdir(lm_dir, tiny_fusion.lm_config(lm_kind), seed=11)
        s2s_dir = root / f"s2s_{backbone}"
        s2s_config = tiny_fusion.fused_config("deep", backbone, **{"fusion.method": ""})
        tiny_fusion.save_workdir(s2s_dir, s2s_config, seed=12)
        for method in tiny_fusion.METHODS:
            extra = {"fusion.lm_workdir": str(lm_dir)}
            if method in ("deep", "linear"):  # the methods that start from a trained s2s
                extra["fusion.s2s_workdir"] = str(s2s_dir)
            config = tiny_fusion.fused_config(method, backbone, **extra)
            values = train_values(config, build_trainer)
            out[f"{backbone}/{method}"] = values
    return out


def _prompts() -> dict[str, jnp.ndarray]:
    """Left- and right-padded prompts of different lengths (BOS first)."""
    prompt = np.array([[BOS_ID, 7, 9], [BOS_ID, 0, 0], [0, BOS_ID, 12]], np.int32)
    return {"prompt": jnp.asarray(prompt)}


def _s2s_batch() -> dict[str, jnp.ndarray]:
    source, _, _, _ = tiny_fusion.example_inputs(rows=3, seed=5)
    return {"inputs": source, "prompt": jnp.full((3, 1), BOS_ID, jnp.int32)}


def decode_values(decoder, params, batch) -> dict:
    """Greedy, top-k/top-p sampling and beam search of one DecodeStep."""
    from lmfuse.decode import beam_search, greedy, sample

    out = {}
    g = greedy(decoder, params, batch, max_new_tokens=8)
    out["greedy"] = np.asarray(g.tokens).tolist()
    out["greedy_scores"] = digest(g._replace(tokens=None)._asdict())
    s = sample(decoder, params, batch, jax.random.key(3), max_new_tokens=8, temperature=0.9,
               top_k=7, top_p=0.95, num_samples=2)
    out["sample"] = np.asarray(s.tokens).tolist()
    out["sample_scores"] = digest(s._replace(tokens=None)._asdict())
    b = beam_search(decoder, params, batch, beam_size=3, max_new_tokens=8)
    out["beam"] = np.asarray(b.tokens).tolist()
    out["beam_scores"] = digest(b._replace(tokens=None)._asdict())
    first, _ = jax.jit(decoder.init, static_argnums=2)(params, batch, 16)
    out["first_logits"] = digest(first)
    return out


def decoding_values() -> dict:
    from lmfuse.decode import fusion as decode_fusion
    from lmfuse.decode import lm_decode_step, seq2seq_decode_step
    from lmfuse.models import build_model

    out = {}
    lms = {
        "transformer": tiny_fusion.model_cfg("transformer", positions="rope"),
        "transformer_scan": tiny_fusion.model_cfg("transformer", scan_layers=True, num_layers=2),
        "lstm": tiny_fusion.model_cfg("lstm", num_layers=2),
    }
    lm_models = {}
    for name, cfg in lms.items():
        model = build_model(cfg, VOCAB)
        params = _random_params(model, lm=True, seed=21)
        lm_models[name] = (model, params)
        out[f"lm/{name}"] = decode_values(lm_decode_step(model), params, _prompts())

    s2s = {
        "s2s_transformer": tiny_fusion.model_cfg("s2s_transformer"),
        "s2s_transformer_scan_copy": tiny_fusion.model_cfg(
            "s2s_transformer", scan_layers=True, copy_source=True, num_layers=2),
        "s2s_rnn_luong_copy": tiny_fusion.model_cfg("s2s_rnn", attention="luong", copy_source=True),
        "s2s_rnn_bahdanau": tiny_fusion.model_cfg("s2s_rnn", attention="bahdanau"),
    }
    batch = _s2s_batch()
    s2s_models = {}
    for name, cfg in s2s.items():
        model = build_model(cfg, VOCAB)
        params = _random_params(model, lm=False, seed=22)
        s2s_models[name] = (model, params)
        out[f"s2s/{name}"] = decode_values(seq2seq_decode_step(model), params, batch)

    for method in tiny_fusion.METHODS:
        for backbone in tiny_fusion.BACKBONES:
            model = tiny_fusion.fused_model(method, backbone)
            params = tiny_fusion.random_params(model, seed=23)
            out[f"fused/{backbone}/{method}"] = decode_values(
                seq2seq_decode_step(model), params, batch)

    # Decode-time fusion of the Transformer encoder-decoder with both LMs.
    s2s_model, s2s_params = s2s_models["s2s_transformer"]
    s2s_step = seq2seq_decode_step(s2s_model)
    lm_t, lm_l = lm_models["transformer"], lm_models["lstm"]
    weights = decode_fusion.fusion_weights(0.3, length_reward=-0.1)
    out["decode_fusion/shallow"] = decode_values(
        decode_fusion.shallow_fusion(s2s_step, lm_decode_step(lm_t[0])),
        decode_fusion.fused_params(s2s_params, weights, lm=lm_t[1]), batch)
    weights = decode_fusion.fusion_weights(0.3, source_lm_weight=0.2)
    out["decode_fusion/density_ratio"] = decode_values(
        decode_fusion.density_ratio(s2s_step, lm_decode_step(lm_t[0]), lm_decode_step(lm_l[0])),
        decode_fusion.fused_params(s2s_params, weights, lm=lm_t[1], source_lm=lm_l[1]), batch)
    weights = decode_fusion.fusion_weights(0.3, ilm_weight=0.1)
    rnn_model, rnn_params = s2s_models["s2s_rnn_bahdanau"]
    out["decode_fusion/ilme_rnn"] = decode_values(
        decode_fusion.ilme(seq2seq_decode_step(rnn_model),
                           seq2seq_decode_step(rnn_model, zero_context=True),
                           lm_decode_step(lm_l[0])),
        decode_fusion.fused_params(rnn_params, weights, ilm=rnn_params, lm=lm_l[1]), batch)
    return out


def _random_params(model, lm: bool, seed: int):
    """NumPy-drawn params in the model's tree (no JAX init: the draw is its own contract)."""
    import flax.linen as nn

    if lm:
        args = (jnp.ones((1, 4), jnp.int32),)
    else:
        args = tuple(tiny_fusion.example_inputs()[:2])
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), *args)["params"]))
    return tiny_fusion._random_like(shapes, seed, 0.5)


def config_values() -> dict:
    return {spec: load_config(str(REPO / spec)).to_dict() for spec in CONFIG_SPECS}


PARTS = ("configs", "models", "fusion", "decoding")
# The machine the numerical parts were recorded on (golden.json's "platform" until re-recorded).
RECORDED_ON = {"cpu": "Intel(R) Xeon(R) Processor", "jax": "0.10.2"}


def platform() -> dict[str, str]:
    """What the digests depend on besides lmfuse: XLA's CPU kernels differ in the last bits
    from one processor to another (an AMD EPYC changes 5 of 10 model digests recorded on an
    Intel Xeon), and from one jax to another."""
    return {"cpu": cpu_model(), "jax": jax.__version__}


def compute(parts: tuple[str, ...] = PARTS) -> dict:
    out = {}
    if "configs" in parts:
        out["configs"] = json.loads(json.dumps(config_values()))
    if "models" in parts:
        out["models"] = trained_model_values()
    if "fusion" in parts:
        with tempfile.TemporaryDirectory() as root:
            out["fusion"] = trained_fusion_values(Path(root))
    if "decoding" in parts:
        out["decoding"] = decoding_values()
    return out


if __name__ == "__main__":
    if "--record" not in sys.argv:
        sys.exit("usage: python tests/golden/values.py --record [part ...]")
    parts = tuple(a for a in sys.argv[1:] if a != "--record") or PARTS
    values = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    values.update(compute(parts))
    if set(parts) - {"configs"}:  # numbers recorded here: this machine is the reference
        values["platform"] = platform()
    GOLDEN.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN.relative_to(REPO)}")
