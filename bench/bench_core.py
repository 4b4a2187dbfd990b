"""Core benchmark: mixing one in-memory batch, one thread.

    python bench/bench_core.py [--rows 1024] [--repeats 15]

A batch of float32 images 3x32x32 (1024 rows: 12.6 MB) with one-hot targets
for 10 classes. Each repeat runs every contender once, in a shuffled order
(fixed seed), so that noise from other processes hits them all alike and no
contender always runs right after the seed function, whose freed memory makes
the next allocation pay its page faults again; the table gives the median of
the repeats and the ratios to the seed article's function and to
``x.copy()`` of the same bytes. The first line says which loop
``mixup_cli.core`` uses (``KERNEL``: the compiled one, or numpy).

Contenders:

- ``seed function``: the seed article's mixup (``np.random.beta`` +
  ``sklearn.utils.shuffle``; promotes float32 to float64), re-implemented here.
- ``mixup_cli.core.blend.mixup``: the same job (draw lam and partners, gather, mix
  x and y), per-row lam, float32 kept.
- ``mix_gather (x only)``: x alone, partners gathered as it mixes, into a
  preallocated output (what the file engine does per batch).
- ``mix_gather (numpy path)``: the same through the numpy loop, which is used
  where the compiled one is not built or ``MIXUP_CLI_KERNEL=numpy`` is set.
- ``mix_rows (b given)``: the arithmetic alone, partner rows already gathered.
- ``x.copy()``: the memory floor.
- timm ``Mixup(mode='elem')`` and torchvision ``v2.MixUp``, only when those
  packages are importable (they are not dependencies).
"""

from __future__ import annotations

import argparse
import statistics
import time

import installed  # noqa: E402  (first: the installed mixup_cli, not the checkout)
import numpy as np

from mixup_cli.core import blend  # noqa: E402
from mixup_cli.core.blend import mix_gather, mix_rows, mixup  # noqa: E402


def seed_mixup(x, y, batch_size, alpha=0.2):
    """The seed article's function, as published."""
    import sklearn.utils

    l = np.random.beta(alpha, alpha, batch_size)
    x_, y_ = sklearn.utils.shuffle(x, y)
    shape = tuple(-1 if i == 0 else 1 for i in range(len(x.shape)))
    x = l.reshape(shape) * x + (1 - l).reshape(shape) * x_
    shape = tuple(-1 if i == 0 else 1 for i in range(len(y.shape)))
    y = l.reshape(shape) * y + (1 - l).reshape(shape) * y_
    return x, y


def contenders(x, y, n):
    rng = np.random.default_rng(0)
    lam = rng.beta(0.2, 0.2, n)
    perm = rng.permutation(n)
    b = x[perm]
    out = np.empty_like(x)
    lam_w = lam.astype(x.dtype)
    rest_w = (1 - lam_w).astype(x.dtype)
    items = [
        ("seed function", lambda: seed_mixup(x, y, n)),
        ("mixup_cli.core.blend.mixup", lambda: mixup(x, y, 0.2, rng=rng)),
        ("mix_gather (x only)", lambda: mix_gather(x, x, perm, lam, out=out)),
        # the loop mix_gather falls back to, called directly
        ("mix_gather (numpy path)", lambda: blend._mix_numpy(x, x, perm, lam_w, rest_w, out)),
        ("mix_rows (b given)", lambda: mix_rows(x, b, lam, out=out)),
        ("x.copy()", lambda: x.copy()),
    ]
    try:
        import torch

        torch.set_num_threads(1)
        xt = torch.from_numpy(x)
        yt = torch.from_numpy(np.argmax(y, axis=1))
        try:
            from timm.data import Mixup

            timm_mix = Mixup(mixup_alpha=0.2, cutmix_alpha=0.0, mode="elem", num_classes=y.shape[1])
            items.append(("timm Mixup(mode='elem')", lambda: timm_mix(xt.clone(), yt)))
        except ImportError:
            pass
        try:
            from torchvision.transforms import v2

            tv_mix = v2.MixUp(alpha=0.2, num_classes=y.shape[1])
            items.append(("torchvision v2.MixUp", lambda: tv_mix(xt, yt)))
        except ImportError:
            pass
    except ImportError:
        pass
    return items


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    installed.add_arguments(parser)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    installed.check(args)
    print(installed.header(), flush=True)

    rng = np.random.default_rng(1)
    n = args.rows
    x = rng.random((n, 3, 32, 32), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
    items = contenders(x, y, n)
    times = {name: [] for name, _ in items}
    for _name, fn in items:  # warm-up
        fn()
    order = np.random.default_rng(0)
    for _ in range(args.repeats):
        for i in order.permutation(len(items)):
            name, fn = items[i]
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    seed_t, copy_t = med["seed function"], med["x.copy()"]
    print(
        f"batch: {n} x 3x32x32 float32 ({x.nbytes / 1e6:.1f} MB) + one-hot y[10]; "
        f"median of {args.repeats}, one thread; core.KERNEL = {blend.KERNEL!r}"
    )
    print(f"{'contender':<26} {'ms':>8} {'seed / this':>12} {'this / copy':>12}")
    for name, _ in items:
        t = med[name]
        print(f"{name:<26} {t * 1e3:8.2f} {seed_t / t:11.1f}x {t / copy_t:11.2f}x")


if __name__ == "__main__":
    main()
