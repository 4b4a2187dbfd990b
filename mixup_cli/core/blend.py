"""Pure array math for mixup: no I/O, no global random state.

For output row ``i`` with weight ``lam[i]`` and partner row ``j``::

    out[i] = lam[i] * a[i] + (1 - lam[i]) * b[i]        where b[i] = x[j]

``lam`` is broadcast over every non-sample axis. Floating arrays are mixed in
their own dtype (float32 stays float32); integer arrays are mixed in float32
(8- and 16-bit, exact there) or float64 (wider), rounded to nearest and
clipped to their dtype's range, so they never wrap. 64-bit elements of
magnitude 2^49 or more are mixed exactly (``_exact_u64``), since float64
would be off by thousands near 2^63.

The loop runs in the compiled ``mixup_cli._kernel`` (one pass over memory)
where it is built and the arrays suit it, else in numpy; both give the same
bytes. ``KERNEL`` says which is active: ``"c"``, or ``"numpy"`` when the
extension is missing or ``MIXUP_CLI_KERNEL=numpy`` was set at import, and
``KERNEL_REASON`` why, in one line (``mixup --version`` shows both): the
compiled file in use; or that variable; or a build from an older
``_kernel.c``, or one that does not load; or, imported from a source tree
without the compiled loop (run from a checkout after ``pip install .``) while
a copy further on ``sys.path`` has it, both folders (that copy is not
imported in its place); or that none was built.
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np

from mixup_cli.core.errors import ParameterError


def _load_kernel():
    """``(the compiled module or None, why)``."""
    if os.environ.get("MIXUP_CLI_KERNEL", "").strip().lower() == "numpy":
        return None, "MIXUP_CLI_KERNEL=numpy is set"
    try:
        from mixup_cli import _kernel
    except ImportError as exc:
        return None, _why_missing(exc)
    # A build left over from an older _kernel.c may take other arguments.
    if getattr(_kernel, "VERSION", None) != 2:
        return None, f"{_kernel.__file__} was built from an older _kernel.c; rebuild it: pip install ."
    return _kernel, f"compiled: {_kernel.__file__}"


def _compiled_in(folder) -> list:
    """The builds of ``_kernel`` in a package folder, for this interpreter."""
    import importlib.machinery

    return [
        folder / f"_kernel{suffix}"
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if (folder / f"_kernel{suffix}").is_file()
    ]


def _why_missing(exc: ImportError) -> str:
    """Why ``_kernel`` did not import: a build here that does not load, a
    source tree without it ahead of a copy that has it, or none built."""
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent  # the package folder (this is core/blend.py)
    built = _compiled_in(here)
    if built:
        return f"{built[0]} does not load: {exc}"
    for entry in sys.path:
        try:
            other = Path(entry or ".").resolve() / "mixup_cli"
            if other != here and _compiled_in(other):
                return (
                    f"mixup_cli is imported from {here.parent}, a source tree without the compiled "
                    f"loop, ahead of the copy in {other.parent} that has it; run from another folder, "
                    "or build it in that tree: python setup.py build_ext --inplace"
                )
        except (OSError, ValueError):
            continue
    return "the compiled loop was not built, no C compiler at install; same bytes, slower"


_kernel, KERNEL_REASON = _load_kernel()
KERNEL = "numpy" if _kernel is None else "c"
_KERNEL_DTYPES = frozenset(
    np.dtype(t)
    for t in (np.float32, np.float64, np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64, np.uint64)
)

# Rows are mixed in slices of about this many bytes: the three temporaries
# stay in the CPU cache instead of spilling whole-batch arrays to memory, and
# slices are large enough that numpy's per-call cost stays small.
_SLICE_BYTES = 1024 * 1024


# numpy's Beta sampler is accurate (mean and variance as Beta's, within a few
# ulps of 0.5 once the spread is below double precision) from 5e-324 to about
# 9e307, where the sum of its two Gamma draws overflows and every lam becomes
# 0. The accepted range leaves a wide margin on both sides (README: --alpha).
ALPHA_MIN = 1e-300
ALPHA_MAX = 1e300


def check_alpha(alpha: float) -> float:
    """Return alpha as a float, or raise if Beta(alpha, alpha) is undefined
    or outside the range the sampler is accurate in."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ParameterError(f"--alpha must be a number, got {alpha!r}", "--alpha") from None
    if not np.isfinite(value) or value <= 0:
        raise ParameterError(f"--alpha must be a finite number > 0 (Beta(alpha, alpha)), got {alpha!r}", "--alpha")
    if not ALPHA_MIN <= value <= ALPHA_MAX:
        raise ParameterError(
            f"--alpha {alpha!r} is outside [{ALPHA_MIN:g}, {ALPHA_MAX:g}], the range where Beta(alpha, alpha) "
            f"is sampled accurately; above {ALPHA_MAX:g} every lam is 0.5 anyway, below {ALPHA_MIN:g} 0 or 1",
            "--alpha",
        )
    return value


def sample_lam(rng: np.random.Generator, alpha: float, size: int) -> np.ndarray:
    """Draw ``size`` mixing weights from Beta(alpha, alpha) as float64."""
    return rng.beta(alpha, alpha, size=size)


def working_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype arithmetic happens in: the array's own if floating; float32
    for 8- and 16-bit integers, float64 for wider ones (float32 would round
    int32 values and overflow at their maximum)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return dtype
    if dtype.kind in "iu":
        return np.dtype(np.float32 if dtype.itemsize <= 2 else np.float64)
    raise ParameterError(f"cannot mix arrays of dtype {dtype}: supported are float16/32/64 and integer types")


def integer_bounds(dtype: np.dtype, work: np.dtype) -> tuple[float, float]:
    """The dtype's range as values of ``work`` that cast back without wrapping
    (int64's maximum is not a float64: the largest float64 below it is used)."""
    info = np.iinfo(dtype)
    work_type = np.dtype(work).type
    lo, hi = work_type(info.min), work_type(info.max)
    if int(hi) > info.max:
        hi = np.nextafter(hi, work_type(0))
    if int(lo) < info.min:
        lo = np.nextafter(lo, work_type(0))
    return lo, hi


def mix_rows(a: np.ndarray, b: np.ndarray, lam: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Mix row ``i`` of ``a`` with row ``i`` of ``b`` using weight ``lam[i]``.

    ``a`` and ``b`` have the same shape (rows first) and dtype; the result has
    that dtype too. The arithmetic is exactly ``lam*a + (1-lam)*b`` evaluated
    in the working dtype (``lam`` is first rounded to it), so it matches
    ``l = lam.astype(dtype); l*a + (1-l)*b`` bit for bit.
    """
    if a.shape != b.shape:
        raise ValueError(f"row blocks differ in shape: {a.shape} vs {b.shape}")
    return _mix(a, b, None, lam, out)


def mix_gather(
    a: np.ndarray, pool: np.ndarray, index: np.ndarray, lam: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """``mix_rows(a, pool[index], lam, out)`` without materialising ``pool[index]``.

    Partner rows are read where they are as the rows are mixed (the numpy loop
    gathers them slice by slice into a small buffer that stays in cache),
    which saves a full pass over memory. Same result, bit for bit.
    """
    index = np.asarray(index)
    if a.shape[1:] != pool.shape[1:] or a.dtype != pool.dtype:
        raise ValueError(f"row blocks differ: {a.shape} {a.dtype} vs {pool.shape} {pool.dtype}")
    if index.shape != (a.shape[0],):
        raise ValueError(f"index has shape {index.shape}, expected ({a.shape[0]},)")
    if len(index) and (index.min() < 0 or index.max() >= len(pool)):
        raise IndexError(f"partner index out of range for {len(pool)} rows")
    return _mix(a, pool, index, lam, out)


_local = threading.local()


def _scratch(i: int, shape: tuple, dtype) -> np.ndarray:
    """Temporary ``i`` of this thread, kept between calls: a fresh megabyte
    each call would cost page faults comparable to the arithmetic itself."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > 4 * _SLICE_BYTES:  # huge rows: not worth keeping around
        return np.empty(shape, dtype=dtype)
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = [None, None, None]
    if bufs[i] is None or bufs[i].nbytes < nbytes:
        bufs[i] = np.empty(max(nbytes, 1), dtype=np.uint8)
    return bufs[i][:nbytes].view(dtype).reshape(shape)


def _mix(a, b, index, lam, out):
    """The one loop behind mix_rows and mix_gather: the compiled kernel where
    it applies, else numpy (``_mix_numpy``)."""
    lam = np.asarray(lam)
    if lam.shape != (a.shape[0],):
        raise ValueError(f"lam has shape {lam.shape}, expected ({a.shape[0]},)")
    if out is None:
        out = np.empty(a.shape, dtype=a.dtype)
    n = a.shape[0]
    if n == 0:
        return out
    a, b, index = _unalias(a, b, index, out)
    work = working_dtype(a.dtype)
    lam_w = np.ascontiguousarray(lam, dtype=work)
    rest_w = (1 - lam_w).astype(work, copy=False)
    if _kernel is not None and _mix_kernel(a, b, index, lam_w, rest_w, out):
        return out
    return _mix_numpy(a, b, index, lam_w, rest_w, out)


def _same_view(x, y) -> bool:
    """Whether two arrays are the very same elements in the same order
    (each output element then depends only on the input element it replaces)."""
    return (
        x.shape == y.shape
        and x.strides == y.strides
        and x.__array_interface__["data"][0] == y.__array_interface__["data"][0]
    )


def _unalias(a, b, index, out):
    """Inputs the loops may read while ``out`` is written. The loops write
    ``out`` slice by slice, so partner rows (or a shifted ``a``) that share
    memory with ``out`` could be read after they were overwritten: such
    inputs are copied first (only the partner rows used, for a gather)."""
    if not isinstance(out, np.ndarray):
        return a, b, index
    if isinstance(b, np.ndarray) and np.may_share_memory(out, b):
        if index is not None:
            b, index = np.take(b, index, axis=0), None
        elif not _same_view(out, b):
            b = b.copy()
    if isinstance(a, np.ndarray) and np.may_share_memory(out, a) and not _same_view(out, a):
        a = a.copy()
    return a, b, index


def _mix_kernel(a, b, index, lam_w, rest_w, out) -> bool:
    """Mix in one pass in C; False (nothing done) where numpy must do it:
    dtypes it lacks (float16), non-contiguous or overlapping arrays."""
    if not (
        isinstance(a, np.ndarray)
        and isinstance(b, np.ndarray)
        and isinstance(out, np.ndarray)
        and a.dtype in _KERNEL_DTYPES
        and b.dtype == a.dtype
        and out.dtype == a.dtype
        and out.shape == a.shape
        and a.flags.c_contiguous
        and b.flags.c_contiguous
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        return False
    if index is not None:
        index = np.ascontiguousarray(index, dtype=np.int64)
    return _kernel.mix(out, a, b, index, lam_w, rest_w, math.prod(a.shape[1:]))


def _mix_numpy(a, b, index, lam_w, rest_w, out):
    """The numpy loop: rows in cache-sized slices.

    Per slice: expand lam to a contiguous buffer (numpy's broadcast copy is
    fast, while a ufunc broadcasting a per-row scalar pays a per-row cost),
    multiply in place, do the same for ``1 - lam`` and the partner rows, and
    add straight into ``out``. Every value is computed by exactly the same
    float operations as ``l*a + (1-l)*b``, so results are identical.
    """
    n = a.shape[0]
    work = lam_w.dtype
    integer = a.dtype.kind in "iu"
    if integer:
        lo, hi = integer_bounds(a.dtype, work)
    wide = integer and a.dtype.itemsize == 8
    bcast = (-1,) + (1,) * (a.ndim - 1)
    lam_w = lam_w.reshape(bcast)
    rest_w = rest_w.reshape(bcast)

    row_bytes = max(1, int(np.prod(a.shape[1:], dtype=np.int64)) * work.itemsize)
    step = max(1, _SLICE_BYTES // row_bytes)
    shape = (min(step, n),) + a.shape[1:]
    tmp_a = _scratch(0, shape, work)
    tmp_b = _scratch(1, shape, work)
    gathered = _scratch(2, shape, b.dtype) if index is not None else None
    for start in range(0, n, step):
        stop = min(n, start + step)
        k = stop - start
        ta, tb = tmp_a[:k], tmp_b[:k]
        np.copyto(ta, lam_w[start:stop])
        np.multiply(ta, a[start:stop], out=ta, casting="unsafe")
        np.copyto(tb, rest_w[start:stop])
        if index is None:
            rows = b[start:stop]
        else:
            rows = gathered[:k]
            np.take(b, index[start:stop], axis=0, out=rows, mode="clip")  # bounds checked above
        np.multiply(tb, rows, out=tb, casting="unsafe")
        if integer:
            exact = _exact64_slice(a[start:stop], rows, lam_w[start:stop]) if wide else None
            np.add(ta, tb, out=ta)
            np.rint(ta, out=ta)
            np.clip(ta, lo, hi, out=ta)
            np.copyto(out[start:stop], ta, casting="unsafe")
            if exact is not None:
                part = out[start:stop]
                part[np.unravel_index(exact[0], part.shape)] = exact[1]  # out may be any view
        else:
            np.add(ta, tb, out=out[start:stop])
    return out


# 64-bit integers: below 2^49 in magnitude the float64 formula is within 1
# of the exact result (its error is under 2^-51 * max(|a|, |b|) < 0.25 before
# rounding) and is kept; larger values are mixed exactly (_exact_u64).
_BIG = 1 << 49
_SIGN = np.uint64(1 << 63)
_M32 = np.uint64(0xFFFFFFFF)


def _exact64_slice(a, b, lam_w):
    """For one slice of 64-bit integers: (flat indices, exact values) of the
    elements the float formula is not accurate for (a value of magnitude
    2^49 or more, weight in [0, 1]), or None when there are none."""
    big = (a >= _BIG) | (b >= _BIG)
    if a.dtype.kind == "i":
        big |= (a < -_BIG) | (b < -_BIG)
    big &= (lam_w >= 0) & (lam_w <= 1)  # lam_w broadcasts over the row
    where = np.flatnonzero(big)
    if not len(where):
        return None
    av = a.reshape(-1)[where]
    bv = np.ascontiguousarray(b).reshape(-1)[where]
    lv = np.broadcast_to(lam_w, a.shape).reshape(-1)[where]
    if a.dtype.kind == "i":
        value = (_exact_u64(av.view(np.uint64) ^ _SIGN, bv.view(np.uint64) ^ _SIGN, lv) ^ _SIGN).view(np.int64)
    else:
        value = _exact_u64(av, bv, lv)
    return where, value.astype(a.dtype, copy=False)


def _shr128(hi, lo, k):
    """Low 64 bits of (hi*2^64 + lo) >> k, for k in [52, 120]."""
    small = k < 64
    ks = np.minimum(k, 63).astype(np.uint64)
    kb = np.maximum(k - 64, 0).astype(np.uint64)
    return np.where(small, (hi << (np.uint64(64) - ks)) | (lo >> ks), hi >> kb)


def _low_nonzero(hi, lo, k):
    """Whether (hi*2^64 + lo) mod 2^k is not 0, for k in [52, 120]."""
    small = k < 64
    ks = np.minimum(k, 63).astype(np.uint64)
    kb = np.maximum(k - 64, 0).astype(np.uint64)
    low = (lo << (np.uint64(64) - ks)) != 0
    high = (lo != 0) | ((hi & ((np.uint64(1) << kb) - np.uint64(1))) != 0)
    return np.where(small, low, high)


def _exact_u64(a, b, lam):
    """Round half to even of ``lam*a + (1-lam)*b`` exactly, for uint64 ``a``,
    ``b`` and float64 ``lam`` in [0, 1] (1-D arrays): the computation of the
    kernel's ``exact_u64``, in 64-bit words. With ``w = min(lam, 1-lam)``
    (both exact doubles) the value is ``base + w*(other - base)``; ``w = M *
    2^-s`` with a 53-bit ``M``, so the product is at most 117 bits."""
    upper = lam >= 0.5
    w = np.where(upper, 1.0 - lam, lam)
    base = np.where(upper, a, b)
    other = np.where(upper, b, a)
    neg = other < base
    mag = np.where(neg, base - other, other - base)
    f, e = np.frexp(w)
    m = np.ldexp(f, 53).astype(np.uint64)
    s = np.minimum(53 - e.astype(np.int64), 120)  # w <= 0.5: s >= 53
    ml, mh, dl, dh = m & _M32, m >> np.uint64(32), mag & _M32, mag >> np.uint64(32)
    ll, lh, hl, hh = ml * dl, ml * dh, mh * dl, mh * dh
    mid = (lh & _M32) + (hl & _M32) + (ll >> np.uint64(32))
    lo = (ll & _M32) | ((mid & _M32) << np.uint64(32))
    hi = hh + (lh >> np.uint64(32)) + (hl >> np.uint64(32)) + (mid >> np.uint64(32))
    q = _shr128(hi, lo, s)
    round_bit = (_shr128(hi, lo, s - 1) & np.uint64(1)) != 0
    odd = ((base ^ q) & np.uint64(1)) != 0
    q = q + (round_bit & (_low_nonzero(hi, lo, s - 1) | odd)).astype(np.uint64)
    return np.where(neg, base - q, base + q)


def mixup(
    x: np.ndarray,
    y: np.ndarray | None = None,
    alpha: float = 0.2,
    rng: np.random.Generator | int | None = None,
):
    """Mix an in-memory batch, pairing each row with a random row of the batch.

    The in-memory counterpart of ``mixup augment`` for one block: ``rng`` is a
    ``numpy.random.Generator`` or a seed it is made from (never the global
    random state). Returns ``(x_mixed, y_mixed, lam, partner)``; ``y_mixed``
    is None when ``y`` is None. Any batch size works, one row included.
    """
    alpha = check_alpha(alpha)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    x = np.asarray(x)
    n = x.shape[0]
    if y is not None:
        y = np.asarray(y)
        if y.dtype.kind != "f":
            raise ParameterError(
                f"y has dtype {y.dtype}: integer labels are not mixed as numbers; one-hot encode them "
                "first (mixup_cli.targets.encoding.one_hot(y, num_classes)) or pass float targets"
            )
        if y.shape[0] != n:
            raise ValueError(f"x has {n} rows but y has {y.shape[0]}")
    lam = sample_lam(rng, alpha, n)
    partner = rng.permutation(n).astype(np.int64)
    x_mixed = mix_gather(x, x, partner, lam)
    y_mixed = None if y is None else mix_gather(y, y, partner, lam)
    return x_mixed, y_mixed, lam, partner
