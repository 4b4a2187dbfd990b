"""The core mixup math against the reference formula."""

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mixup_cli.core.blend import mix_rows, mixup, sample_lam
from mixup_cli.core.errors import ParameterError


def reference_formula(x, y, lam, partner):
    """The seed article's function with its two random draws passed in."""
    l = lam
    x_, y_ = x[partner], y[partner]
    shape = tuple(-1 if i == 0 else 1 for i in range(len(x.shape)))
    x = l.reshape(shape) * x + (1 - l).reshape(shape) * x_
    shape = tuple(-1 if i == 0 else 1 for i in range(len(y.shape)))
    y = l.reshape(shape) * y + (1 - l).reshape(shape) * y_
    return x, y


@settings(max_examples=examples(60), deadline=None)
@given(
    x=hnp.arrays(
        np.float64, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6), elements=st.floats(-1e6, 1e6)
    ),
    data=st.data(),
)
def test_float64_equals_reference_bit_for_bit(x, data):
    n = x.shape[0]
    y = data.draw(hnp.arrays(np.float64, (n, 3), elements=st.floats(0, 1)))
    lam = data.draw(hnp.arrays(np.float64, (n,), elements=st.floats(0, 1)))
    partner = np.array(data.draw(st.permutations(range(n))), dtype=np.int64)
    ref_x, ref_y = reference_formula(x, y, lam, partner)
    assert np.array_equal(mix_rows(x, x[partner], lam), ref_x)
    assert np.array_equal(mix_rows(y, y[partner], lam), ref_y)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_is_kept_and_close_to_float64_reference(dtype):
    rng = np.random.default_rng(1)
    x = rng.random((37, 3, 5, 2)).astype(dtype)
    lam = rng.beta(0.4, 0.4, 37)
    partner = rng.permutation(37)
    out = mix_rows(x, x[partner], lam)
    assert out.dtype == dtype
    ref, _ = reference_formula(x.astype(np.float64), np.zeros((37, 1)), lam, partner)
    assert np.allclose(out, ref, rtol=np.finfo(dtype).eps * 4, atol=np.finfo(dtype).eps * 4)


def test_large_rows_are_sliced_without_changing_results():
    rng = np.random.default_rng(2)
    x = rng.random((9, 300, 300)).astype(np.float32)  # rows larger than one cache slice
    lam = rng.random(9)
    partner = rng.permutation(9)
    l = lam.astype(np.float32)[:, None, None]
    assert np.array_equal(mix_rows(x, x[partner], lam), l * x + (1 - l) * x[partner])


def test_integer_rows_are_rounded_and_clipped_not_wrapped():
    a = np.array([[250, 3]], dtype=np.uint8)
    b = np.array([[255, 0]], dtype=np.uint8)
    out = mix_rows(a, b, np.array([0.5]))
    assert out.dtype == np.uint8
    assert out.tolist() == [[252, 2]]  # 252.5 and 1.5 rounded half to even
    extreme = mix_rows(np.array([[255]], np.uint8), np.array([[255]], np.uint8), np.array([1.0]))
    assert extreme.tolist() == [[255]]


def test_mixup_uses_the_generator_not_global_state():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.eye(10, dtype=np.float32)
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    a = mixup(x, y, 0.2, rng=np.random.default_rng(5))
    b = mixup(x, y, 0.2, rng=5)
    assert np.array_equal(np.random.get_state()[1], before)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)
    x_m, y_m, lam, partner = a
    assert x_m.dtype == np.float32 and y_m.dtype == np.float32
    assert sorted(partner.tolist()) == list(range(10))
    assert np.allclose(y_m.sum(axis=1), 1, atol=1e-6)


@pytest.mark.parametrize("n", [1, 3, 7])
def test_odd_and_single_row_batches(n):
    x = np.ones((n, 4), dtype=np.float32)
    x_m, y_m, lam, partner = mixup(x, None, 0.2, rng=0)
    assert x_m.shape == (n, 4) and y_m is None and lam.shape == (n,)
    assert np.array_equal(x_m, x)


@pytest.mark.parametrize("alpha", [0, -1, float("nan"), float("inf")])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(ParameterError, match="--alpha"):
        mixup(np.ones((2, 2)), None, alpha, rng=0)


def test_sample_lam_is_beta_shaped():
    lam = sample_lam(np.random.default_rng(0), 0.2, 20000)
    assert lam.dtype == np.float64 and lam.min() >= 0 and lam.max() <= 1
    # Beta(0.2, 0.2) is U-shaped: most mass near the ends, mean 0.5.
    assert abs(lam.mean() - 0.5) < 0.02
    assert ((lam < 0.1) | (lam > 0.9)).mean() > 0.6


@pytest.mark.parametrize("alpha", [1e308, 1.7e308, 1e301, 1e-301, 5e-324])
def test_alpha_outside_the_accurate_range_is_refused(alpha):
    with pytest.raises(ParameterError, match=r"--alpha .*\[1e-300, 1e\+300\]"):
        mixup(np.ones((2, 2)), None, alpha, rng=0)


@pytest.mark.parametrize("alpha", [1e-300, 1e-10, 0.2, 1.0, 1e3, 1e12, 1e300])
def test_lam_follows_beta_at_the_ends_of_the_accepted_range(alpha):
    """Sample mean and variance against Beta(alpha, alpha)'s: 1/2 and 1/(4(2a+1))."""
    n = 100_000
    lam = sample_lam(np.random.default_rng(7), alpha, n)
    assert np.all((lam >= 0) & (lam <= 1))
    var = 1 / (4 * (2 * alpha + 1))
    assert abs(lam.mean() - 0.5) < 5 * np.sqrt(var / n) + 2**-53
    spread = np.sqrt(var)
    if spread > 1e-12:
        assert abs(lam.var() / var - 1) < 0.03
    else:  # below double precision near 0.5: every draw within a few ulps of it
        assert np.abs(lam - 0.5).max() <= max(8 * spread, 2**-52)
    if alpha <= 1e-10:  # nearly all the mass at 0 and 1, half each
        assert np.mean((lam == 0) | (lam == 1)) > 0.999


def test_cli_refuses_huge_alpha_before_writing(run_cli, tmp_path):
    from conftest import make_arrays, write_h5

    x, y = make_arrays(n=12)
    src = write_h5(tmp_path / "in.h5", x=x, y=y)
    result = run_cli("augment", src, tmp_path / "out.h5", "--alpha", "1e308")
    assert result.exit_code == 2
    assert "--alpha" in result.stderr and "1e+300" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"]
