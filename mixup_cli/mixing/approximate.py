"""``--neighbor-index approximate``: the knn pairings' lists from an
inverted-file index (faiss-cpu's ``IndexIVFFlat``, the optional extra
``ann``), for datasets where the exact search (N^2 D) takes too long.

The index: the rows (the same features as the exact search: flattened or
projected) clustered by k-means into ``lists_for(n)`` lists (about 4 sqrt(n)),
trained on a sample of ``_POINTS_PER_LIST`` rows a list drawn by faiss from
its fixed seed ``_KMEANS_SEED``, ``_ITERATIONS`` iterations; each row is
searched in its ``_PROBES`` nearest lists for ``K + 1 + _MARGIN``
candidates, which are re-ranked by their exact float64 distances, ties by
index (``neighbours._ranked``), the K nearest kept. A row whose probed lists
hold fewer than K other rows is searched exactly.

Determinism: faiss's k-means (seeded sampling, each centroid summed in row
order), the assignment of rows to lists and the probes of every query are
each computed alone, so the lists are the same on every run and at every
thread count (``tests/test_neighbours_approximate.py`` checks 1 and 3
threads). They may differ with another faiss release or CPU (its SIMD
kernels round float32 differently), so the library's version is recorded.

Recall: ``measured`` draws a seeded sample of ``SAMPLE_ROWS`` rows (a
function of the row count alone), finds their exact lists (within their
class or cell, as the search did) and records the share of the approximate
lists' entries that are in them (recall@K, ``neighbor_recall``). The run
finds the exact lists by float64 products (``exact_rows``); ``verify`` by
scikit-learn's brute force (``reference_rows``), another path, and its
recall must be the same.
"""

from __future__ import annotations

import math

import numpy as np

from mixup_cli.core import stopping
from mixup_cli.core.errors import ParameterError

LIBRARY = "faiss-cpu"
EXTRA = "pip install 'mixup-cli[ann]'"
# The index's parameters (they decide the lists: recorded in the sidecar).
_PROBES = 8
_ITERATIONS = 10
_POINTS_PER_LIST = 39
_KMEANS_SEED = 1234
# faiss warns (on stderr) when k-means has fewer than 39 rows a list.
_LEAST_PER_LIST = 39
_MARGIN = 8
# Rows searched at once.
_QUERY_ROWS = 4096
# Rows whose recall is measured, and the key of their sample.
SAMPLE_ROWS = 1000
_SAMPLE_KEY = 0x6B6E6E  # "knn"
# Exact lists of the sample: rows compared at once (float64 keys), candidates beyond K + 1.
_CHUNK_ROWS = 16384
_QUERY_BLOCK = 256
_SLACK = 8


def build(reader, x_key: str, k: int, project, classes, label: str, *, reference: bool, version: int, cells=None):
    """``neighbours.build`` with the lists of ``search`` (the same in a run and
    in ``verify``), with their recall measured (``measured``)."""
    from mixup_cli.mixing import neighbours

    load()  # the extra missing: refused before x is read
    index, feats, parts = neighbours.build_lists(
        reader, x_key, k, project, classes, label, search, False, version, cells
    )
    return measured(index, feats, parts, reference)


def load():
    """faiss, or a usage error naming the pip command when the extra is missing."""
    try:
        import faiss
    except ImportError:
        raise ParameterError(
            f"--neighbor-index approximate needs faiss-cpu, which is not installed; install it with {EXTRA}",
            "--neighbor-index",
        ) from None
    return faiss


def library_version() -> str:
    from importlib import metadata

    try:
        return metadata.version(LIBRARY)
    except metadata.PackageNotFoundError:  # faiss built from source
        return str(getattr(load(), "__version__", "unknown"))


def lists_for(n: int) -> int:
    """Lists of the index over ``n`` rows: round(4 sqrt(n)), at most n / 39, at least 1."""
    return max(1, min(round(4 * math.sqrt(n)), n // _LEAST_PER_LIST))


def parameters() -> dict:
    """What decides the lists, as the sidecar records it."""
    return {
        "library": LIBRARY,
        "version": library_version(),
        "index": "IVFFlat",
        "lists": "round(4 sqrt(rows)), at most rows/39",
        "probes": _PROBES,
        "kmeans_iterations": _ITERATIONS,
        "kmeans_points_per_list": _POINTS_PER_LIST,
        "kmeans_seed": _KMEANS_SEED,
        "candidates": f"K + {1 + _MARGIN}, re-ranked exactly",
    }


def search(feats: np.ndarray, k: int, threads: int | None = None) -> np.ndarray:
    """The approximate K nearest other rows of every row (nearest first, ties
    by index), the blocks of queries spread over ``threads`` threads of our
    own (the budget by default), each searching with one OpenMP and one BLAS
    thread (their spinning waits stall a loaded machine, as in
    ``neighbours._search``): the same lists whatever their number."""
    from mixup_cli.core import threads as pools

    faiss = load()
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    n = len(feats)
    table = np.empty((n, k), dtype=np.int64)
    if n == 0:
        return table
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with pools.blas_limited(1):
            index = _index(faiss, feats)
            starts = range(0, n, _QUERY_ROWS)
            workers = min(len(starts), max(1, int(threads or pools.budget())))

            def block(s: int) -> None:
                stopping.check()  # between two pieces of the search
                _search_block(index, feats, k, np.arange(s, min(n, s + _QUERY_ROWS)), table)

            if workers == 1:
                for s in starts:
                    block(s)
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mixup-ann") as pool:
                    for _ in pool.map(block, starts):
                        pass
    finally:
        faiss.omp_set_num_threads(before)
    return table


def _search_block(index, feats: np.ndarray, k: int, rows: np.ndarray, table: np.ndarray) -> None:
    """Rows ``rows``: candidates from the index, re-ranked exactly, into their rows of ``table``."""
    from mixup_cli.mixing.neighbours import _ranked

    n = len(feats)
    _d, cand = index.search(feats[rows], min(n, k + 1 + _MARGIN))
    cand = np.where(cand < 0, rows[:, None], cand).astype(np.int64)  # -1: none found (the row: infinitely far)
    cand, d = _ranked(feats, rows, cand)
    ok = np.isfinite(d[:, k - 1])
    table[rows[ok]] = cand[ok, :k]
    for row in rows[~ok]:  # fewer than K others in the probed lists: every row
        every, _dist = _ranked(feats, np.array([row]), np.arange(n)[None, :])
        table[row] = every[0, :k]


def _index(faiss, feats: np.ndarray):
    n, width = feats.shape
    lists = lists_for(n)
    quantizer = faiss.IndexFlatL2(width)
    index = faiss.IndexIVFFlat(quantizer, width, lists)
    clustering = faiss.Clustering(width, lists)
    clustering.seed = _KMEANS_SEED
    clustering.niter = _ITERATIONS
    clustering.max_points_per_centroid = _POINTS_PER_LIST
    clustering.min_points_per_centroid = 1  # only decides faiss's warning on stderr (small classes, cells)
    clustering.verbose = False
    clustering.train(feats, quantizer)
    index.is_trained = True
    index.add(feats)
    index.nprobe = min(_PROBES, lists)
    return index


def sample_rows(n: int) -> np.ndarray:
    """The rows whose recall is measured: a seeded sample (sorted), a function of ``n`` alone."""
    if n <= SAMPLE_ROWS:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([_SAMPLE_KEY, n])
    return np.sort(rng.choice(n, SAMPLE_ROWS, replace=False)).astype(np.int64)


def measured(index, feats: np.ndarray, cells: np.ndarray | None, reference: bool):
    """``index`` (a ``NeighbourIndex`` of approximate lists) with what the
    sidecar records: the index's parameters and its recall@K on the sample,
    each sampled row's list compared with its exact list among the rows of
    its cell (``cells``: class or group code of every row; None: all rows),
    found by ``exact_rows`` (a run) or ``reference_rows`` (``verify``)."""
    import dataclasses

    hits, total = recall(feats, index.table, index.counts, cells, reference_rows if reference else exact_rows)
    record = {
        "neighbor_index_parameters": parameters(),
        "neighbor_recall": round(hits / total, 6) if total else 1.0,
        "neighbor_recall_sample": {"rows": int(len(sample_rows(len(feats)))), "entries": total, "found": hits},
    }
    return dataclasses.replace(index, approximate=record)


def recall(feats, table, counts, cells, exact) -> tuple[int, int]:
    """``(found, entries)``: of the sampled rows' list entries, those in the exact lists."""
    n = len(feats)
    rows = sample_rows(n)
    if cells is None:
        parts = [(np.arange(n, dtype=np.int64), rows)]
    else:
        cells = np.asarray(cells)
        order = np.argsort(cells, kind="stable")
        sorted_cells = cells[order]
        parts = []
        for code in np.unique(cells[rows]):
            lo = np.searchsorted(sorted_cells, code, side="left")
            hi = np.searchsorted(sorted_cells, code, side="right")
            parts.append((np.sort(order[lo:hi]).astype(np.int64), rows[cells[rows] == code]))
    found = entries = 0
    for members, queries in parts:
        length = min(table.shape[1], len(members) - 1)
        if length < 1:
            continue
        local = np.searchsorted(members, queries)
        truth = members[exact(np.ascontiguousarray(feats[members]), local, length)]
        listed = table[queries, :length]
        found += int(sum(len(np.intersect1d(a, b)) for a, b in zip(listed, truth)))
        entries += length * len(queries)
    return found, entries


def exact_rows(feats: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The exact K nearest other rows of ``queries`` (by exact float64
    distance, then index): float64 products of the centred rows propose
    candidates, re-ranked exactly; a row whose K-th distance is not clearly
    below every left-out row's key is compared with every row."""
    from mixup_cli.mixing.neighbours import _ranked

    n = len(feats)
    m = min(n, k + 1 + _SLACK)
    mean = feats.mean(axis=0, dtype=np.float64)
    sq = np.empty(n)
    for s in range(0, n, _CHUNK_ROWS):
        c = feats[s : s + _CHUNK_ROWS].astype(np.float64) - mean
        sq[s : s + _CHUNK_ROWS] = np.einsum("ij,ij->i", c, c)
    top = float(sq.max())
    out = np.empty((len(queries), k), dtype=np.int64)
    for qs in range(0, len(queries), _QUERY_BLOCK):
        stopping.check()
        rows = queries[qs : qs + _QUERY_BLOCK]
        cand, keys = _proposed(feats, mean, sq, rows, m + 1)
        nxt = keys[:, m] if m < n else np.full(len(rows), np.inf)
        cand, d = _ranked(feats, rows, cand[:, :m])
        # float64 products of centred rows: each key within 1e-9 (|a|^2 + max |b|^2) of the exact distance - |a|^2.
        ok = d[:, k - 1] < nxt + sq[rows] - 1e-9 * (sq[rows] + top)
        out[qs : qs + len(rows)][ok] = cand[ok, :k]
        for i in np.flatnonzero(~ok):
            every, _dist = _ranked(feats, rows[i : i + 1], np.arange(n)[None, :])
            out[qs + i] = every[0, :k]
    return out


def _proposed(feats, mean, sq, rows, m) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``rows``, the ``m`` rows of least key ``|b|^2 - 2 a.b`` (centred, float64), sorted by key."""
    n = len(feats)
    q = feats[rows].astype(np.float64) - mean
    best_rows = np.empty((len(rows), 0), dtype=np.int64)
    best_keys = np.empty((len(rows), 0))
    for s in range(0, n, _CHUNK_ROWS):
        block = feats[s : s + _CHUNK_ROWS].astype(np.float64) - mean
        keys = sq[s : s + len(block)][None, :] - 2 * (q @ block.T)
        take = min(m, keys.shape[1])
        part = np.argpartition(keys, take - 1, axis=1)[:, :take] if take < keys.shape[1] else np.argsort(keys, axis=1)
        best_rows = np.concatenate([best_rows, part + s], axis=1)
        best_keys = np.concatenate([best_keys, np.take_along_axis(keys, part, axis=1)], axis=1)
        if best_rows.shape[1] > m:
            keep = np.argpartition(best_keys, m - 1, axis=1)[:, :m]
            best_rows = np.take_along_axis(best_rows, keep, axis=1)
            best_keys = np.take_along_axis(best_keys, keep, axis=1)
    order = np.lexsort((best_rows, best_keys), axis=-1)
    return np.take_along_axis(best_rows, order, axis=1), np.take_along_axis(best_keys, order, axis=1)


def reference_rows(feats: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """``exact_rows`` by another path (``verify``'s): scikit-learn's brute
    force proposes candidates, re-ranked exactly; a row is asked again with
    twice as many until every row left out is provably farther."""
    from sklearn.neighbors import NearestNeighbors

    from mixup_cli.core import threads as pools
    from mixup_cli.mixing.neighbours import _TOLERANCE, _ranked

    n = len(feats)
    out = np.empty((len(queries), k), dtype=np.int64)
    with pools.blas_limited(None):
        search = NearestNeighbors(algorithm="brute").fit(feats)
        sq = np.einsum("ij,ij->i", feats.astype(np.float64), feats.astype(np.float64))
        top = float(sq.max())
        pending, m = np.arange(len(queries)), min(n, k + 1 + _SLACK)
        while len(pending):
            stopping.check()
            rows = queries[pending]
            cand = search.kneighbors(feats[rows], n_neighbors=m, return_distance=False).astype(np.int64)
            cand, d = _ranked(feats, rows, cand)
            if m < n:
                finite = np.where(np.isfinite(d), d, -np.inf).max(axis=1)
                ok = d[:, k - 1] < finite - 2 * _TOLERANCE * (sq[rows] + top)
            else:
                ok = np.ones(len(rows), dtype=bool)
            out[pending[ok]] = cand[ok, :k]
            pending, m = pending[~ok], min(n, 2 * m)
    return out
