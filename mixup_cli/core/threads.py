"""The thread budget, and BLAS/OpenMP thread pools held to it.

The library calls BLAS only to find neighbours (``neighbours``: the products
of the exact search, the projection's fit and transform). Left alone, a BLAS
pool starts one thread per core beside the run's own threads (the input's
hashing, a writer, other processes' work on a shared machine), and the
threads then fight for the cores: one ``partial_fit`` of 256 x 3072 rows took
1.33 s with two BLAS threads and 0.17 s with one on a loaded two-core
machine. ``blas_limited`` holds every BLAS and OpenMP pool of the process
(``threadpoolctl``, which scikit-learn already depends on) to the budget for
as long as it lasts; ``threadpoolctl`` is imported only then.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def budget() -> int:
    """The cores this process may run on (its CPU affinity, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@contextmanager
def blas_limited(threads: int | None = None) -> Iterator[None]:
    """BLAS and OpenMP pools at most ``threads`` threads (the budget when
    None) inside the block; as they were after it."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=max(1, int(threads or budget()))):
        yield
