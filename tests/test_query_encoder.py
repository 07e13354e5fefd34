import math

import numpy as np

from rag.query_encoder import erf


def test_the_float32_erf_is_within_4e7_of_the_exact_one_everywhere():
    x = np.concatenate([np.linspace(-6, 6, 100_001), [0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0]]).astype(np.float32)
    exact = np.array([math.erf(float(v)) for v in x])
    ours = erf(x)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    assert np.abs(ours - exact).max() < 4e-7
    assert ours[x >= 4].min() == np.float32(1.0) and ours[x <= -4].max() == np.float32(-1.0)
    assert np.array_equal(erf(-x), -ours)  # odd, as erf is


def test_erf_keeps_the_shape_of_a_layers_activations_and_leaves_them_unchanged():
    hidden = np.random.default_rng(0).standard_normal((7, 1536)).astype(np.float32)
    before = hidden.copy()
    out = erf(hidden)
    assert out.shape == (7, 1536) and np.array_equal(hidden, before)
