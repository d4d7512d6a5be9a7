"""RNN encoder-decoder: encoder parity with torch, decoder parity with a NumPy reference, cached
decoding, packing, padding, attention masks, the zero-context internal LM, beam search.

Most tests share one batch (`canonical_batch`), so each model variant compiles few programs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfuse.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from lmfuse.decode import beam_search, gather_beams, greedy, seq2seq_decode_step, tile_beams
from lmfuse.models import build_model, model_defaults
from lmfuse.models.layers import shift_right
from lmfuse.models.seq2seq_rnn import Seq2SeqRNN

# Tiny models: compile time dominates, and LLVM's optimisation level only changes speed (the
# XLA program is the same), so tests compile at level 0, about twice as fast.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

VOCAB = 37
E, H = 12, 8  # different widths (and 2H != E), so a mixed-up axis cannot go unnoticed
S = T = 8
VARIANTS = [("lstm", "bahdanau"), ("lstm", "luong"), ("gru", "bahdanau"), ("gru", "luong")]
PREFIX = (2, 1, 3)  # decoder prompt lengths of rows 1-3 in the decoding tests


def tiny_cfg(**overrides):
    c = model_defaults().to_dict()
    c.update(name="s2s_rnn", emb_dim=E, hidden_dim=H, num_layers=2, num_encoder_layers=2)
    c.update(dropout=0.0)
    c.update(overrides)
    return c


def model_and_params(cell="lstm", attention="bahdanau", **overrides):
    """(model, params, apply): apply is a jitted model.apply; cached per full config."""
    cfg = tiny_cfg(cell=cell, attention=attention, **overrides)
    return _model_and_params(tuple(sorted(cfg.items())))


@functools.cache
def _model_and_params(cfg_items):
    cfg = dict(cfg_items)
    model = build_model(cfg, VOCAB)
    apply = jit(model.apply, static_argnames=("deterministic", "method", "zero_context"))
    return model, _random_params(cfg["cell"], cfg["attention"], cfg["copy_source"]), apply


@functools.cache
def _random_params(cell, attention, copy_source=False):
    """Random values in the model's param tree (shapes by eval_shape: no init to compile).

    Larger than the init's and with non-zero biases, so every term matters and attention and
    logits are peaked enough for effects to stand far above rounding."""
    model = build_model(tiny_cfg(cell=cell, attention=attention, copy_source=copy_source), VOCAB)
    dummy = jnp.ones((1, S), jnp.int32)
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), dummy, dummy)["params"])
    rng = np.random.RandomState(0)

    def fill(path, leaf):
        if jax.tree_util.keystr(path).endswith("['embedding']"):
            std = 1.0
        else:
            std = 2.0 / np.sqrt(leaf.shape[0]) if leaf.ndim > 1 else 0.5
        return jnp.asarray(rng.normal(0.0, std, leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.cache
def decode_fns(model, zero_context=False):
    """Jitted (init(params, batch), step(params, state, tokens)), shared by the tests."""
    decoder = seq2seq_decode_step(model, zero_context)
    init = jit(lambda p, b: decoder.init(p, b, T))
    step = jit(decoder.step)
    return init, step


def canonical_batch(seed=0):
    """Six rows, sources and decoder inputs both [6, 8], built from three examples: a (source
    4 tokens, target 3), b (3, 4) and c (8, 8); decoder inputs are the targets through
    shift_right. Segment ids: 1, 2 = examples, 0 = padding; positions restart per segment.

        row 0: a and b packed, one padding slot      row 3: c, no padding
        row 1: a alone, padded                       row 4: row 0's tokens as ONE segment
        row 2: b alone, padded                       row 5: an all-padding source (target c)
    """
    rng = np.random.RandomState(seed)
    src = {k: [*rng.randint(3, VOCAB, n - 1), EOS_ID] for k, n in (("a", 4), ("b", 3), ("c", 8))}
    tgt = {k: [*rng.randint(3, VOCAB, n - 1), EOS_ID] for k, n in (("a", 3), ("b", 4), ("c", 8))}
    rows = [  # (example, segment id) per part, the same on both sides but for row 5
        [("a", 1), ("b", 2)], [("a", 1)], [("b", 1)], [("c", 1)], [("a", 1), ("b", 1)], None
    ]

    def layout(parts, table):
        """(ids, segment ids, positions) of one row, right-padded to 8."""
        pad = S - sum(len(table[name]) for name, _ in parts)
        ids = [i for name, _ in parts for i in table[name]] + [PAD_ID] * pad
        segs = [seg for name, seg in parts for _ in table[name]] + [0] * pad
        positions = [p for name, _ in parts for p in range(len(table[name]))] + [0] * pad
        return ids, segs, positions

    def side(table, default):
        columns = zip(*(layout(parts or default, table) for parts in rows), strict=True)
        return (jnp.asarray(column, jnp.int32) for column in columns)

    inputs, inputs_segments, inputs_positions = side(src, [])
    targets, decoder_segments, decoder_positions = side(tgt, [("c", 1)])
    return {
        "inputs": inputs, "inputs_segment_ids": inputs_segments,
        "inputs_positions": inputs_positions,
        "decoder_inputs": shift_right(targets, decoder_positions),
        "decoder_segment_ids": decoder_segments, "decoder_positions": decoder_positions,
    }


def prompted(batch):
    """Rows 1-3 (a, b and c alone) for decode_init: their sources and, as prompts, the first
    PREFIX tokens of their decoder inputs, right-padded with PAD."""
    targets = batch["decoder_inputs"][1:4, :3]
    prompt = jnp.where(jnp.arange(3)[None, :] < jnp.asarray(PREFIX)[:, None], targets, PAD_ID)
    return {"inputs": batch["inputs"][1:4], "prompt": prompt}


def encode(apply, params, batch):
    return apply({"params": params}, batch["inputs"], batch["inputs_segment_ids"], method="encode")


def decode_hidden(apply, params, memory, batch, zero_context=False):
    return apply(
        {"params": params}, memory, batch["inputs_segment_ids"], batch["decoder_inputs"],
        batch["decoder_segment_ids"], zero_context=zero_context, method="decode_hidden",
    )


def test_build_model_param_tree_and_logical_axes():
    cfg = tiny_cfg(cell="gru", tie_embeddings=False, share_embeddings=False)
    model = build_model(cfg, VOCAB)
    assert isinstance(model, Seq2SeqRNN)
    dummy = jnp.ones((1, S), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), dummy, dummy)["params"]
    spec, shapes = nn.get_partition_spec(boxed), nn.meta.unbox(boxed)
    assert set(spec) == {"wte", "source_wte", "encoder", "decoder", "lm_head"}
    assert set(spec["decoder"]) == {"layers_0", "layers_1", "attention", "readout"}
    fwd = spec["encoder"]["layers_1"]["forward"]
    assert tuple(fwd["w_ih"]) == ("embed", "gates", "hidden")
    assert tuple(fwd["bias_hn"]) == ("hidden",)
    # Layer 1 of the encoder reads [fwd ; bwd]; bahdanau's first decoder layer reads [y ; c].
    assert shapes["encoder"]["layers_1"]["backward"]["w_ih"].shape == (2 * H, 3, H)
    assert shapes["decoder"]["layers_0"]["w_ih"].shape == (E + 2 * H, 3, H)
    assert {k: tuple(v) for k, v in spec["decoder"]["attention"].items()} == {
        "key": ("embed", "hidden"), "query": ("embed", "hidden"),
        "bias": ("hidden",), "energy": ("hidden",),
    }
    assert tuple(spec["decoder"]["readout"]["kernel"]) == ("hidden", "embed")
    assert shapes["decoder"]["readout"]["kernel"].shape == (3 * H, E)
    assert shapes["lm_head"]["kernel"].shape == (E, VOCAB)

    luong = build_model(tiny_cfg(attention="luong", num_encoder_layers=0, num_layers=3), VOCAB)
    shapes = nn.meta.unbox(jax.eval_shape(luong.init, jax.random.key(0), dummy, dummy)["params"])
    assert set(shapes) == {"wte", "encoder", "decoder"}  # shared and tied: one table
    assert set(shapes["encoder"]) == {f"layers_{i}" for i in range(3)}  # 0 means num_layers
    assert set(shapes["decoder"]["attention"]) == {"key"}
    assert shapes["decoder"]["layers_0"]["w_ih"].shape == (E, 4, H)  # no input feeding


def _torch_layer(weights, suffix, cell, d):
    """torch's [G*H, in] weights of one direction -> lmfuse's RecurrentLayer params."""
    g = 4 if cell == "lstm" else 3
    b_ih = weights[f"bias_ih{suffix}"].reshape(g, H)
    b_hh = weights[f"bias_hh{suffix}"].reshape(g, H)
    params = {
        "w_ih": weights[f"weight_ih{suffix}"].T.reshape(d, g, H),
        "w_hh": weights[f"weight_hh{suffix}"].T.reshape(H, g, H),
    }
    if cell == "lstm":
        params["bias"] = b_ih + b_hh
    else:  # the candidate's recurrent bias sits inside r * (...), so it stays separate
        params["bias"] = b_ih + np.stack([b_hh[0], b_hh[1], np.zeros(H, np.float32)])
        params["bias_hn"] = b_hh[2]
    return params


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bidirectional_encoder_matches_torch_on_each_example_alone(cell):
    torch = pytest.importorskip("torch")
    _, params, apply = model_and_params(cell, "luong")
    torch.manual_seed(0)
    rnn = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    ref = rnn(E, H, num_layers=2, bidirectional=True, batch_first=True)
    weights = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    encoder = {}
    for k, width in enumerate((E, 2 * H)):
        encoder[f"layers_{k}"] = {
            "forward": _torch_layer(weights, f"_l{k}", cell, width),
            "backward": _torch_layer(weights, f"_l{k}_reverse", cell, width),
        }
    params = {**params, "encoder": encoder}
    table = np.asarray(params["wte"]["embedding"])

    def torch_alone(ids):
        with torch.no_grad():
            return ref(torch.from_numpy(table[np.asarray(ids)][None]))[0][0].numpy()

    batch = canonical_batch()
    inputs = batch["inputs"]
    memory = encode(apply, params, batch)
    assert memory.shape == (6, S, 2 * H)
    # Padded rows of different lengths: each row's real positions equal the example alone.
    for row, n in ((1, 4), (2, 3), (3, 8)):
        np.testing.assert_allclose(memory[row, :n], torch_alone(inputs[row, :n]), atol=1e-5)
    # The packed row: the backward direction restarts at each segment's end, as if alone.
    np.testing.assert_allclose(memory[0, :4], torch_alone(inputs[0, :4]), atol=1e-5)
    np.testing.assert_allclose(memory[0, 4:7], torch_alone(inputs[0, 4:7]), atol=1e-5)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def reference_decoder(p, attention, memory, emb):
    """The 2-layer LSTM decoder of one unpadded example in NumPy, from the papers' equations.

    p: the decoder's params; memory [S, 2H]; emb [T, E]. Returns the readout [T, E].
    """
    att = p["attention"]
    keys = memory @ att["key"] + att.get("bias", 0.0)
    h, c = np.zeros((2, H)), np.zeros((2, H))
    out = []
    for y in emb:
        x = y
        if attention == "bahdanau":  # e_j = v^T tanh(W_s s_{t-1} + W_h h_j + b), before the step
            context = _softmax(np.tanh(keys + h[-1] @ att["query"]) @ att["energy"]) @ memory
            x = np.concatenate([y, context])
        for i in range(2):
            w = p[f"layers_{i}"]
            z = x @ w["w_ih"].reshape(len(x), -1) + h[i] @ w["w_hh"].reshape(H, -1)
            gi, gf, gg, go = np.split(z + w["bias"].reshape(-1), 4)
            c[i] = _sigmoid(gf) * c[i] + _sigmoid(gi) * np.tanh(gg)
            h[i] = _sigmoid(go) * np.tanh(c[i])
            x = h[i]
        if attention == "luong":  # e_j = s_t^T W h_j, after the step
            context = _softmax(keys @ h[-1]) @ memory
        readout = np.concatenate([context, h[-1]]) @ p["readout"]["kernel"] + p["readout"]["bias"]
        out.append(np.tanh(readout))
    return np.stack(out)


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_decoder_matches_a_numpy_reference(attention):
    _, params, apply = model_and_params("lstm", attention)
    batch = canonical_batch()
    memory = encode(apply, params, batch)
    hidden = decode_hidden(apply, params, memory, batch)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    for row, src_len, dec_len in ((1, 4, 3), (2, 3, 4), (3, 8, 8)):
        emb = p["wte"]["embedding"][np.asarray(batch["decoder_inputs"][row, :dec_len])]
        real_memory = np.asarray(memory[row, :src_len], np.float64)
        ref = reference_decoder(p["decoder"], attention, real_memory, emb)
        np.testing.assert_allclose(hidden[row, :dec_len], ref, atol=1e-5)


@pytest.mark.parametrize("cell, attention", VARIANTS)
def test_packed_row_equals_examples_alone(cell, attention):
    _, params, apply = model_and_params(cell, attention)
    logits = apply({"params": params}, **canonical_batch())
    np.testing.assert_allclose(logits[0, :3], logits[1, :3], atol=1e-5)
    np.testing.assert_allclose(logits[0, 3:7], logits[2, :4], atol=1e-5)
    # As one segment, b would see a: the check has teeth.
    assert np.abs(np.asarray(logits[4, 3:7]) - np.asarray(logits[0, 3:7])).max() > 1e-2


@pytest.mark.parametrize(
    "cell, attention, copy_source",
    [(*v, False) for v in VARIANTS] + [("lstm", "bahdanau", True), ("gru", "luong", True)],
)
def test_cached_decoding_matches_teacher_forcing(cell, attention, copy_source):
    model, params, apply = model_and_params(cell, attention, copy_source=copy_source)
    batch = canonical_batch()
    full = np.asarray(apply({"params": params}, **batch))
    if copy_source:  # log-probs: every row a distribution (row 5 has no source to copy)
        np.testing.assert_allclose(jax.nn.logsumexp(full, axis=-1), 0.0, atol=1e-5)
    full = full[1:4]  # a, b and c alone
    targets = np.asarray(batch["decoder_inputs"][1:4])
    lengths, prefix, rows = np.asarray([3, 4, 8]), np.asarray(PREFIX), np.arange(3)
    init, step = decode_fns(model)
    # Sources of 4, 3 and 8 tokens; forced decoder prefixes of 2, 1 (just BOS) and 3 tokens,
    # right-padded: the padding moves left and never reaches the carry.
    logits, state = init(params, prompted(batch))
    assert all(leaf.shape[0] == 3 for leaf in jax.tree.leaves(state))  # batch-major, for beams
    np.testing.assert_allclose(logits, full[rows, prefix - 1], atol=1e-5)
    for k in range(T - 1):
        at = prefix + k  # each row's next position; rows past their end get PAD, unchecked
        live = at < lengths
        tokens = np.where(live, targets[rows, np.minimum(at, T - 1)], PAD_ID)
        logits, state = step(params, state, jnp.asarray(tokens))
        np.testing.assert_allclose(np.asarray(logits)[live], full[live, at[live]], atol=1e-5)


@pytest.mark.parametrize("cell, attention", [("lstm", "bahdanau"), ("gru", "luong")])
@settings(max_examples=8, deadline=None)
@given(noise=st.lists(st.integers(0, VOCAB - 1), min_size=2 * 6 * S, max_size=2 * 6 * S))
def test_padding_content_never_reaches_real_positions(cell, attention, noise):
    _, params, apply = model_and_params(cell, attention)
    batch = canonical_batch()
    noise = np.asarray(noise, np.int32).reshape(2, 6, S)
    noisy = dict(batch)  # any ids in every padding slot (segment 0), source and decoder side
    for i, side in enumerate(("inputs", "decoder_inputs")):
        segments = batch[side.replace("decoder_inputs", "decoder") + "_segment_ids"]
        noisy[side] = jnp.where(segments == 0, noise[i], batch[side])
    src_real = np.asarray(batch["inputs_segment_ids"]) != 0
    dec_real = np.asarray(batch["decoder_segment_ids"]) != 0
    np.testing.assert_array_equal(
        np.asarray(encode(apply, params, noisy))[src_real],
        np.asarray(encode(apply, params, batch))[src_real],
    )
    np.testing.assert_array_equal(
        np.asarray(apply({"params": params}, **noisy))[dec_real],
        np.asarray(apply({"params": params}, **batch))[dec_real],
    )


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_attention_is_a_distribution_over_its_segments_real_source_tokens(attention):
    _, params, apply = model_and_params("lstm", attention)
    batch = canonical_batch()
    memory = encode(apply, params, batch)
    weights = np.asarray(apply(
        {"params": params}, memory, batch["inputs_segment_ids"], batch["decoder_inputs"],
        batch["decoder_segment_ids"], method="attention_weights",
    ))
    assert weights.shape == (6, T, S)
    src, dec = np.asarray(batch["inputs_segment_ids"]), np.asarray(batch["decoder_segment_ids"])
    allowed = (dec[:, :, None] == src[:, None, :]) & (src[:, None, :] != 0)
    assert np.all(weights[~allowed] == 0.0) and np.all(weights >= 0.0)
    has_source = allowed.any(axis=-1)  # real target tokens whose segment has a source
    assert has_source[:5].sum() == (dec[:5] != 0).sum() and not has_source[5].any()
    np.testing.assert_allclose(weights.sum(-1)[has_source], 1.0, atol=1e-6)
    # Row 5 has no source at all: zero weights, zero context, finite logits.
    assert np.isfinite(np.asarray(apply({"params": params}, **batch))).all()
    # Not uniform: the scores depend on the decoder state and the source.
    assert np.abs(weights[3] - 1.0 / S).max() > 1e-2


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_zero_context_is_a_source_free_internal_lm(attention):
    _, params, apply = model_and_params("lstm", attention)
    batch = canonical_batch()
    memory = encode(apply, params, batch)
    internal = decode_hidden(apply, params, memory, batch, zero_context=True)
    # The reference: the ordinary decoder over an all-zero memory has context sum_j a_j 0 = 0.
    zero_memory = decode_hidden(apply, params, jnp.zeros_like(memory), batch)
    np.testing.assert_array_equal(internal, zero_memory)
    normal = decode_hidden(apply, params, memory, batch)
    assert np.abs(np.asarray(internal[:5]) - np.asarray(normal[:5])).max() > 1e-2
    # The initial state is zeros, so nothing of the source is left: other sources, same LM.
    other = {**canonical_batch(seed=5), "decoder_inputs": batch["decoder_inputs"]}
    other_memory = encode(apply, params, other)
    np.testing.assert_array_equal(
        internal, decode_hidden(apply, params, other_memory, other, zero_context=True)
    )


@pytest.mark.parametrize("copy_source", [False, True])
def test_zero_context_decoding_follows_the_internal_lm(copy_source):
    # With copy_source too: the internal LM never copies, it is the generator alone.
    model, params, apply = model_and_params("lstm", "bahdanau", copy_source=copy_source)
    batch = canonical_batch()
    internal = decode_hidden(apply, params, encode(apply, params, batch), batch, zero_context=True)
    lm_logits = np.asarray(apply({"params": params}, internal, method="logits_from_hidden"))[1:4]
    init, step = decode_fns(model, zero_context=True)
    targets = batch["decoder_inputs"][1:4]  # a, b and c alone, prompt BOS
    logits, state = init(params, {"inputs": batch["inputs"][1:4], "prompt": targets[:, :1]})
    steps = [logits]
    for t in range(1, 3):  # the shortest target (a) has 3 tokens
        logits, state = step(params, state, targets[:, t])
        steps.append(logits)
    np.testing.assert_allclose(jnp.stack(steps, axis=1), lm_logits[:, :3], atol=1e-5)


def test_beam_size_1_is_greedy_through_a_decode_step():
    model, params, _ = model_and_params("lstm", "luong")
    decoder = seq2seq_decode_step(model)  # the dispatcher's DecodeStep over this module's pair
    batch = canonical_batch()
    prompts = {"inputs": batch["inputs"][1:4], "prompt": jnp.full((3, 1), BOS_ID, jnp.int32)}
    options = dict(max_new_tokens=5, eos_id=None)
    # Wrapped in the tests' jit only for its faster compile (the searches' own jits nest inside).
    ref = jit(lambda p, b: greedy(decoder, p, b, **options))(params, prompts)
    one = jit(lambda p, b: beam_search(decoder, p, b, beam_size=1, **options))(params, prompts)
    np.testing.assert_array_equal(one.tokens[:, 0], ref.tokens[:, 0])
    np.testing.assert_allclose(one.logprobs[:, 0], ref.logprobs[:, 0].sum(-1), atol=1e-4)
    assert len({tuple(t) for t in np.asarray(ref.tokens[:, 0])}) > 1  # the sources matter


@pytest.mark.parametrize("cell, attention", [("lstm", "bahdanau"), ("gru", "luong")])
def test_beam_reordering_of_the_state_reorders_the_rows(cell, attention):
    model, params, _ = model_and_params(cell, attention)
    batch = canonical_batch()
    init, step = decode_fns(model)
    _, state = init(params, prompted(batch))
    tokens = batch["decoder_inputs"][1:4, 3]
    logits, _ = step(params, state, tokens)
    # The rows as 3 beams of one prompt, reordered as beam search does: new beam j takes old
    # beam parents[j] whole (carry, memory, keys, source segment ids).
    parents = jnp.asarray([2, 0, 0])
    gathered = jit(lambda s: gather_beams(s, parents[None], 3))(state)  # one compile, not many
    reordered, _ = step(params, gathered, tokens[parents])
    np.testing.assert_allclose(reordered, logits[parents], atol=1e-6)
    tiled = jax.tree.leaves(jit(lambda s: tile_beams(s, 2))(state))
    for big, small in zip(tiled, jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(big, np.repeat(small, 2, axis=0))


def test_dropout_and_every_parameter_gets_a_gradient():
    model, params, _ = model_and_params("gru", "bahdanau", dropout=0.3)
    batch = canonical_batch()

    @jit
    def loss_and_grads(p, key):
        def loss(p):
            rngs = {"dropout": key}
            logits = model.apply({"params": p}, **batch, deterministic=False, rngs=rngs)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 5])

        return jax.value_and_grad(loss)(p)

    a, grads = loss_and_grads(params, jax.random.key(1))
    b, _ = loss_and_grads(params, jax.random.key(2))
    assert abs(float(a) - float(b)) > 1e-4  # dropout masks differ per key
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.isfinite(g).all() and np.abs(g).max() > 0, jax.tree_util.keystr(path)


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_bf16_compute_traces_with_fp32_params_logits_and_carry(attention):
    # Shapes and dtypes only (eval_shape: nothing compiles); bf16 numerics ride on the layers
    # the RNN LM tests cover, and a dtype clash in the scans fails at trace time.
    model, params, _ = model_and_params("lstm", attention, dtype="bfloat16")
    batch = canonical_batch()
    logits = jax.eval_shape(functools.partial(model.apply, {"params": params}, **batch))
    assert logits.shape == (6, T, VOCAB) and logits.dtype == jnp.float32
    decoder = seq2seq_decode_step(model)
    first, state = jax.eval_shape(lambda p: decoder.init(p, prompted(batch), T), params)
    step_logits, new_state = jax.eval_shape(
        lambda p, s: decoder.step(p, s, jnp.ones((3,), jnp.int32)), params, state
    )
    assert first.dtype == step_logits.dtype == jnp.float32
    assert state["carry"]["c"].dtype == jnp.float32 and state["memory"].dtype == jnp.bfloat16
    assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state) == jax.tree.map(
        lambda a: (a.shape, a.dtype), state
    )
