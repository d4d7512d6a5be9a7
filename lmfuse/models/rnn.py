"""Recurrent language models: Elman (tanh) RNN, LSTM and GRU.

    inputs [B, T] int32 (0 = pad)
      -> wte [V, E] -> dropout                                     x: [B, T, E]
      -> num_layers x RecurrentLayer, dropout after each           x: [B, T, H]
      -> wte.attend (tied; needs H == E) or lm_head [H, V]         logits: [B, T, V] float32

Each layer runs over time with `jax.lax.scan`. Its input-to-hidden product does not depend on
the recurrence, so by default (`hoist_input_projection=True`) it is computed for all timesteps
at once as one [B*T, D] x [D, G*H] matmul before the scan, and the scan does only h @ w_hh.

Cells (G gates; gate order follows PyTorch so weights convert by reshaping):
    rnn:  h' = tanh(xw + h w_hh)                                   G = 1
    lstm: i, f, g, o = xw + h w_hh;  c' = s(f) c + s(i) tanh(g);  h' = s(o) tanh(c')     G = 4
    gru:  r, z = s(xw_rz + h w_hh_rz);  n = tanh(xw_n + r (h w_hh_n + bias_hn));
          h' = (1 - z) n + z h                                     G = 3
where xw = x w_ih + bias and s = sigmoid.

Param tree (logical axes in brackets; D = layer input width, E for layer 0 and H above):
    wte/embedding [V, E]                 ('vocab', 'embed')
    layers_i/w_ih [D, G, H]              ('embed', 'gates', 'hidden')
    layers_i/w_hh [H, G, H]              ('embed', 'gates', 'hidden')
    layers_i/bias [G, H]                 ('gates', 'hidden')
    layers_i/bias_hn [H]                 ('hidden',)               gru only
    lm_head/kernel [H, V]                ('embed', 'vocab')        untied only
Gates get their own axis so that sharding 'hidden' splits every gate the same way.

Carry (for decoding; a plain pytree, carried in and out):
    {'h': [L, B, H]} for rnn/gru, {'h': [L, B, H], 'c': [L, B, H]} for lstm; always float32.
    logits, carry = model.apply({'params': p}, tokens, carry=carry, return_carry=True)

Packed rows: where `segment_ids` changes between t-1 and t the carry is zeroed before step t,
so documents never see each other. Position 0 of a call never resets (it continues the carry
passed in; a fresh carry is zeros anyway).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmfuse.models.layers import Embed, Head, compute_dtype, constrain, partitioned, segment_starts

NUM_GATES = {"rnn": 1, "lstm": 4, "gru": 3}

Carry = dict[str, jax.Array]

# Hoisting, measured on a busy 2-core CPU (one jitted LSTM layer, B=32, T=128, D=H=512, grad of
# the summed outputs w.r.t. params and inputs, median of 5-7 runs, three sessions): hoisted
# 1.8 / 2.0 / 2.7 s, not hoisted 2.7 / 3.8 / 4.2 s, i.e. about 1.5x faster hoisted.


@dataclasses.dataclass(frozen=True)
class RNNConfig:
    """Hyperparameters of `RNNLM`; built from a model config by `registry.build_model`."""

    vocab_size: int
    cell: str = "lstm"  # 'rnn' | 'lstm' | 'gru'
    emb_dim: int = 512
    hidden_dim: int = 512
    num_layers: int = 2
    dropout: float = 0.0
    tie_embeddings: bool = True
    dtype: str = "float32"  # compute dtype of the matmuls; the carry stays float32
    hoist_input_projection: bool = True


def _bias_init(cell: str):
    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        bias = jnp.zeros(shape, dtype)
        if cell == "lstm":
            # Forget-gate bias 1: remember by default early in training (Jozefowicz et al. 2015).
            bias = bias.at[1].set(1.0)
        return bias

    return init


def _cell_step(cell: str, carry: Carry, xw: jax.Array, hh: jax.Array, bias_hn: jax.Array | None) -> Carry:
    """One time step in float32. xw = x w_ih + bias and hh = h w_hh, both [B, G, H]."""
    if cell == "rnn":
        return {"h": jnp.tanh(xw[:, 0] + hh[:, 0])}
    if cell == "lstm":
        z = xw + hh
        i, f, g, o = (z[:, k] for k in range(4))
        c = jax.nn.sigmoid(f) * carry["c"] + jax.nn.sigmoid(i) * jnp.tanh(g)
        return {"h": jax.nn.sigmoid(o) * jnp.tanh(c), "c": c}
    r = jax.nn.sigmoid(xw[:, 0] + hh[:, 0])
    z = jax.nn.sigmoid(xw[:, 1] + hh[:, 1])
    n = jnp.tanh(xw[:, 2] + r * (hh[:, 2] + bias_hn))
    return {"h": (1.0 - z) * n + z * carry["h"]}


class RecurrentLayer(nn.Module):
    """One recurrent layer over a whole sequence.

    x [B, T, D], keep [B, T] float (0 = reset the carry before this step) or None, carry of
    [B, H] arrays -> (outputs [B, T, H] in the compute dtype, final carry).
    """

    cfg: RNNConfig

    @nn.compact
    def __call__(self, x: jax.Array, keep: jax.Array | None, carry: Carry) -> tuple[jax.Array, Carry]:
        c = self.cfg
        dt = compute_dtype(c.dtype)
        g, h = NUM_GATES[c.cell], c.hidden_dim
        d = x.shape[-1]
        axes = ("embed", "gates", "hidden")
        w_ih = self.param("w_ih", partitioned(nn.initializers.normal(d**-0.5), axes), (d, g, h), jnp.float32)
        w_hh = self.param("w_hh", partitioned(nn.initializers.normal(h**-0.5), axes), (h, g, h), jnp.float32)
        bias = self.param("bias", partitioned(_bias_init(c.cell), ("gates", "hidden")), (g, h), jnp.float32)
        bias_hn = None
        if c.cell == "gru":
            bias_hn = self.param("bias_hn", partitioned(nn.initializers.zeros, ("hidden",)), (h,), jnp.float32)
        w_ih, w_hh = w_ih.astype(dt), w_hh.astype(dt)

        def input_projection(x_: jax.Array) -> jax.Array:
            xw = jnp.einsum("...d,dgh->...gh", x_.astype(dt), w_ih, preferred_element_type=jnp.float32)
            return xw + bias

        # Time-major for scan.
        if c.hoist_input_projection:
            xs = constrain(input_projection(x), ("batch", "length", "gates", "hidden"))
            xs = jnp.swapaxes(xs, 0, 1)  # [T, B, G, H]
        else:
            xs = jnp.swapaxes(x, 0, 1)  # [T, B, D]
        keeps = None if keep is None else jnp.swapaxes(keep, 0, 1)  # [T, B]

        def step(state: Carry, inp: tuple[jax.Array, jax.Array | None]) -> tuple[Carry, jax.Array]:
            x_t, keep_t = inp
            if keep_t is not None:  # zero the carry where a new document starts
                state = jax.tree.map(lambda s: s * keep_t[:, None], state)
            xw = x_t if c.hoist_input_projection else input_projection(x_t)
            hh = jnp.einsum("bk,kgh->bgh", state["h"].astype(dt), w_hh, preferred_element_type=jnp.float32)
            state = _cell_step(c.cell, state, xw, hh, bias_hn)
            return state, state["h"]

        carry, ys = jax.lax.scan(step, carry, (xs, keeps))
        ys = constrain(jnp.swapaxes(ys, 0, 1).astype(dt), ("batch", "length", "hidden"))
        return ys, carry


class RNNLM(nn.Module):
    """Multi-layer recurrent LM. See the module docstring for shapes, params and carry.

    Calls (all through `model.apply({'params': p}, ..., rngs={'dropout': key})`):
      logits = model.apply(v, inputs, segment_ids=None, positions=None, deterministic=True)
      logits, carry = model.apply(v, inputs, carry=carry, return_carry=True)
      hidden = model.apply(v, inputs, ..., method='embed_and_hidden')     # [B, T, H]
      logits = model.apply(v, hidden, method='logits_from_hidden')
    `positions` is accepted for a uniform call contract and ignored (order comes from the scan).
    """

    cfg: RNNConfig

    def setup(self) -> None:
        c = self.cfg
        self.wte = Embed(c.vocab_size, c.emb_dim, c.dtype)
        self.layers = [RecurrentLayer(c) for _ in range(c.num_layers)]
        self.drop = nn.Dropout(c.dropout)
        if not c.tie_embeddings:
            self.lm_head = Head(c.vocab_size, "embed", c.dtype)

    def __call__(
        self,
        inputs: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
        carry: Carry | None = None,
        return_carry: bool = False,
    ) -> jax.Array | tuple[jax.Array, Carry]:
        """[B, T] int32 -> float32 logits [B, T, V]; with return_carry, (logits, final carry)."""
        hidden, new_carry = self.embed_and_hidden(
            inputs, segment_ids, positions, deterministic, carry, return_carry=True
        )
        logits = self.logits_from_hidden(hidden)
        return (logits, new_carry) if return_carry else logits

    def embed_and_hidden(
        self,
        inputs: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
        carry: Carry | None = None,
        return_carry: bool = False,
    ) -> jax.Array | tuple[jax.Array, Carry]:
        """Top-layer outputs [B, T, H] (after dropout), i.e. the input of the output layer."""
        del positions  # recurrence order is the position
        if carry is None:
            carry = self.init_carry(inputs.shape[0])
        keep = None if segment_ids is None else segment_starts(segment_ids)
        x = constrain(self.drop(self.wte(inputs), deterministic=deterministic), ("batch", "length", "embed"))
        new_layers = []
        for i, layer in enumerate(self.layers):
            x, layer_carry = layer(x, keep, jax.tree.map(lambda s, i=i: s[i], carry))
            x = self.drop(x, deterministic=deterministic)
            new_layers.append(layer_carry)
        new_carry = jax.tree.map(lambda *s: jnp.stack(s), *new_layers)
        return (x, new_carry) if return_carry else x

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """[B, T, H] -> float32 logits [B, T, V]."""
        logits = self.wte.attend(hidden) if self.cfg.tie_embeddings else self.lm_head(hidden)
        return constrain(logits, ("batch", "length", "vocab"))

    def init_carry(self, batch_size: int) -> Carry:
        """A zero carry (see the module docstring). Needs no params: call it unbound."""
        c = self.cfg
        zeros = jnp.zeros((c.num_layers, batch_size, c.hidden_dim), jnp.float32)
        return {"h": zeros, "c": zeros} if c.cell == "lstm" else {"h": zeros}
