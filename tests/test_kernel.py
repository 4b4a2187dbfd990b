"""The compiled mixing loop (mixup_cli._kernel) against the numpy loop: same bytes."""

import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mixup_cli.core import blend
from mixup_cli.core.blend import integer_bounds, mix_gather, mix_rows, working_dtype

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORCED_NUMPY = os.environ.get("MIXUP_CLI_KERNEL", "").strip().lower() == "numpy"
needs_kernel = pytest.mark.skipif(blend._kernel is None, reason="mixup_cli._kernel not active")

FLOATS = [np.float32, np.float64]
INTEGERS = [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64, np.uint64]
ROW_SHAPES = [(), (1,), (2,), (3,), (7,), (10,), (17,), (3, 5), (2, 33), (3, 32, 32)]
SPECIAL_LAMS = [0.0, 1.0, 0.5, float(np.nextafter(1.0, 0.0)), 1 - 1e-7, 1 - 1e-9, 1e-7, 1e-300, 0.3]


def weights(lam, dtype):
    lam_w = np.ascontiguousarray(lam, dtype=working_dtype(dtype))
    return lam_w, (1 - lam_w).astype(lam_w.dtype)


def numpy_mix(a, b, index, lam, out=None):
    out = np.empty(a.shape, a.dtype) if out is None else out
    if a.shape[0] == 0:
        return out
    return blend._mix_numpy(a, b, index, *weights(lam, a.dtype), out)


def c_mix(a, b, index, lam, out=None):
    out = np.empty(a.shape, a.dtype) if out is None else out
    assert blend._mix_kernel(a, b, index, *weights(lam, a.dtype), out), "the kernel declined"
    return out


def same(x, y):
    return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")


def test_kernel_is_built_and_active():
    if FORCED_NUMPY:
        pytest.skip("MIXUP_CLI_KERNEL=numpy")
    assert blend.KERNEL == "c", (
        "mixup_cli._kernel is not importable: build it (pip install -e . or python setup.py build_ext --inplace)"
    )


@st.composite
def cases(draw):
    dtype = np.dtype(draw(st.sampled_from(FLOATS + INTEGERS)))
    row_shape = draw(st.sampled_from(ROW_SHAPES))
    n = draw(st.integers(0, 3 if row_shape == (3, 32, 32) else 9))
    if dtype.kind == "f":
        elements = st.floats(width=32 if dtype == np.float32 else 64, allow_nan=True, allow_infinity=True)
    else:
        elements = None  # hypothesis's default covers the whole range, extremes included
    a = draw(hnp.arrays(dtype, (n,) + row_shape, elements=elements))
    gathered = draw(st.booleans())
    if gathered:
        pool = draw(hnp.arrays(dtype, (draw(st.integers(1, 6)),) + row_shape, elements=elements))
        index = np.array(draw(st.lists(st.integers(0, len(pool) - 1), min_size=n, max_size=n)), dtype=np.int64)
    else:
        pool = draw(hnp.arrays(dtype, a.shape, elements=elements))
        index = None
    lam = np.array(
        draw(st.lists(st.sampled_from(SPECIAL_LAMS) | st.floats(0, 1) | st.floats(-2, 3), min_size=n, max_size=n)),
        dtype=np.float64,
    )
    in_place = draw(st.booleans())
    return a, pool, index, lam, in_place


@needs_kernel
@settings(max_examples=examples(150), deadline=None)
@given(case=cases())
def test_kernel_gives_the_numpy_bytes(case):
    a, pool, index, lam, in_place = case
    with np.errstate(all="ignore"):
        expected = numpy_mix(a, pool, index, lam)
        out = a.copy() if in_place else None
        a_in = out if in_place else a
        got = c_mix(a_in, pool, index, lam, out)
        assert same(got, expected)
        if in_place:
            assert got is out
        public = mix_rows(a, pool, lam) if index is None else mix_gather(a, pool, index, lam)
    assert same(public, expected)


@needs_kernel
@pytest.mark.parametrize("dtype", INTEGERS)
def test_integer_extremes_clip_like_numpy(dtype):
    info = np.iinfo(dtype)
    values = [info.min, info.min + 1, -1 if info.min else 0, 0, 1, info.max // 2, info.max - 1, info.max]
    grid = np.array(values, dtype=dtype)
    a = np.repeat(grid, len(grid))[:, None]
    b = np.tile(grid, len(grid))[:, None]
    for lam in [0.0, 1.0, 0.5, 0.3, 0.7, 1e-9, 1 - 1e-9, -0.5, 1.5, 2.0, -1.0]:
        lams = np.full(len(a), lam)
        with np.errstate(all="ignore"):
            assert same(c_mix(a, b, None, lams), numpy_mix(a, b, None, lams)), (dtype, lam)


def test_uint8_rounds_half_to_even_and_clips_at_255():
    a = np.array([[250, 3, 255, 255, 1]], dtype=np.uint8)
    b = np.array([[255, 0, 255, 254, 2]], dtype=np.uint8)
    assert mix_rows(a, b, np.array([0.5])).tolist() == [[252, 2, 255, 254, 2]]
    hi = np.full((64, 3), 255, np.uint8)
    lam = np.linspace(0, 1, 64)
    assert (mix_rows(hi, hi, lam) == 255).all()  # lam*255 + (1-lam)*255 can round past 255


@needs_kernel
def test_bounds_match_integer_bounds():
    # the kernel's clip constants are integer_bounds': at the top a clipped
    # value converts back to the largest value integer_bounds allows
    for dtype in INTEGERS:
        info = np.iinfo(dtype)
        a = np.array([[info.max], [info.min]], dtype=dtype)
        out = c_mix(a, a, None, np.array([1.5, 1.5]))
        lo, hi = integer_bounds(dtype, working_dtype(dtype))
        assert int(out[0, 0]) == int(hi) and int(out[1, 0]) == int(lo), dtype


@needs_kernel
def test_float_nan_and_inf_propagate_like_numpy():
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 3e38, -3e38, 5e-324, 1.7e308]
    for dtype in FLOATS:
        with np.errstate(all="ignore"):
            grid = np.array(special, dtype=dtype)
            a = np.repeat(grid, len(grid))[:, None]
            b = np.tile(grid, len(grid))[:, None]
            for lam in [0.0, 1.0, 0.5, 1e-7]:
                lams = np.full(len(a), lam)
                assert same(c_mix(a, b, None, lams), numpy_mix(a, b, None, lams))


@needs_kernel
def test_in_place_gather_on_a_large_block():
    rng = np.random.default_rng(3)
    own = rng.random((300, 3, 32, 32), dtype=np.float32)
    pool = rng.random((200, 3, 32, 32), dtype=np.float32)
    index = rng.integers(0, 200, 300)
    lam = rng.beta(0.2, 0.2, 300)
    expected = numpy_mix(own, pool, index, lam)
    block = own.copy()
    assert mix_gather(block, pool, index, lam, out=block) is block
    assert same(block, expected)


@needs_kernel
def test_threads_mix_at_once():
    rng = np.random.default_rng(4)
    x = rng.random((256, 3, 32, 32), dtype=np.float32)
    jobs = [(rng.permutation(256), rng.random(256)) for _ in range(8)]
    expected = [numpy_mix(x, x, p, lam) for p, lam in jobs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda job: mix_gather(x, x, job[0], job[1]), jobs))
    assert all(same(g, e) for g, e in zip(got, expected))


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x.astype(np.float16),
        lambda x: x[:, ::2],
        lambda x: np.asfortranarray(x),
        lambda x: x.astype(">f4"),
    ],
    ids=["float16", "strided", "fortran", "big-endian"],
)
def test_fallback_for_unsupported_arrays_matches_the_formula(make):
    rng = np.random.default_rng(5)
    x = make(rng.random((9, 6, 4)))
    lam = rng.random(9)
    partner = rng.permutation(9)
    assert not blend._mix_kernel(x, x, partner, *weights(lam, x.dtype), np.empty(x.shape, x.dtype))
    l = lam.astype(working_dtype(x.dtype))[:, None, None]
    assert np.array_equal(mix_gather(x, x, partner, lam), l * x + (1 - l) * x[partner])


@needs_kernel
def test_kernel_declines_overlap_and_unbounded_weights():
    x = np.arange(40, dtype=np.float32).reshape(8, 5)
    lam_w, rest_w = weights(np.full(8, 0.25), x.dtype)
    assert blend._kernel.mix(x, x.copy(), x, None, lam_w, rest_w, 5) is False  # out is b
    assert blend._kernel.mix(x[1:], x[:-1].copy(), x[:-1], None, lam_w[1:], rest_w[1:], 5) is False
    assert blend._kernel.mix(x, x, x.copy(), None, lam_w, rest_w, 5) is True  # out is a: in place
    ints = np.arange(8, dtype=np.uint8)[:, None]
    for bad in (np.nan, np.inf, 1e38):
        w = np.full(8, bad, np.float32)
        assert blend._kernel.mix(np.empty_like(ints), ints, ints, None, w, w, 1) is False
    with np.errstate(all="ignore"):
        out = mix_rows(ints, ints, np.full(8, np.nan))  # numpy does it instead
        assert same(out, numpy_mix(ints, ints, None, np.full(8, np.nan)))


@needs_kernel
def test_wrong_buffers_raise_instead_of_corrupting():
    mix = blend._kernel.mix
    a = np.ones((4, 3), np.float32)
    out = np.zeros((4, 3), np.float32)
    lam = np.full(4, 0.5, np.float32)
    index = np.array([0, 1, 2, 3], np.int64)
    with pytest.raises(TypeError):
        mix(out, a, a, None, lam, lam)  # argument count
    with pytest.raises(ValueError):
        mix(np.zeros((3, 3), np.float32), a, a, None, lam, lam, 3)  # out too small
    with pytest.raises(ValueError):
        mix(out, a, a[:3], None, lam, lam, 3)  # b too small
    with pytest.raises(ValueError):
        mix(out, a, a, None, lam, lam, 4)  # row size does not fit
    with pytest.raises(ValueError):
        mix(out, a, a, None, lam, lam, -1)
    with pytest.raises(ValueError):
        mix(out, a, a, None, lam, lam[:3], 3)  # lam and rest differ
    with pytest.raises(TypeError):
        mix(out, a, a, None, lam.astype(np.float64), lam, 3)  # wrong working type
    with pytest.raises(TypeError):
        mix(out.astype(np.float64), a, a, None, lam, lam, 3)  # out of another type
    with pytest.raises(TypeError):
        mix(out, a, a, index.astype(np.int32), lam, lam, 3)
    with pytest.raises(TypeError):
        mix(out, a, a, index[:3], lam, lam, 3)
    with pytest.raises(TypeError):
        mix(out.astype(np.float16), a.astype(np.float16), a.astype(np.float16), None, lam, lam, 3)
    with pytest.raises(IndexError):
        mix(out, a, a, np.array([0, 1, 4, 0], np.int64), lam, lam, 3)
    with pytest.raises(IndexError):
        mix(out, a, a, np.array([0, -1, 2, 0], np.int64), lam, lam, 3)
    assert not out.any()  # nothing was written by any failed call
    with pytest.raises((ValueError, BufferError)):
        mix(out, np.ones((4, 6), np.float32)[:, ::2], a, None, lam, lam, 3)  # not contiguous
    readonly = np.zeros((4, 3), np.float32)
    readonly.flags.writeable = False
    with pytest.raises((ValueError, BufferError)):
        mix(readonly, a, a, None, lam, lam, 3)
    with pytest.raises(IndexError):
        mix_gather(a, a, np.array([0, 1, 2, 4]), np.full(4, 0.5))  # checked before mixing, as before


def test_environment_variable_selects_the_numpy_loop():
    code = (
        "import hashlib, numpy as np\n"
        "from mixup_cli.core import blend as core\n"
        "x = np.random.default_rng(6).random((33, 7, 5)).astype(np.float32)\n"
        "out = core.mix_gather(x, x, np.arange(33)[::-1], np.linspace(0, 1, 33))\n"
        "print(core.KERNEL, hashlib.sha256(out.tobytes()).hexdigest())\n"
    )
    env = dict(os.environ, MIXUP_CLI_KERNEL="numpy")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    kernel, digest = result.stdout.split()
    assert kernel == "numpy"
    x = np.random.default_rng(6).random((33, 7, 5)).astype(np.float32)
    out = mix_gather(x, x, np.arange(33)[::-1], np.linspace(0, 1, 33))
    assert hashlib.sha256(out.tobytes()).hexdigest() == digest


@pytest.fixture(params=["c", "numpy"])
def kernel_path(request, monkeypatch):
    """Run a test through the compiled loop and through the numpy loop."""
    if request.param == "c" and blend._kernel is None:
        pytest.skip("mixup_cli._kernel not active")
    if request.param == "numpy":
        monkeypatch.setattr(blend, "_kernel", None)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int64])
def test_gather_in_place_from_its_own_rows(kernel_path, dtype):
    """mix_gather(a, a, idx, lam, out=a): every partner row is read as it was
    before the call, also beyond one internal slice (4096 x 256 float32 is 4 MB)."""
    rng = np.random.default_rng(11)
    a = (rng.random((4100, 256)) * 200).astype(dtype)
    index = rng.integers(0, len(a), len(a)).astype(np.int64)
    lam = rng.random(len(a))
    want = mix_rows(a.copy(), a.copy()[index], lam)
    got = mix_gather(a, a, index, lam, out=a)
    assert got is a
    assert np.array_equal(a, want)


def test_rows_shifted_onto_themselves(kernel_path):
    """out and the inputs overlapping with an offset (out = x[1:], b = x[:-1])."""
    rng = np.random.default_rng(12)
    x = rng.random((5000, 256)).astype(np.float32)
    lam = rng.random(len(x) - 1)
    want = mix_rows(x[1:].copy(), x[:-1].copy(), lam)
    mix_rows(x[1:], x[:-1], lam, out=x[1:])
    assert np.array_equal(x[1:], want)
    y = rng.random((5000, 256)).astype(np.float32)
    partner = y[::-1][1:].copy()
    want = mix_rows(y[1:].copy(), partner, lam)
    mix_rows(y[1:], partner, lam, out=y[:-1])
    assert np.array_equal(y[:-1], want)


# --- which loop runs, and why (core.KERNEL_REASON, mixup --version) ----------


def _package_copy(root, with_kernel: bool):
    """A copy of the package under ``root`` (a folder on sys.path), with or without the compiled loop."""
    import shutil
    from pathlib import Path

    package = Path(blend.__file__).parent.parent  # core/blend.py: the package is two folders up
    built = [p for p in package.iterdir() if p.name.startswith("_kernel.") and p.suffix in (".so", ".pyd")]
    if with_kernel and not built:
        pytest.skip("mixup_cli._kernel is not built here")
    shutil.copytree(package, root / "mixup_cli", ignore=shutil.ignore_patterns("__pycache__", "_kernel.*.so", "*.pyd"))
    if with_kernel:
        for p in built:
            shutil.copy2(p, root / "mixup_cli" / p.name)
    return root


def _version(cwd, *path):
    """``python -S -m mixup_cli --version`` in ``cwd`` with ``path`` (then the
    dependencies) on PYTHONPATH: -S, so no editable install's finder answers."""
    import sysconfig

    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MIXUP_CLI_KERNEL")}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, path), *sorted(deps)])
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "mixup_cli", "--version"], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.slow
def test_version_says_which_loop_runs_and_why(tmp_path):
    """Run from a source tree without the compiled loop while an installed copy
    has it: that tree is imported, numpy's loop runs, and --version says both
    folders (the other copy is not imported in its place)."""
    source = _package_copy(tmp_path / "checkout", with_kernel=False)
    installed = _package_copy(tmp_path / "site", with_kernel=True)
    lines = _version(source, installed)  # the current folder first on sys.path, as from a checkout's root
    assert lines[0] == f"mixup, version {__import__('mixup_cli').__version__}"
    assert lines[1] == (
        f"kernel: numpy (mixup_cli is imported from {source}, a source tree without the compiled loop, "
        f"ahead of the copy in {installed} that has it; run from another folder, "
        "or build it in that tree: python setup.py build_ext --inplace)"
    )
    assert _version(tmp_path, installed)[1].startswith(f"kernel: c (compiled: {installed / 'mixup_cli' / '_kernel'}")
    assert _version(source)[1] == (
        "kernel: numpy (the compiled loop was not built, no C compiler at install; same bytes, slower)"
    )


def test_kernel_reason_names_the_variable():
    env = dict(os.environ, MIXUP_CLI_KERNEL="numpy")
    code = "from mixup_cli.core import blend as core; print(core.KERNEL, '|', core.KERNEL_REASON)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert proc.stdout.strip() == "numpy | MIXUP_CLI_KERNEL=numpy is set", proc.stderr


@pytest.mark.slow
def test_pip_install_then_run_from_the_checkout(tmp_path):
    """The real thing: ``pip install .`` into a fresh virtual environment (its
    dependencies from this one's), then ``import mixup_cli.core`` from the
    checkout's root, which holds no compiled loop, and from elsewhere."""
    import shutil
    import sysconfig
    from pathlib import Path

    checkout = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if os.path.isfile(os.path.join(REPO, name)):
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), checkout / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", checkout],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr
    installed = Path(site)
    code = "import mixup_cli.core.blend as c; print(c.KERNEL); print(c.KERNEL_REASON)"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MIXUP_CLI_KERNEL")}
    here = subprocess.run([python, "-c", code], cwd=checkout, env=env, capture_output=True, text=True)
    kernel, reason = here.stdout.splitlines()
    assert kernel == "numpy" and f"imported from {checkout}," in reason and f"copy in {installed} " in reason
    version = subprocess.run(
        [python, "-m", "mixup_cli", "--version"], cwd=checkout, env=env, capture_output=True, text=True
    )
    assert version.stdout.splitlines()[1] == f"kernel: numpy ({reason})"
    elsewhere = subprocess.run([python, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    kernel, reason = elsewhere.stdout.splitlines()
    assert kernel == "c" and reason.startswith(f"compiled: {installed / 'mixup_cli' / '_kernel'}"), reason
