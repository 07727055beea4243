"""Recency weights: the pooling definition shared by training and serving."""

import numpy as np

from model_repository.pooling import padded_to_csr, recency_weights


def test_weights_decay_from_the_most_recent_item_and_sum_to_one():
    offsets = np.array([0, 3, 3, 4])  # lists of 3, 0 and 1 items
    weights = recency_weights(offsets, decay=0.5)
    np.testing.assert_allclose(weights[:3], np.array([0.25, 0.5, 1.0]) / 1.75, rtol=1e-6)
    np.testing.assert_allclose(weights[3:], [1.0])


def test_no_items_gives_no_weights():
    assert recency_weights(np.array([0, 0, 0])).shape == (0,)


def test_padded_histories_become_csr_oldest_first():
    offsets, ids = padded_to_csr(np.array([[-1, -1, 4], [1, 2, 3], [-1, -1, -1]]))
    np.testing.assert_array_equal(offsets, [0, 1, 4, 4])
    np.testing.assert_array_equal(ids, [4, 1, 2, 3])
