"""`lmfuse.decode.topk.top_k` equals `jax.lax.top_k`: values, indices and the order of ties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfuse.decode import topk


def assert_same_as_lax(x: np.ndarray, k: int) -> None:
    want_values, want_ids = jax.lax.top_k(jnp.asarray(x), k)
    values, ids = jax.jit(topk.top_k, static_argnums=1)(jnp.asarray(x), k)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(ids, want_ids)
    assert ids.dtype == jnp.int32


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


@pytest.mark.parametrize("shape,k", [((64, 32000), 8), ((32, 8000), 50), ((2, 4, 8000), 8)])
def test_the_shapes_decoding_uses(shape, k):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert topk.block_size(shape[-1], k) > 1  # the two-pass path, not the fallback
    assert_same_as_lax(x, k)


def test_all_minus_infinity_and_short_rows():
    assert_same_as_lax(np.full((2, 4096), -np.inf, np.float32), 5)
    assert topk.block_size(100, 8) == 0  # too short to gain: lax.top_k itself
    assert_same_as_lax(np.arange(100, dtype=np.float32)[None] % 7, 8)
