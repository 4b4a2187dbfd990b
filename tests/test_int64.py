"""64-bit integers are mixed within 1 of the exact result over their whole
range (README: integer output), on the C and numpy paths alike, byte for byte."""

from fractions import Fraction

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from mixup_cli.core import blend
from mixup_cli.core.blend import mix_gather, mix_rows, working_dtype

needs_kernel = pytest.mark.skipif(blend._kernel is None, reason="mixup_cli._kernel not active")

RANGES = {np.int64: (-(2**63), 2**63 - 1), np.uint64: (0, 2**64 - 1)}


def extremes(dtype):
    lo, hi = RANGES[dtype]
    near = st.one_of(
        st.integers(lo, lo + 4096),
        st.integers(hi - 4096, hi),
        st.integers(-(2**49) - 64, -(2**49) + 64).filter(lambda v: v >= lo),
        st.integers(2**49 - 64, 2**49 + 64),
        st.integers(2**62 - 2**40, 2**62 + 2**40),
        st.integers(-4096, 4096).filter(lambda v: v >= lo),
    )
    return st.one_of(near, st.integers(lo, hi))


LAMS = st.one_of(
    st.sampled_from(
        [
            0.0,
            1.0,
            0.5,
            1e-300,
            5e-324,
            0.25,
            0.75,
            float(np.nextafter(0.5, 0)),
            float(np.nextafter(0.5, 1)),
            float(np.nextafter(1.0, 0)),
            1 - 1e-9,
            1e-9,
        ]
    ),
    st.floats(0, 1),
)


def exact_round(a, b, lam):
    """round(lam*a + (1-lam)*b) in rational arithmetic, for the float64 lam used."""
    l = Fraction(lam)
    return round(l * a + (1 - l) * b)  # Fraction rounds half to even


def mix_both(a, b, lam):
    """Numpy path and (where built) C path: the same bytes."""
    lam_w = np.ascontiguousarray(lam, dtype=working_dtype(a.dtype))
    rest_w = (1 - lam_w).astype(lam_w.dtype)
    out_np = blend._mix_numpy(a, b, None, lam_w, rest_w, np.empty_like(a))
    if blend._kernel is not None:
        out_c = np.empty_like(a)
        assert blend._mix_kernel(a, b, None, lam_w, rest_w, out_c)
        assert out_c.tobytes() == out_np.tobytes()
    return out_np


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
@settings(max_examples=examples(120), deadline=None)
@given(data=st.data())
def test_within_one_of_exact_over_the_whole_range(dtype, data):
    n = data.draw(st.integers(1, 6))
    cols = data.draw(st.integers(1, 4))
    elems = extremes(dtype)
    a = np.array(data.draw(st.lists(elems, min_size=n * cols, max_size=n * cols)), dtype=dtype).reshape(n, cols)
    b = np.array(data.draw(st.lists(elems, min_size=n * cols, max_size=n * cols)), dtype=dtype).reshape(n, cols)
    lam = np.array(data.draw(st.lists(LAMS, min_size=n, max_size=n)), dtype=np.float64)
    out = mix_both(a, b, lam)
    for i in range(n):
        for k in range(cols):
            want = exact_round(int(a[i, k]), int(b[i, k]), float(lam[i]))
            assert abs(int(out[i, k]) - want) <= 1, (a[i, k], b[i, k], lam[i], out[i, k], want)
            if max(abs(int(a[i, k])), abs(int(b[i, k]))) >= 2**49:
                # beyond the float formula's range the result is the exact rounding
                assert int(out[i, k]) == want


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_extremes_exactly(dtype):
    lo, hi = RANGES[dtype]
    vals = [lo, lo + 1, hi - 1, hi, 2**62 + 1, 2**49, 2**49 - 1, 0, 1] + (
        [-(2**62) - 1, -1] if lo < 0 else [2**63, 2**64 - 3725]
    )
    pairs = [(x, y) for x in vals for y in vals]
    a = np.array([p[0] for p in pairs], dtype=dtype)
    b = np.array([p[1] for p in pairs], dtype=dtype)
    for lam_value in (0.0, 1.0, 0.5, 0.3, 1e-300, float(np.nextafter(1.0, 0)), 0.7):
        lam = np.full(len(a), lam_value)
        out = mix_both(a, b, lam)
        for x, y, o in zip(a.tolist(), b.tolist(), out.tolist()):
            want = exact_round(x, y, lam_value)
            assert abs(o - want) <= 1
            if max(abs(x), abs(y)) >= 2**49:
                assert o == want


def test_gather_and_in_place_agree_with_plain_mixing():
    rng = np.random.default_rng(5)
    a = rng.integers(-(2**63), 2**63 - 1, (40, 3), dtype=np.int64, endpoint=True)
    pool = rng.integers(-(2**63), 2**63 - 1, (9, 3), dtype=np.int64, endpoint=True)
    index = rng.integers(0, 9, 40).astype(np.int64)
    lam = rng.random(40)
    want = mix_rows(a, pool[index], lam)
    assert np.array_equal(mix_gather(a, pool, index, lam), want)
    inplace = a.copy()
    mix_gather(inplace, pool, index, lam, out=inplace)
    assert np.array_equal(inplace, want)
    for i in range(40):
        for k in range(3):
            assert int(want[i, k]) == exact_round(int(a[i, k]), int(pool[index[i], k]), float(lam[i]))


def test_small_values_keep_the_float_formula_bytes():
    """Below 2^49 the result is the float64 formula's, as before (reproducibility)."""
    rng = np.random.default_rng(1)
    a = rng.integers(-(2**49) + 1, 2**49 - 1, 5000, dtype=np.int64)
    b = rng.integers(-(2**49) + 1, 2**49 - 1, 5000, dtype=np.int64)
    lam = rng.random(5000)
    old = np.rint(lam * a.astype(np.float64) + (1 - lam) * b.astype(np.float64)).astype(np.int64)
    assert np.array_equal(mix_rows(a, b, lam), old)


def test_weights_outside_unit_interval_still_clip():
    a = np.array([2**62, -(2**62)], np.int64)
    b = np.array([2**63 - 1, -(2**63)], np.int64)
    out = mix_both(a, b, np.array([-1.0, -1.0]))
    assert out.tolist() == [2**63 - 1024, -(2**63)]


def test_non_contiguous_arrays_take_the_same_exact_path():
    rng = np.random.default_rng(9)
    a = rng.integers(0, 2**64 - 1, (30, 6), dtype=np.uint64, endpoint=True)
    b = rng.integers(0, 2**64 - 1, (30, 6), dtype=np.uint64, endpoint=True)
    lam = rng.random(30)
    out = np.zeros((30, 6), np.uint64)
    mix_rows(a[:, ::2], b[:, 1::2], lam, out=out[:, ::2])
    assert np.array_equal(out[:, ::2], mix_rows(np.ascontiguousarray(a[:, ::2]), np.ascontiguousarray(b[:, 1::2]), lam))
    assert not out[:, 1::2].any()
    for i in range(30):
        for k in range(3):
            assert int(out[i, 2 * k]) == exact_round(int(a[i, 2 * k]), int(b[i, 2 * k + 1]), float(lam[i]))
