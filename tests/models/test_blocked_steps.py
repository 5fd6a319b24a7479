"""Block-by-block array steps of the EASE fit give what the whole-matrix steps give."""

from __future__ import annotations

import numpy as np
import pytest

from bookrec.models.cf import _symmetrize_lower


@pytest.mark.parametrize(("n", "block"), [(1, 256), (7, 3), (9, 3), (600, 256), (257, 256)])
def test_the_lower_triangle_is_mirrored_whatever_the_upper_held(n: int, block: int) -> None:
    rng = np.random.default_rng(n)
    m = rng.standard_normal((n, n)).astype(np.float32)  # the upper triangle is garbage
    want = np.tril(m) + np.tril(m, -1).T
    out = _symmetrize_lower(m, block=block)
    assert out is m  # in place
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(out, out.T)


def test_pruning_in_row_blocks_keeps_what_one_partition_of_the_whole_matrix_keeps() -> None:
    from bookrec.models.cf import _PRUNE_BLOCK, prune_rows

    rng = np.random.default_rng(3)
    w = rng.standard_normal((2 * _PRUNE_BLOCK + 17, 300)).astype(np.float32)
    keep = 25
    idx = np.argpartition(-np.abs(w), keep - 1, axis=1)[:, :keep]  # the whole matrix at once
    want = np.zeros_like(w)
    np.put_along_axis(want, idx, np.take_along_axis(w, idx, axis=1), axis=1)
    np.testing.assert_array_equal(prune_rows(w, keep).toarray(), want)
