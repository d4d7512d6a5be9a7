"""A multi-layer LSTM LM in plain JAX: the math of lmfuse's `RNNLM` (cell 'lstm', untied head).

Params: {'embed': [V, E], 'layers': [{'w_ih': [D, 4H], 'w_hh': [H, 4H], 'b': [4H]}, ...],
'head': [H, V]}; gates i, f, g, o side by side on the last axis (lmfuse's [D, 4, H] reshaped).
Time-major inside: the input projection of all steps is one matmul, the scan does h @ w_hh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

PAD_ID = 0  # never generated (lmfuse's sampler suppresses it)


def init_params(key, vocab: int, emb: int, hidden: int, layers: int) -> dict:
    keys = iter(jax.random.split(key, 2 * layers + 2))

    def normal(shape, std): return std * jax.random.normal(next(keys), shape)
    def forget_bias(): return jnp.zeros((4, hidden)).at[1].set(1.0).reshape(-1)  # 1: remember

    return {"embed": normal((vocab, emb), 0.02),
            "layers": [{"w_ih": normal((d, 4 * hidden), d**-0.5),
                        "w_hh": normal((hidden, 4 * hidden), hidden**-0.5), "b": forget_bias()}
                       for d in [emb] + [hidden] * (layers - 1)],
            "head": normal((hidden, vocab), 0.02)}


def from_lmfuse(p: dict) -> dict:
    """lmfuse's RNNLM (lstm, untied) params -> this program's."""
    names = sorted((k for k in p if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
    layers = [{"w_ih": p[n]["w_ih"].reshape(p[n]["w_ih"].shape[0], -1),
               "w_hh": p[n]["w_hh"].reshape(p[n]["w_hh"].shape[0], -1),
               "b": p[n]["bias"].reshape(-1)} for n in names]
    return {"embed": p["wte"]["embedding"], "layers": layers, "head": p["lm_head"]["kernel"]}


def lstm_layer(layer: dict, x, carry):
    """x [T, B, D], carry (h, c) [B, H] -> (outputs [T, B, H], final carry)."""
    t, b, d = x.shape  # every step's input projection at once, as one [T*B, D] product
    xw = (x.reshape(t * b, d) @ layer["w_ih"]).reshape(t, b, -1) + layer["b"]

    def step(carry, xw_t):
        h, c = carry
        i, f, g, o = jnp.split(xw_t + h @ layer["w_hh"], 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    carry, ys = jax.lax.scan(step, carry, xw)
    return ys, carry


def forward(params: dict, tokens, carries=None):
    """tokens [B, T] -> (logits [T, B, V], carries); time-major out, as the scan leaves it.
    Products on [T*B, D] rows: with [T, B, D] @ [D, F] ones XLA:CPU fuses their gradients
    into transposed copies (a train step 1.4x slower)."""
    x = params["embed"][tokens.T]
    if carries is None:
        zeros = jnp.zeros((tokens.shape[0], params["layers"][0]["w_hh"].shape[0]))
        carries = [(zeros, zeros)] * len(params["layers"])
    new = []
    for layer, carry in zip(params["layers"], carries, strict=True):
        x, carry = lstm_layer(layer, x, carry)
        new.append(carry)
    t, b, h = x.shape
    return (x.reshape(t * b, h) @ params["head"]).reshape(t, b, -1), new


def loss_fn(params: dict, inputs, targets):
    """Mean token cross-entropy; the target logit as a one-hot product (its gradient fuses)."""
    logits, _ = forward(params, inputs)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.sum(logits * jax.nn.one_hot(targets.T, logits.shape[-1]), axis=-1)
    return jnp.mean(log_z - target)


def optimizer(lr, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.01, clip=1.0):
    """AdamW with global-norm clipping; decay on matrices but the embedding (as lmfuse)."""
    def mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, a: a.ndim >= 2 and path[0].key != "embed", params)

    return optax.chain(optax.clip_by_global_norm(clip),
                       optax.adamw(lr, b1, b2, eps, weight_decay=weight_decay, mask=mask))


def make_train_step(tx):
    @jax.jit(donate_argnums=(0, 1))  # params and optimizer state are updated in place
    def train_step(params, opt_state, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


@jax.jit(static_argnames="new_tokens")
def greedy(params: dict, prompt, new_tokens: int):
    """prompt [B, P] (no padding) -> [B, new_tokens] argmax tokens, the carry passed along."""
    logits, carries = forward(params, prompt)

    def body(i, state):
        logits, carries, out = state
        token = jnp.argmax(logits.at[:, PAD_ID].set(-jnp.inf), axis=-1)
        logits, carries = forward(params, token[:, None], carries)
        return logits[0], carries, out.at[:, i].set(token)

    out = jnp.zeros((prompt.shape[0], new_tokens), jnp.int32)
    return jax.lax.fori_loop(0, new_tokens, body, (logits[-1], carries, out))[2]
