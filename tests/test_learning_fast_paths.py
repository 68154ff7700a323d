"""Fast paths for the common one-step trajectory must be bit-identical to the
general computation they skip (the reference's float32 operation order)."""

from __future__ import annotations

import numpy as np
import pytest

from sona_store.learning.embedding import fit_width, l2_normalise_rows, trajectory_embeddings


def _general_embeddings(queries, owner, activations, rewards):
    """The general path: steps added in order with np.add.at, divided by W + 1."""
    n, dim = queries.shape
    out = np.array(queries, dtype=np.float32, copy=True)
    weights = np.maximum(rewards.astype(np.float32), np.float32(0.0))
    np.add.at(out, owner, fit_width(activations.astype(np.float32), dim) * weights[:, None])
    sums = np.bincount(owner, weights=weights, minlength=n).astype(np.float32)
    has = sums > 0
    out[has] /= (sums[has] + np.float32(1.0))[:, None]
    return l2_normalise_rows(out)


@pytest.mark.parametrize("seed", range(5))
def test_one_step_embeddings_equal_the_general_path(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n, dim, hidden = (int(x) for x in rng.integers(1, [300, 64, 80]))
        scale = rng.uniform(0.01, 100)
        queries = (rng.standard_normal((n, dim)) * scale).astype(np.float32)
        activations = (rng.standard_normal((n, hidden)) * scale).astype(np.float32)
        rewards = rng.uniform(-1, 2, n)
        rewards[rng.random(n) < 0.2] = 0.0  # no weight: the row is not divided
        owner = np.arange(n)
        fast = trajectory_embeddings(queries, owner, activations, rewards)
        assert np.array_equal(fast, _general_embeddings(queries, owner, activations, rewards))


def test_row_sums_are_sequential_float32_sums():
    """The blocked, transposed reduction adds each row in index order, for
    shapes on both sides of the cumsum threshold and of the block size."""
    from sona_store.learning.signal import ROW_BLOCK, _row_sequential_sums, _sequential_sum

    rng = np.random.default_rng(7)
    order_mattered = False
    rows = [1, 2, 7, 8, 9, 100, ROW_BLOCK - 1, ROW_BLOCK, ROW_BLOCK + 1, 2 * ROW_BLOCK + 7]
    for n in rows:
        for width in (1, 2, 3, 7, 8, 33, 256):
            # Mixed magnitudes, so a different order of additions rounds differently.
            matrix = rng.standard_normal((n, width)) * rng.choice([1e-4, 1.0, 1e4], (n, width))
            matrix = matrix.astype(np.float32)
            expected = _sequential_sum(matrix, axis=1)
            assert np.array_equal(_row_sequential_sums(matrix), expected), (n, width)
            order_mattered |= not np.array_equal(matrix.sum(axis=1), expected)
    assert order_mattered  # numpy's pairwise sum would have failed this test
