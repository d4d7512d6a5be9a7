"""Recurrent language models: Elman (tanh) RNN, LSTM and GRU.

    inputs [B, T] int32 (0 = pad)
      -> wte [V, E] -> dropout                                     x: [B, T, E]
      -> num_layers x RecurrentLayer, dropout after each           x: [B, T, H]
      -> wte.attend (tied; needs H == E) or lm_head [H, V]         logits: [B, T, V] float32

Each layer runs over time with `jax.lax.scan`. Its input-to-hidden product does not depend on
the recurrence, so by default (`hoist_input_projection=True`) it is computed for all timesteps
at once as one [B*T, D] x [D, G*H] matmul before the scan, and the scan does only h @ w_hh.
The hoisted scan has a hand-written backward pass (`_recurrence`, a `jax.custom_vjp`), as
cuDNN and PyTorch do: the reverse scan does only the per-step work (the cell's gradient and
dh = d(hh) @ w_hh^T, with w_hh^T transposed once before the loop), and d(w_hh) is one
[H, T*B] x [T*B, G*H] matmul after it. Autodiff of the scan instead accumulates d(w_hh) with
a K=B matmul plus a 4 MB add every step and re-transposes w_hh inside the loop every step;
the hand-written pass computes the same gradients (float rounding aside) about 1.8x faster.

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
import functools
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmfuse.models.layers import (
    Embed,
    Head,
    ModelConfig,
    compute_dtype,
    constrain,
    partitioned,
    segment_starts,
)

if TYPE_CHECKING:
    from lmfuse.models.seq2seq_rnn import Seq2SeqRNNConfig

NUM_GATES = {"rnn": 1, "lstm": 4, "gru": 3}

Carry = dict[str, jax.Array]

# Hoisting, measured on a busy 2-core CPU (one jitted LSTM layer, B=32, T=128, D=H=512, grad of
# the summed outputs w.r.t. params and inputs, median of 5-7 runs, three sessions): hoisted
# 1.8 / 2.0 / 2.7 s, not hoisted 2.7 / 3.8 / 4.2 s, i.e. about 1.5x faster hoisted.
# The custom backward pass, same busy 2-core CPU (the LSTM recurrence alone, B=32, T=128,
# H=512, grad w.r.t. inputs and w_hh, 7 interleaved runs): autodiff 2.23 s, custom 1.27 s,
# median per-pair ratio 1.80x.


@dataclasses.dataclass(frozen=True, kw_only=True)
class RNNConfig(ModelConfig):
    """Hyperparameters of `RNNLM`; built from a model config by `registry.build_model`.
    Each field's default is its config key's one default (see `ModelConfig`); the carry stays
    float32 whatever the dtype."""

    # 'rnn' | 'lstm' | 'gru'. An LM's comes from model.name; s2s_rnn reads the key itself.
    cell: str = "lstm"
    hidden_dim: int = 512  # state width (must equal emb_dim when tie_embeddings)
    # The input-to-hidden matmul for all steps at once, before the scan.
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


def _hh(h: jax.Array, w_hh: jax.Array) -> jax.Array:
    """h [B, H] -> h w_hh [B, G, H] in float32 (w_hh already in the compute dtype)."""
    return jnp.einsum("bk,kgh->bgh", h.astype(w_hh.dtype), w_hh, preferred_element_type=jnp.float32)


def _keep(state: Carry, keep_t: jax.Array | None) -> Carry:
    """Zeroes the carry rows where a new document starts (keep_t [B], 0 = reset)."""
    return state if keep_t is None else jax.tree.map(lambda s: s * keep_t[:, None], state)


def _scan_cells(cell, xs, keeps, carry, w_hh, bias_hn, save_residuals: bool):
    """The forward recurrence over xs [T, B, G, H] (= x w_ih + bias, float32).

    Returns (final carry, per-step outputs): outputs are h [T, B, H], or with
    `save_residuals` (all per-step states, all h w_hh [T, B, G, H]) for the backward pass.
    """

    def step(state: Carry, inp: tuple[jax.Array, jax.Array | None]):
        x_t, keep_t = inp
        state = _keep(state, keep_t)
        hh = _hh(state["h"], w_hh)
        state = _cell_step(cell, state, x_t, hh, bias_hn)
        return state, ((state, hh) if save_residuals else state["h"])

    return jax.lax.scan(step, carry, (xs, keeps))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(cell: str, xs, keeps, carry, w_hh, bias_hn) -> tuple[Carry, jax.Array]:
    """(final carry, h [T, B, H]) of the hoisted recurrence; see the module docstring."""
    return _scan_cells(cell, xs, keeps, carry, w_hh, bias_hn, save_residuals=False)


def _recurrence_fwd(cell, xs, keeps, carry, w_hh, bias_hn):
    final, (states, hh) = _scan_cells(cell, xs, keeps, carry, w_hh, bias_hn, save_residuals=True)
    return (final, states["h"]), (xs, keeps, carry, w_hh, bias_hn, states, hh)


def _recurrence_bwd(cell, residuals, cotangents):
    xs, keeps, carry, w_hh, bias_hn, states, hh = residuals
    d_final, d_ys = cotangents
    # The carry entering step t (before the reset): the initial carry, then each step's output.
    prev = jax.tree.map(lambda c0, s: jnp.concatenate([c0[None], s[:-1]], axis=0), carry, states)
    w_hh_t = w_hh.reshape(w_hh.shape[0], -1).T  # [G*H, H], transposed once, outside the loop

    def step(d_state: Carry, inp):
        prev_t, keep_t, x_t, hh_t, dy_t = inp
        d_state = {**d_state, "h": d_state["h"] + dy_t}
        _, cell_vjp = jax.vjp(
            lambda s, a, b, bn: _cell_step(cell, s, a, b, bn), _keep(prev_t, keep_t), x_t, hh_t, bias_hn
        )
        d_kept, dx_t, dhh_t, dbias_hn_t = cell_vjp(d_state)
        if cell != "gru":
            dhh_t = dx_t  # the cell reads only xw + hh, so both have the same cotangent
        dh = jnp.dot(dhh_t.reshape(dhh_t.shape[0], -1).astype(w_hh_t.dtype), w_hh_t,
                     preferred_element_type=jnp.float32)
        d_kept = {**d_kept, "h": d_kept["h"] + dh}
        dhh_out = dhh_t if cell == "gru" else None
        if keep_t is None:
            return d_kept, (dx_t, dhh_out, None, dbias_hn_t)
        pairs = zip(jax.tree.leaves(d_kept), jax.tree.leaves(prev_t), strict=True)
        d_keep_t = sum(jnp.sum(d * p, axis=-1) for d, p in pairs)
        return _keep(d_kept, keep_t), (dx_t, dhh_out, d_keep_t, dbias_hn_t)

    d_carry, (dxs, dhh, d_keeps, dbias_hn) = jax.lax.scan(
        step, d_final, (prev, keeps, xs, hh, d_ys), reverse=True
    )
    if cell != "gru":
        dhh = dxs
    h_in = prev["h"] if keeps is None else prev["h"] * keeps[..., None]  # the h each step read
    t, b, h = h_in.shape
    # d(w_hh) for all steps at once: [H, T*B] x [T*B, G*H].
    dw_hh = jnp.dot(
        h_in.reshape(t * b, h).T.astype(w_hh.dtype),
        dhh.reshape(t * b, -1).astype(w_hh.dtype),
        preferred_element_type=jnp.float32,
    )
    dw_hh = dw_hh.reshape(w_hh.shape).astype(w_hh.dtype)
    dbias_hn = None if bias_hn is None else dbias_hn.sum(axis=0)
    return dxs, d_keeps, d_carry, dw_hh, dbias_hn


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


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

        if c.hoist_input_projection:
            carry, ys = _recurrence(c.cell, xs, keeps, carry, w_hh, bias_hn)
        else:

            def step(state: Carry, inp: tuple[jax.Array, jax.Array | None]) -> tuple[Carry, jax.Array]:
                x_t, keep_t = inp
                state = _keep(state, keep_t)  # zero the carry where a new document starts
                state = _cell_step(c.cell, state, input_projection(x_t), _hh(state["h"], w_hh), bias_hn)
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
        # perturb: a no-op unless a 'perturbations' collection is passed (adversarial training).
        x = self.perturb("embeddings", self.wte(inputs))
        x = constrain(self.drop(x, deterministic=deterministic), ("batch", "length", "embed"))
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


# ---------------------------------------------------------------------------------------------
# The encoder-decoder's bidirectional encoder (`seq2seq_rnn`)


def zero_carry(cell: str, shape: tuple[int, ...]) -> Carry:
    """A float32 zero carry of `shape` ({'h'} or, for an LSTM, {'h', 'c'})."""
    zeros = jnp.zeros(shape, jnp.float32)
    return {"h": zeros, "c": zeros} if cell == "lstm" else {"h": zeros}


class BidirectionalLayer(nn.Module):
    """x [B, S, D] -> [forward ; backward] outputs [B, S, 2H]; see the module docstring."""

    cfg: Seq2SeqRNNConfig  # its rnn_config() for each direction

    @nn.compact
    def __call__(
        self, x: jax.Array, keep_fwd: jax.Array | None, keep_bwd: jax.Array | None
    ) -> jax.Array:
        rc = self.cfg.rnn_config()
        carry = zero_carry(rc.cell, (x.shape[0], rc.hidden_dim))
        forward, _ = RecurrentLayer(rc, name="forward")(x, keep_fwd, carry)
        backward, _ = RecurrentLayer(rc, name="backward")(jnp.flip(x, axis=1), keep_bwd, carry)
        return jnp.concatenate([forward, jnp.flip(backward, axis=1)], axis=-1)


class Encoder(nn.Module):
    """Embedded source [B, S, E] -> memory [B, S, 2H] (after dropout), in the compute dtype."""

    cfg: Seq2SeqRNNConfig  # its rnn_config() for each direction

    @nn.compact
    def __call__(
        self, x: jax.Array, segment_ids: jax.Array | None, deterministic: bool
    ) -> jax.Array:
        keep_fwd = keep_bwd = None
        if segment_ids is not None:
            keep_fwd = segment_starts(segment_ids)
            keep_bwd = segment_starts(jnp.flip(segment_ids, axis=1))
        drop = nn.Dropout(self.cfg.dropout)
        for i in range(self.cfg.encoder_layers):
            x = BidirectionalLayer(self.cfg, name=f"layers_{i}")(x, keep_fwd, keep_bwd)
            x = drop(x, deterministic=deterministic)
        return constrain(x, ("batch", "length", "hidden"))
