"""A pre-LN GPT-style Transformer LM in plain JAX: the math of lmfuse's `TransformerLM` with
pre-LN, biases, tied embeddings, learned positions or RoPE, no dropout.

Params: {'wte': [V, E], 'wpe': [max_len, E] (learned positions only), 'ln_f': (scale, bias),
'blocks': [{'ln_1', 'ln_2': (scale, bias), 'qkv': ([E, 3E], [3E]), 'out': ([E, E], [E]),
'fc': ([E, M], [M]), 'proj': ([M, E], [E])}, ...]}; query, key and value are one matmul.
KV cache per layer: {'k', 'v'}: [B, N, S, Hd], written one chunk at a time.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

PAD_ID = 0  # never generated (lmfuse's sampler suppresses it)
ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "gelu_new": lambda x: jax.nn.gelu(x, approximate=True)}


class Config(NamedTuple):  # hashable: a static argument of jit
    vocab: int
    emb: int
    layers: int
    heads: int
    mlp: int
    max_len: int
    positions: str = "learned"  # 'learned' | 'rope'
    activation: str = "gelu"  # 'gelu' (erf) | 'gelu_new' (tanh)
    eps: float = 1e-5


def init_params(key, cfg: Config) -> dict:
    keys = iter(jax.random.split(key, 4 * cfg.layers + 2))

    def dense(i, o, std=0.02): return std * jax.random.normal(next(keys), (i, o)), jnp.zeros(o)
    def norm(): return jnp.ones(cfg.emb), jnp.zeros(cfg.emb)  # new arrays each: donated apart

    resid = 0.02 / (2 * cfg.layers) ** 0.5
    params = {"wte": 0.02 * jax.random.normal(next(keys), (cfg.vocab, cfg.emb)), "ln_f": norm(),
              "blocks": [{"ln_1": norm(), "qkv": dense(cfg.emb, 3 * cfg.emb),
                          "out": dense(cfg.emb, cfg.emb, resid), "ln_2": norm(),
                          "fc": dense(cfg.emb, cfg.mlp), "proj": dense(cfg.mlp, cfg.emb, resid)}
                         for _ in range(cfg.layers)]}
    if cfg.positions == "learned":
        params["wpe"] = 0.02 * jax.random.normal(next(keys), (cfg.max_len, cfg.emb))
    return params


def from_lmfuse(p: dict) -> dict:
    """lmfuse's unscanned pre-LN TransformerLM (tied, biases) params -> this program's."""
    def dense(d): return d["kernel"].reshape(-1, d["kernel"].shape[-1]), d["bias"]
    def flat(d): return d["kernel"].reshape(d["kernel"].shape[0], -1), d["bias"].reshape(-1)
    def norm(d): return d["scale"], d["bias"]

    names = sorted((k for k in p if k.startswith("blocks_")), key=lambda k: int(k.split("_")[1]))
    blocks = []
    for b in (p[n] for n in names):
        q, k, v = (flat(b["attn"][n]) for n in ("query", "key", "value"))
        blocks.append({"ln_1": norm(b["ln_1"]), "ln_2": norm(b["ln_2"]),
                       "qkv": (jnp.concatenate([q[0], k[0], v[0]], 1), jnp.concatenate([q[1], k[1], v[1]])),
                       "out": dense(b["attn"]["out"]), "fc": dense(b["mlp"]["fc"]),
                       "proj": dense(b["mlp"]["proj"])})
    out = {"wte": p["wte"]["embedding"], "ln_f": norm(p["ln_f"]), "blocks": blocks}
    return out | ({"wpe": p["wpe"]} if "wpe" in p else {})


def layer_norm(x, scale_bias, eps):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale_bias[0] + scale_bias[1]


def rope(x, positions):
    """Rotate-half RoPE of x [B, T, N, Hd] at positions [T]."""
    half = x.shape[-1] // 2
    angles = positions[:, None] * (1.0 / 10000.0 ** (jnp.arange(0, 2 * half, 2) / (2 * half)))
    cos, sin = jnp.cos(angles)[:, None], jnp.sin(angles)[:, None]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def forward(params: dict, tokens, cfg: Config, cache=None, index=0):
    """tokens [B, C] at positions index.. -> (final hidden [B, C, E], new cache or None).
    Without a cache: causal attention within the chunk (training). The residual stream is
    kept as [B*C, E] rows: with [B, C, E] @ [E, F] products, XLA:CPU fuses each layer's
    gradient sum into every later product's transposed operand and recomputes it there
    (a train step 1.5x slower)."""
    b, c = tokens.shape
    n = cfg.heads
    positions = index + jnp.arange(c)
    x = params["wte"][tokens]
    if cfg.positions == "learned":
        x = x + params["wpe"][positions]
    x = x.reshape(b * c, -1)
    new_cache = []
    for i, p in enumerate(params["blocks"]):
        qkv = layer_norm(x, p["ln_1"], cfg.eps) @ p["qkv"][0] + p["qkv"][1]
        q, k, v = (t.reshape(b, c, n, -1) for t in jnp.split(qkv, 3, axis=-1))
        if cfg.positions == "rope":
            q, k = rope(q, positions), rope(k, positions)
        if cache is None:
            y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        else:  # write this chunk into slots index.., attend to every slot up to each query
            kv = {name: jax.lax.dynamic_update_slice(cache[i][name], t.transpose(0, 2, 1, 3), (0, 0, index, 0))
                  for name, t in (("k", k), ("v", v))}
            new_cache.append(kv)
            scores = jnp.einsum("bcnh,bnsh->bncs", q, kv["k"]) / jnp.sqrt(q.shape[-1])
            visible = jnp.arange(kv["k"].shape[2]) <= positions[:, None]
            probs = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
            y = jnp.einsum("bncs,bnsh->bcnh", probs, kv["v"])
        x = x + y.reshape(b * c, -1) @ p["out"][0] + p["out"][1]
        h = ACTIVATIONS[cfg.activation](layer_norm(x, p["ln_2"], cfg.eps) @ p["fc"][0] + p["fc"][1])
        x = x + h @ p["proj"][0] + p["proj"][1]
    hidden = layer_norm(x, params["ln_f"], cfg.eps).reshape(b, c, -1)
    return hidden, (new_cache if cache is not None else None)


def loss_fn(params: dict, inputs, targets, cfg: Config):
    """Mean token cross-entropy; the target logit as a one-hot product (its gradient fuses)."""
    hidden, _ = forward(params, inputs, cfg)
    logits = hidden.reshape(-1, cfg.emb) @ params["wte"].T  # tied head on [B*T, E] rows
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.sum(logits * jax.nn.one_hot(targets.reshape(-1), cfg.vocab), axis=-1)
    return jnp.mean(log_z - target)


def optimizer(lr, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.01, clip=1.0):
    """AdamW with global-norm clipping; decay on matrices but the embedding (as lmfuse)."""
    def mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, a: a.ndim >= 2 and path[0].key != "wte", params)

    return optax.chain(optax.clip_by_global_norm(clip),
                       optax.adamw(lr, b1, b2, eps, weight_decay=weight_decay, mask=mask))


def make_train_step(cfg: Config, tx):
    @jax.jit(donate_argnums=(0, 1))  # params and optimizer state are updated in place
    def train_step(params, opt_state, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets, cfg)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


@jax.jit(static_argnames=("cfg", "new_tokens", "top_k"))
def generate(params: dict, prompt, key, cfg: Config, new_tokens: int, top_k: int = 0):
    """prompt [B, P] (no padding) -> [B, new_tokens]: argmax tokens (top_k=0) or draws from
    the top_k logits; one prefill, then a loop of one-token steps over the KV cache."""
    b, p = prompt.shape
    shape = (b, cfg.heads, p + new_tokens, cfg.emb // cfg.heads)
    cache = [{"k": jnp.zeros(shape), "v": jnp.zeros(shape)} for _ in range(cfg.layers)]
    hidden, cache = forward(params, prompt, cfg, cache, 0)

    def body(i, state):
        last, cache, out = state  # last: the final hidden state [B, E]
        logits = (last @ params["wte"].T).at[:, PAD_ID].set(-jnp.inf)
        if top_k:
            values, ids = jax.lax.top_k(logits, top_k)
            pick = jax.random.categorical(jax.random.fold_in(key, i), values)
            token = jnp.take_along_axis(ids, pick[:, None], axis=-1)[:, 0]
        else:
            token = jnp.argmax(logits, axis=-1)
        hidden, cache = forward(params, token[:, None], cfg, cache, p + i)
        return hidden[:, -1], cache, out.at[:, i].set(token)

    out = jnp.zeros((b, new_tokens), jnp.int32)
    return jax.lax.fori_loop(0, new_tokens, body, (hidden[:, -1], cache, out))[2]
