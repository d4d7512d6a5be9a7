"""`lmfuse.decode.topk.top_k` equals `jax.lax.top_k`: values, indices and the order of ties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfuse.decode import topk


@pytest.fixture
def short_rows_take_the_two_passes(monkeypatch):
    """The tests' rows are short; the cost rule would send them to lax.top_k itself."""
    monkeypatch.setattr(topk, "MIN_ENTRIES", 0)


def assert_same_as_lax(x: np.ndarray, k: int) -> None:
    want_values, want_ids = jax.lax.top_k(jnp.asarray(x), k)
    values, ids = jax.jit(topk.top_k, static_argnums=1)(jnp.asarray(x), k)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(ids, want_ids)
    assert ids.dtype == jnp.int32


@pytest.mark.usefixtures("short_rows_take_the_two_passes")
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 3), width=st.integers(64, 3000), k=st.integers(1, 12),
       levels=st.sampled_from([3, 50, 0]), neg_inf=st.floats(0.0, 0.5), seed=st.integers(0, 99))
def test_equals_lax_top_k(rows, width, k, levels, neg_inf, seed):
    """Many ties (few distinct levels), -inf entries, widths that are no multiple of the block."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, width)).astype(np.float32)
    if levels:
        x = np.round(x * levels / 4)
    x[rng.random(x.shape) < neg_inf] = -np.inf
    assert_same_as_lax(x, min(k, width))


@pytest.mark.usefixtures("short_rows_take_the_two_passes")
@pytest.mark.parametrize("shape,k", [((64, 32000), 8), ((8, 32000), 16), ((2, 4, 8000), 8)])
def test_the_shapes_beam_search_uses(shape, k):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert topk.block_size(int(np.prod(shape[:-1])), shape[-1], k) > 1  # two passes
    assert_same_as_lax(x, k)


@pytest.mark.usefixtures("short_rows_take_the_two_passes")
def test_all_minus_infinity_and_short_rows():
    assert_same_as_lax(np.full((2, 4096), -np.inf, np.float32), 5)
    assert topk.block_size(4, 100, 8) == 0  # too short to gain: lax.top_k itself
    assert_same_as_lax(np.arange(100, dtype=np.float32)[None] % 7, 8)


def test_the_cost_rule_keeps_lax_top_k_where_it_is_cheaper():
    assert topk.block_size(64, 32000, 8) == 64  # beam search, 64 prompts x 4 beams
    assert topk.block_size(1, 8000, 8) == 0  # one row
    assert topk.block_size(32, 8000, 50) == 0  # sampling's top-k 50
