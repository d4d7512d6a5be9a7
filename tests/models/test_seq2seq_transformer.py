"""Transformer encoder-decoder: cached decoding, packing, the internal LM, embeddings, search."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfuse.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from lmfuse.decode import beam_search, greedy, seq2seq_decode_step
from lmfuse.models import build_model, model_defaults, stack_layers
from lmfuse.models.layers import shift_right

# Tiny models: compile time dominates, and LLVM's optimisation level only changes speed (the
# XLA program is the same), so tests compile at level 0, about twice as fast.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

VOCAB = 37
E = 32
# Every forward pass uses these shapes, so each config compiles its forward pass once.
B, S, T = 3, 7, 6
SOURCE_LENGTHS = (7, 4, 2)  # EOS included; the rest of each row is PAD


def tiny_cfg(**overrides):
    c = model_defaults().to_dict()
    c.update(
        name="s2s_transformer", emb_dim=E, num_layers=2, num_encoder_layers=1, num_heads=4,
        mlp_dim=64, max_len=32, dropout=0.0,
    )
    c.update(overrides)
    return c


def sources(seed=0):
    """[B, S] sources of SOURCE_LENGTHS (random ids, then EOS, then PAD) and their segment ids."""
    rng = np.random.RandomState(seed)
    ids = np.zeros((B, S), np.int32)
    for row, n in enumerate(SOURCE_LENGTHS):
        ids[row, : n - 1] = rng.randint(3, VOCAB, n - 1)
        ids[row, n - 1] = EOS_ID
    return jnp.asarray(ids), jnp.asarray(ids != PAD_ID, jnp.int32)


def targets(seed=1):
    return jnp.asarray(np.random.RandomState(seed).randint(3, VOCAB, (B, T)), jnp.int32)


def behind_bos(tokens):
    """Teacher-forcing inputs of unpacked rows: BOS, then all but the last token."""
    return jnp.concatenate([jnp.full((tokens.shape[0], 1), BOS_ID, jnp.int32), tokens[:, :-1]], 1)


def random_params(model, seed=0):
    """Random weights of the model's param tree (no init compile). Large enough that the
    distributions are peaky, so argmax comparisons have no near-ties."""
    boxed = jax.eval_shape(model.init, jax.random.key(0), sources()[0], targets())["params"]
    rng = np.random.RandomState(seed)

    def fill(path, leaf):
        noise = np.asarray(rng.randn(*leaf.shape), np.float32)  # 0-d leaves too
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return jnp.asarray(1.0 + 0.1 * noise)
        return jnp.asarray(0.3 * noise)

    return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(boxed))


class Setup:
    """A model, its params and jitted entry points; cached per config (compiles are slow)."""

    def __init__(self, cfg_items):
        cfg = dict(cfg_items)
        self.model = build_model(cfg, VOCAB)
        if cfg["scan_layers"]:
            flat = setup(**{**cfg, "scan_layers": False, "remat_policy": "none"}).params
            self.params = {
                **flat,
                "encoder": stack_layers(flat["encoder"]),
                "decoder": stack_layers(flat["decoder"]),
            }
        else:
            self.params = random_params(self.model)
        self.apply = jit(
            self.model.apply, static_argnames=("deterministic", "method", "zero_context")
        )

    def logits(self, params, src, src_segs, decoder_inputs):
        """Teacher-forced logits [B, T, V] (one decoder segment, no decoder padding)."""
        return self.apply({"params": params}, src, decoder_inputs, inputs_segment_ids=src_segs)


def setup(**overrides) -> Setup:
    return _setup(tuple(sorted(tiny_cfg(**overrides).items())))


@functools.cache
def _setup(cfg_items):
    return Setup(cfg_items)


def decode_along(s: Setup, params, src, forced, prompt=None, zero_context=False):
    """Logits [B, 1 + N, V] of the DecodeStep's init (prompt: [[BOS]] by default) and then step
    on each of the forced tokens [B, N] in turn."""
    if prompt is None:
        prompt = jnp.full((B, 1), BOS_ID, jnp.int32)
    return _decode_along(s.model, params, src, prompt, forced, zero_context)


@functools.partial(jit, static_argnums=(0, 5))
def _decode_along(model, params, src, prompt, forced, zero_context):
    batch, max_len = {"inputs": src, "prompt": prompt}, prompt.shape[1] + forced.shape[1]
    decoder = seq2seq_decode_step(model, zero_context)
    first, state = decoder.init(params, batch, max_len)

    def step(state, tokens):
        logits, state = decoder.step(params, state, tokens)
        return state, logits

    _, rest = jax.lax.scan(step, state, forced.T)
    return jnp.concatenate([first[:, None], rest.transpose(1, 0, 2)], axis=1)


def zeroed_cross_attention(params):
    """Params whose cross-attention output projections (kernel and bias) are exactly zero."""

    def zero(path, x):
        name = jax.tree_util.keystr(path)
        return jnp.zeros_like(x) if "['cross_attn']['out']" in name else x

    return jax.tree_util.tree_map_with_path(zero, params)


# Between them, both LayerNorm placements and both kinds of position (tests share compiles).
CONFIGS = {
    "pre-learned": dict(norm="pre", positions="learned"),
    "post-rope": dict(norm="post", positions="rope"),
}
configs = pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())


# Forced decoder prefixes of 3, 2 and 1 tokens, right-, left- and right-padded with PAD.
PROMPT_LENGTHS = np.array([3, 2, 1])


def prompted_decoding(s: Setup, params, src, y):
    """Decodes y [B, T] behind the padded prompts (BOS + the first PROMPT_LENGTHS - 1 targets),
    feeding the rest of each row's targets: (logits [B, T, V] where valid[b, t], valid), with
    logits[:, t] aligned to the teacher-forced position t."""
    p = PROMPT_LENGTHS
    prompt = np.full((B, p.max()), PAD_ID, np.int32)
    for row, n in enumerate(p):
        prefix = [BOS_ID, *np.asarray(y[row, : n - 1])]
        if row == 1:
            prompt[row, -n:] = prefix  # left-padded
        else:
            prompt[row, :n] = prefix  # right-padded
    steps = T - p.min()
    cols = (p - 1)[:, None] + np.arange(steps + 1)  # teacher-forced position of each output
    valid = cols < T
    forced = np.asarray(y)[np.arange(B)[:, None], np.minimum(cols[:, :-1], T - 1)]
    logits = np.asarray(decode_along(s, params, src, jnp.asarray(forced), jnp.asarray(prompt)))
    aligned = np.zeros((B, T, logits.shape[-1]), np.float32)
    mask = np.zeros((B, T), bool)
    for row in range(B):
        aligned[row, cols[row][valid[row]]] = logits[row][valid[row]]
        mask[row, cols[row][valid[row]]] = True
    return aligned, mask


@configs
def test_cached_decoding_behind_padded_prompts_equals_teacher_forcing(overrides):
    s = setup(**overrides)
    src, src_segs = sources()
    y = targets()
    full = np.asarray(s.logits(s.params, src, src_segs, behind_bos(y)))
    assert full.shape == (B, T, VOCAB) and full.dtype == np.float32
    decoded, valid = prompted_decoding(s, s.params, src, y)
    assert valid[-1].all()  # the row with the 1-token prompt is decoded at every position
    np.testing.assert_allclose(decoded[valid], full[valid], atol=1e-5)


def test_scanned_rematted_layers_compute_and_decode_the_same_function():
    flat = setup(**CONFIGS["post-rope"])
    s = setup(**CONFIGS["post-rope"], scan_layers=True, remat_policy="full")
    # The stacked unscanned params have exactly the scanned model's param tree.
    boxed = jax.eval_shape(s.model.init, jax.random.key(0), *sources()[:1], targets())["params"]
    assert jax.tree.map(jnp.shape, nn.meta.unbox(boxed)) == jax.tree.map(jnp.shape, s.params)
    src, src_segs = sources()
    y = targets()
    reference = np.asarray(flat.logits(flat.params, src, src_segs, behind_bos(y)))
    scanned = s.logits(s.params, src, src_segs, behind_bos(y))
    np.testing.assert_allclose(scanned, reference, atol=1e-5)
    decoded, valid = prompted_decoding(s, s.params, src, y)
    np.testing.assert_allclose(decoded[valid], reference[valid], atol=1e-5)


def test_packed_row_equals_each_example_alone():
    s = setup(**CONFIGS["post-rope"])
    rng = np.random.RandomState(3)
    src_a, src_b = rng.randint(3, VOCAB, 4), rng.randint(3, VOCAB, 3)  # 4 + 3 = S
    tgt_a, tgt_b = rng.randint(3, VOCAB, 2), rng.randint(3, VOCAB, 3)  # 2 + 3 < T

    def packed(rows, length):
        """(ids, segment ids, positions), each [len(rows), length], of rows of examples."""
        out = np.zeros((3, len(rows), length), np.int32)
        for r, examples in enumerate(rows):
            n = sum(len(e) for e in examples)
            out[0, r, :n] = np.concatenate(examples)
            out[1, r, :n] = np.concatenate([np.full(len(e), i + 1) for i, e in enumerate(examples)])
            out[2, r, :n] = np.concatenate([np.arange(len(e)) for e in examples])
        return jnp.asarray(out)

    # Row 0 packs a and b; rows 1 and 2 hold a and b alone.
    src, src_segs, src_pos = packed([[src_a, src_b], [src_a], [src_b]], S)
    tgt, tgt_segs, tgt_pos = packed([[tgt_a, tgt_b], [tgt_a], [tgt_b]], T)
    out = s.apply(
        {"params": s.params}, src, shift_right(tgt, tgt_pos), inputs_segment_ids=src_segs,
        decoder_segment_ids=tgt_segs, inputs_positions=src_pos, decoder_positions=tgt_pos,
    )
    np.testing.assert_allclose(out[0, :2], out[1, :2], atol=1e-5)
    np.testing.assert_allclose(out[0, 2:5], out[2, :3], atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(pos=st.integers(0, T - 1), token=st.integers(3, VOCAB - 1))
def test_later_decoder_inputs_never_change_earlier_logits(pos, token):
    s = setup()
    src, src_segs = sources()
    dec = behind_bos(targets())
    before = s.logits(s.params, src, src_segs, dec)
    after = s.logits(s.params, src, src_segs, dec.at[:, pos].set(token))
    np.testing.assert_array_equal(np.asarray(before[:, :pos]), np.asarray(after[:, :pos]))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_source_padding_is_invisible_and_real_source_tokens_matter(seed):
    s = setup()
    src, src_segs = sources()
    dec = behind_bos(targets())
    base = s.logits(s.params, src, src_segs, dec)
    rng = np.random.RandomState(seed)
    noise = jnp.asarray(rng.randint(1, VOCAB, (B, S)), jnp.int32)
    # Anything in the padded slots (segment 0) leaves every logit as it was.
    repadded = jnp.where(src_segs == 1, src, noise)
    np.testing.assert_allclose(s.logits(s.params, repadded, src_segs, dec), base, atol=1e-6)
    # A different real token changes every target position of that row: the encoder is wired in.
    row, col = rng.randint(B), rng.randint(SOURCE_LENGTHS[-1])
    changed = src.at[row, col].set(3 + (src[row, col] - 3 + 1) % (VOCAB - 3))
    diff = np.abs(np.asarray(s.logits(s.params, changed, src_segs, dec) - base))
    assert np.all(diff[row].max(axis=-1) > 1e-4)
    assert np.all(np.delete(diff, row, axis=0) == 0)


def test_copy_source_decodes_like_teacher_forcing_and_its_internal_lm_is_the_generator():
    s = setup(**CONFIGS["pre-learned"], copy_source=True)
    src, src_segs = sources()
    y = targets()
    full = np.asarray(s.logits(s.params, src, src_segs, behind_bos(y)))
    np.testing.assert_allclose(jax.nn.logsumexp(full, axis=-1), 0.0, atol=1e-5)
    decoded, valid = prompted_decoding(s, s.params, src, y)
    np.testing.assert_allclose(decoded[valid], full[valid], atol=1e-5)
    # The copy part counts: the generator alone (its vocab softmax) is another distribution.
    variables = {"params": s.params}
    encoded = s.apply(variables, src, src_segs, method="encode")
    hidden = s.apply(variables, encoded, src_segs, behind_bos(y), method="decode_hidden")
    generator = jax.nn.log_softmax(s.apply(variables, hidden, method="logits_from_hidden"))
    assert np.abs(full - np.asarray(generator)).max() > 1e-2
    # The internal LM never copies: it is the zero-context decoder's own vocab distribution.
    hidden = s.apply(variables, None, src_segs, behind_bos(y), zero_context=True,
                     method="decode_hidden")
    internal_lm = s.apply(variables, hidden, method="logits_from_hidden")
    decoded = decode_along(s, s.params, src, y[:, :-1], zero_context=True)
    np.testing.assert_allclose(decoded, internal_lm, atol=1e-5)


def test_zero_context_decodes_like_zero_cross_attention_outputs():
    # Post-LN: the zeroed branch still passes through ln_cross. (Pre-LN: the next test.)
    s = setup(**CONFIGS["post-rope"])
    src, src_segs = sources()
    y = targets()
    zeroed = s.logits(zeroed_cross_attention(s.params), src, src_segs, behind_bos(y))
    normal = s.logits(s.params, src, src_segs, behind_bos(y))
    assert np.abs(np.asarray(zeroed - normal)).max() > 1e-2
    internal_lm = decode_along(s, s.params, src, y[:, :-1], zero_context=True)
    np.testing.assert_allclose(internal_lm, zeroed, atol=1e-5)
    # The internal LM never reads the source.
    other_source = decode_along(s, s.params, sources(seed=5)[0], y[:, :-1], zero_context=True)
    np.testing.assert_array_equal(np.asarray(other_source), np.asarray(internal_lm))


def test_decode_hidden_feeds_the_output_layer_with_and_without_context():
    s = setup()
    src, src_segs = sources()
    dec = behind_bos(targets())
    variables = {"params": s.params}
    encoded = s.apply(variables, src, src_segs, method="encode")
    assert encoded.shape == (B, S, E)

    def logits(**kwargs):
        hidden = s.apply(variables, encoded, src_segs, dec, method="decode_hidden", **kwargs)
        assert hidden.shape == (B, T, E)
        return s.apply(variables, hidden, method="logits_from_hidden")

    np.testing.assert_allclose(logits(), s.logits(s.params, src, src_segs, dec), atol=1e-6)
    zeroed = s.logits(zeroed_cross_attention(s.params), src, src_segs, dec)
    np.testing.assert_allclose(logits(zero_context=True), zeroed, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_shift_right_restarts_behind_bos_in_every_segment(lengths, seed):
    rng = np.random.RandomState(seed)
    examples = [rng.randint(3, VOCAB, n) for n in lengths]
    width = 4 * 6 + 1  # one shape for every example (one compile); always some padding
    pad = width - sum(lengths)
    row = jnp.asarray([np.concatenate([*examples, np.zeros(pad)])], jnp.int32)
    positions = jnp.asarray([np.concatenate([*map(np.arange, lengths), np.zeros(pad)])], jnp.int32)
    shifted = np.asarray(shift_right(row, positions))[0]
    expected = np.concatenate([np.concatenate([[BOS_ID], ex[:-1]]) for ex in examples])
    np.testing.assert_array_equal(shifted[: len(expected)], expected)


def num_params(params):
    return sum(x.size for x in jax.tree.leaves(params))


def test_separate_source_and_target_tables():
    shared, separate = setup(), setup(share_embeddings=False)
    assert "wte" not in shared.params["encoder"]
    assert separate.params["encoder"]["wte"]["embedding"].shape == (VOCAB, E)
    assert num_params(separate.params) - num_params(shared.params) == VOCAB * E
    src, src_segs = sources()

    def encode(s, params):
        return np.asarray(s.apply({"params": params}, src, src_segs, method="encode"))

    noise = jnp.asarray(np.random.RandomState(0).randn(VOCAB, E), jnp.float32)

    def noisy(params, *path):
        """A copy of params with noise added to the embedding table under `path`."""
        params = jax.tree.map(lambda x: x, params)  # copies the nested dicts
        node = params
        for key in path:
            node = node[key]
        node["embedding"] = node["embedding"] + noise
        return params

    # The source side reads only its own table; with sharing, the one table.
    base = encode(separate, separate.params)
    np.testing.assert_array_equal(encode(separate, noisy(separate.params, "wte")), base)
    changed = encode(separate, noisy(separate.params, "encoder", "wte"))
    assert np.abs(changed - base).max() > 1e-3
    base = encode(shared, shared.params)
    assert np.abs(encode(shared, noisy(shared.params, "wte")) - base).max() > 1e-3


def test_untied_output_layer_adds_a_head():
    tied, untied = setup(), setup(tie_embeddings=False)
    assert "lm_head" not in tied.params
    kernel = untied.params["lm_head"]["kernel"]
    assert kernel.shape == (E, VOCAB)
    assert num_params(untied.params) - num_params(tied.params) == E * VOCAB
    hidden = jnp.asarray(np.random.RandomState(0).randn(B, T, E), jnp.float32)
    logits = untied.apply({"params": untied.params}, hidden, method="logits_from_hidden")
    np.testing.assert_allclose(logits, jnp.einsum("bte,ev->btv", hidden, kernel), atol=1e-5)


def test_embeddings_have_perturbation_hooks_for_source_and_target():
    s = setup()
    src, _ = sources()

    def collect():
        variables = {"params": s.params}
        _, mutated = s.model.apply(variables, src, targets(), mutable=["perturbations"])
        return mutated["perturbations"]

    # What adversarial training perturbs: the source and the target embeddings.
    shapes = jax.tree.map(jnp.shape, jax.eval_shape(collect))
    assert shapes == {"encoder": {"embeddings": (B, S, E)}, "decoder": {"embeddings": (B, T, E)}}


def greedy_by_teacher_forcing(s, src, src_segs, steps):
    """Argmax decoding through the full forward pass (PAD excluded, PAD after EOS)."""
    out = np.full((B, steps), PAD_ID, np.int32)
    done = np.zeros(B, bool)
    for t in range(steps):
        logits = np.array(s.logits(s.params, src, src_segs, behind_bos(jnp.asarray(out))))[:, t]
        logits[:, PAD_ID] = -np.inf
        token = np.where(done, PAD_ID, logits.argmax(-1))
        out[:, t] = token
        done |= token == EOS_ID
    return out


def rescored(s, src, src_segs, tokens):
    """Sum of log-probs of tokens [B, T] (up to and including EOS) by the full forward pass."""
    logits = np.array(s.logits(s.params, src, src_segs, behind_bos(tokens)))
    logits[..., PAD_ID] = -np.inf
    logprobs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
    picked = np.take_along_axis(logprobs, np.asarray(tokens)[..., None], axis=-1)[..., 0]
    return np.where(np.asarray(tokens) != PAD_ID, picked, 0.0).sum(-1)


@pytest.mark.parametrize("copy_source", [False, True])
def test_greedy_and_beam_search_through_the_decode_step(copy_source):
    s = setup(copy_source=copy_source)
    src, src_segs = sources()
    decoder = seq2seq_decode_step(s.model)
    batch = {"inputs": src, "prompt": jnp.full((B, 1), BOS_ID, jnp.int32)}
    best = greedy(decoder, s.params, batch, max_new_tokens=T)
    tokens = np.asarray(best.tokens[:, 0])
    np.testing.assert_array_equal(tokens, greedy_by_teacher_forcing(s, src, src_segs, T))
    # One beam is greedy: the state was tiled and gathered correctly.
    one = beam_search(decoder, s.params, batch, beam_size=1, max_new_tokens=T)
    np.testing.assert_array_equal(np.asarray(one.tokens[:, 0]), tokens)
    np.testing.assert_allclose(one.logprobs[:, 0], best.logprobs[:, 0].sum(-1), atol=1e-4)
    np.testing.assert_allclose(one.logprobs[:, 0], rescored(s, src, src_segs, tokens), atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 9))
def test_memory_attention_is_dot_product_attention_in_the_cached_layout(seed, t, s):
    from lmfuse.models.attention import memory_attention

    kq, kk, kv, km = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(kq, (2, t, 3, 4))
    k, v = jax.random.normal(kk, (2, s, 3, 4)), jax.random.normal(kv, (2, s, 3, 4))
    mask = jax.random.bernoulli(km, 0.6, (2, 1, t, s)).at[0, 0, 0].set(False)  # a row sees nothing
    expected = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    out, weights = memory_attention(q, k.transpose(0, 2, 3, 1), v.transpose(0, 2, 3, 1), mask)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)  # uniform where nothing is visible
