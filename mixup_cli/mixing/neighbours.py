"""Nearest-neighbour partners, for ``--pairing knn`` and ``knn-within-class``.

Every row gets the list of its ``K`` nearest other rows (Euclidean, in the
space of its flattened x, or of a principal-component projection of it to
``D`` dimensions); a task then draws each row's partner uniformly from its
list, keyed by ``(seed, copy, block)`` like the class pairings, and reads the
partners by index. The lists are a function of the data alone, so the output
does not depend on the batch size or the engine.

Exactness: the lists are those of a float64 brute force (``_exact``'s
distances between the float32 feature rows), ties by row index, whatever
the BLAS build or thread count. ``neighbour_table`` (the run's search) finds
them by blocked float32 products through BLAS and re-ranks the few
candidates exactly, with a proven bound on the products' error deciding
when a row needs more candidates. ``reference_table`` (``verify``'s, by
another path): scikit-learn's ``NearestNeighbors`` (brute force) proposes
candidates, their distances are computed again exactly, and a list is kept
only when every row left out is provably farther than its K-th neighbour
(the search is asked again with twice as many candidates until it is).

Memory while the index is built: the features, ``N x D x 4`` bytes (D the
row width, or the projection's dimension), twice (as read, and centred with
a column of norms), plus the search's blocks (``_BLOCK_BYTES``, 64 MiB, for all
threads; ``reference_table``: scikit-learn's ``working_memory``, 1 GiB by
default); while the run lasts,
the neighbour table, ``N x K x 8`` bytes. The projection (plan version 3) is
fitted on a seeded sample of at most 64 MiB of rows gathered in one pass
over x (randomized PCA, float32), and x is read a second time to project it;
plan versions 1 and 2 fitted an IncrementalPCA in that pass (``partial_fit``
per piece of 256 rows, or 8 D, at most 16 MiB). scikit-learn is imported only here, and
only when one of these pairings is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixup_cli.core import stopping
from mixup_cli.core.errors import InputError, ParameterError

# x is read in contiguous pieces of about this many bytes (as float64).
_READ_BYTES = 16 * 1024 * 1024
# Rows per partial_fit of the projection (at least 8 D).
_FIT_ROWS = 256
# Bytes of candidate rows gathered at once to compute exact distances.
_EXACT_BYTES = 64 * 1024 * 1024
# Rows queried at once, and at most this many candidates in all.
_QUERY_ROWS = 4096
_QUERY_CANDIDATES = 1 << 22
# Candidates beyond self and the K neighbours, so that ties at the K-th
# distance are usually seen in the first query.
_SLACK = 8
# A candidate search's distances may be off by this much, relative to the
# squared norms involved: a row left out must be farther by more than that.
_TOLERANCE = 1e-4


@dataclass(frozen=True, eq=False)
class NeighbourIndex:
    """``table[i]``: the K nearest other rows of row i, nearest first."""

    table: np.ndarray  # (N, K) int64
    # What the sidecar records of the projection (plan version 3: the sample's
    # rows and the share of its variance kept; 2: rows per partial_fit).
    projection: dict | None = None
    # --groups: how many of ``table[i]``'s entries are row i's list (its cell's
    # other rows when it has fewer than K + 1; 0: alone); None: all K.
    counts: np.ndarray | None = None
    # --neighbor-index approximate: what the sidecar records of the index and
    # its recall (``approximate.measured``); None: exact lists.
    approximate: dict | None = None

    @property
    def project_batch_rows(self) -> int | None:
        return (self.projection or {}).get("project_batch_rows")

    @property
    def n_rows(self) -> int:
        return len(self.table)

    @property
    def k(self) -> int:
        return self.table.shape[1]

    def draw_partners(self, rng: np.random.Generator, start: int, stop: int) -> np.ndarray:
        pick = rng.integers(0, self.k, stop - start)
        return self.table[np.arange(start, stop), pick].astype(np.int64)

    def draw_in_cells(self, rng: np.random.Generator, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """--groups: a partner uniform over each row's list (``counts`` long),
        and which rows are alone (an empty list: paired with themselves)."""
        rows = np.arange(start, stop)
        counts = self.table.shape[1] if self.counts is None else self.counts[start:stop]
        pick = rng.integers(0, np.maximum(counts, 1), stop - start)
        alone = np.asarray(counts) == 0
        partner = self.table[rows, np.where(alone, 0, pick)].astype(np.int64)
        partner[alone] = rows[alone]
        return partner, np.broadcast_to(alone, rows.shape).copy()

    @property
    def short_rows(self) -> int:
        """--groups: rows whose list is shorter than K (their cell has K rows or fewer)."""
        return 0 if self.counts is None else int(np.sum(self.counts < self.table.shape[1]))


def _pieces(n: int, step: int, least: int = 1) -> list[tuple[int, int]]:
    """Contiguous ranges of ``step`` rows; the last one merged into the one
    before when shorter than ``least`` (partial_fit needs D rows a piece)."""
    bounds = [(s, min(n, s + step)) for s in range(0, n, step)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < least:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def features(
    reader, key: str, project: int | None = None, label: str = "x", version: int = 3
) -> tuple[np.ndarray, dict | None]:
    """Rows of ``key`` flattened to float32, or projected to ``project``
    dimensions; and what the sidecar records of the projection (None
    without). Plan version 3: randomized PCA fitted on a seeded sample
    (``_fit_randomized``); 1 and 2: an IncrementalPCA fitted in one pass
    (``project_batch_rows`` rows per ``partial_fit``). The fit and the
    transform run with one BLAS thread, so their bytes do not depend on the
    thread count."""
    spec = reader.spec(key)
    n = spec.rows
    width = int(np.prod(spec.row_shape, dtype=np.int64)) if spec.row_shape else 1
    if width == 0:
        raise InputError(
            f"{reader.path}['{key}']: its rows hold no values (shape {spec.shape}), so no distance "
            "can pair them; use another --pairing or an x with values"
        )
    step = max(1, _READ_BYTES // (8 * width))

    def piece(s, e):
        stopping.check()  # between two pieces of the pass (reading, fitting, projecting)
        return np.asarray(reader.read(key, s, e), dtype=np.float64).reshape(e - s, width)

    if project is None:
        out = np.empty((n, width), dtype=np.float32)
        for s, e in _pieces(n, step):
            out[s:e] = piece(s, e)
        return out, None
    d = int(project)
    if d > width or d > n:
        raise ParameterError(
            f"--project {d}: {label} has {n} rows of {width} values; the projection needs at most "
            f"{min(width, n)} dimensions",
            "--project",
        )
    from mixup_cli.core import threads

    with threads.blas_limited(1):
        if version >= 3:
            return _fit_randomized(reader, key, n, width, d)
        return _fit_incremental(piece, n, d, step)


def _fit_incremental(piece, n: int, d: int, step: int) -> tuple[np.ndarray, dict]:
    """Plan versions 1 and 2: IncrementalPCA, ``partial_fit`` piece by piece."""
    from sklearn.decomposition import IncrementalPCA

    # partial_fit takes an SVD of (piece + D) rows: per row it costs about
    # (piece + D)^2 / piece, least for pieces of a few D rows.
    step = max(d, min(step, max(8 * d, _FIT_ROWS)))
    bounds = _pieces(n, step, least=d)
    ipca = IncrementalPCA(n_components=d)  # no randomness: the same rows in the same pieces give the same fit
    for s, e in bounds:
        ipca.partial_fit(piece(s, e))
    out = np.empty((n, d), dtype=np.float32)
    for s, e in bounds:
        out[s:e] = ipca.transform(piece(s, e))
    return out, {"project_batch_rows": step}


# Plan version 3's projection: the sample it is fitted on takes at most this many
# bytes (float32; at least 4 D rows), drawn with this key (a function of the data alone),
_SAMPLE_BYTES = 64 * 1024 * 1024
_SAMPLE_KEY = 0x6D69787570  # "mixup"
# with this many extra directions and power iterations (Halko, Martinsson, Tropp 2011).
_OVERSAMPLE = 10
_POWER_ITERATIONS = 4


def _fit_randomized(reader, key: str, n: int, width: int, d: int) -> tuple[np.ndarray, dict]:
    """Plan version 3: principal directions of a seeded sample of rows (read
    in the pass in row order, contiguous pieces), by a randomized range
    finder with power iterations, in float32; the rows centred on the
    sample's mean and projected in a second pass. Records the sample's rows
    and the share of its variance the D directions keep."""
    rows = min(n, max(4 * d, _SAMPLE_BYTES // (4 * width)))
    rng = np.random.default_rng([_SAMPLE_KEY, n, width, d])
    chosen = np.sort(rng.choice(n, rows, replace=False)) if rows < n else np.arange(n)
    sample = np.empty((rows, width), dtype=np.float32)
    step = max(1, _READ_BYTES // (4 * width))
    at = 0
    for s, e in _pieces(n, step):
        hit = chosen[np.searchsorted(chosen, s) : np.searchsorted(chosen, e)]
        if len(hit):
            block = np.asarray(reader.read(key, s, e)).reshape(e - s, width)
            sample[at : at + len(hit)] = block[hit - s]
            at += len(hit)
    mean = sample.mean(axis=0, dtype=np.float64)
    sample -= mean.astype(np.float32)
    total = float(np.einsum("ij,ij->", sample, sample, dtype=np.float64))
    wide = min(d + _OVERSAMPLE, rows, width)
    basis = sample @ rng.standard_normal((width, wide), dtype=np.float32)
    for _ in range(_POWER_ITERATIONS):
        basis, _r = np.linalg.qr(basis)
        back, _r = np.linalg.qr(sample.T @ basis)
        basis = sample @ back
    basis, _r = np.linalg.qr(basis)
    _u, sing, vt = np.linalg.svd(basis.T @ sample, full_matrices=False)
    comps = np.ascontiguousarray(vt[:d])
    # Signs fixed (largest entry of each direction positive), so a fit is one answer.
    flip = np.sign(comps[np.arange(d), np.abs(comps).argmax(axis=1)])
    comps *= np.where(flip == 0, 1, flip)[:, None].astype(np.float32)
    kept = float(np.sum(sing[:d].astype(np.float64) ** 2) / total) if total > 0 else 1.0
    del sample
    shift = mean.astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for s, e in _pieces(n, step):
        block = np.asarray(reader.read(key, s, e), dtype=np.float32).reshape(e - s, width) - shift
        np.matmul(block, comps.T, out=out[s:e])
    return out, {"project_sample_rows": int(rows), "project_variance": round(min(1.0, kept), 6)}


def _exact(feats: np.ndarray, rows: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Squared distances, in float64, of ``rows`` to their candidates ``cand``."""
    out = np.empty(cand.shape, dtype=np.float64)
    width = feats.shape[1]
    step = max(1, _EXACT_BYTES // max(1, cand.shape[1] * width * 8))
    for s in range(0, len(rows), step):
        e = min(len(rows), s + step)
        diff = feats[cand[s:e]].astype(np.float64) - feats[rows[s:e], None, :].astype(np.float64)
        out[s:e] = np.einsum("ijk,ijk->ij", diff, diff)
    return out


def neighbour_table(feats: np.ndarray, k: int, threads: int | None = None) -> np.ndarray:
    """The K nearest other rows of every row, by (squared distance, index),
    exactly (the same lists as ``reference_table``), by blocked float32
    products through BLAS (``threads`` of them; the thread budget by default):

    * the rows are centred (distances do not change) and a block of queries
      gets its keys ``|b|^2 - 2 a.b`` against every row, one product of
      ``(rows x (D + 1)) x ((D + 1) x queries)`` at a time, kept for the block
      (at most ``_BLOCK_BYTES``); minima of groups of 16 keys, and of 16 of
      those, as the products come;
    * per query, the threshold is the (M+1)-th smallest group minimum (M = K +
      1 + ``_MARGIN``): at least M+1 keys lie at or below it, and the rows
      whose keys do are found down the groups; the M least by (key, index)
      are the candidates, re-ranked by their exact float64 distances
      (``_exact``), ties by index;
    * the list is kept when its K-th exact distance is below the (M+1)-th key
      plus ``|a|^2`` minus ``_key_error``, a bound on how far a key can be
      from the exact distance (derived there): every row left out is then
      farther. Otherwise (ties or near-ties at the K-th distance) the row takes
      every row whose key is within that bound of its K-th distance, and
      those are re-ranked exactly: the answer is exact either way, whatever
      the BLAS build or its thread count."""

    n = len(feats)
    table = np.empty((n, k), dtype=np.int64)
    if n == 0:
        return table
    return _search(np.ascontiguousarray(feats, dtype=np.float32), k, table, threads)


# The fast search: a block's keys (rows x queries, float32) take at most this many bytes,
_BLOCK_BYTES = 64 * 1024 * 1024
# one product (part of the rows x the block's queries) about this many (it stays in cache).
_TILE_BYTES = 2 * 1024 * 1024
# Candidates re-ranked exactly per row: itself, K and this many more.
_MARGIN = 3
# Keys are grouped by this many, twice, for the threshold.
_GROUP = 16
# Pairs (row, candidate) re-ranked exactly at once by a row left to the fallback.
_FALLBACK_PAIRS = 1 << 22
# Padding rows' key: above any threshold.
_FAR = np.float32(1e38)


def _key_error(radius: np.ndarray, big: float, width: int) -> np.ndarray:
    """Per query row i, a bound E_i on |key(i, j) + |C_i|^2 - d(i, j)| for every
    row j, where key is the float32 product of ``_search``, C the centred
    float32 rows and d the float64 distance ``_exact`` computes from the rows
    as given; ``radius`` = |C_i|, ``big`` = max_j |C_j|, u = 2^-24.

    * Centring: C = fl32(f - mean), each value within u |c| (c = f - mean
      in reals), so |C_i - C_j| is within e = u (|c_i| + |c_j|) of |f_i - f_j|,
      and the squares within 2 e S + e^2 <= 3 u S^2, S = |C_i| + |C_j|
      (to first order in u: the factor 1.01 below covers the rest).
    * The key: the dot product of (C_i, 1) and (-2 C_j, fl32(|C_j|^2)), D + 1
      terms in any order, FMA or not, is within gamma_{D+1} sum |x y| <=
      gamma_{D+1} (2 |C_i| |C_j| + |C_j|^2 (1 + u)) of its exact value, with
      gamma_n = n u / (1 - n u); rounding |C_j|^2 to float32 adds u |C_j|^2.
    * d itself (float32 values subtracted, squared and summed in float64)
      and |C_i|^2 in float64: within (D + 4) 2^-52 (S^2 + |C_i|^2).
    * The comparisons are summed in float64: 2^-40 S^2 more covers them."""
    u = 2.0**-24
    terms = width + 1
    gamma = terms * u / (1 - terms * u)
    span2 = (radius + big) ** 2
    bound = (
        gamma * (2 * radius * big + big * big * (1 + u))
        + u * big * big
        + 3 * u * span2
        + (width + 4) * 2.0**-52 * (span2 + radius**2)
    )
    return 1.01 * bound + 2.0**-40 * span2


def _search(feats: np.ndarray, k: int, table: np.ndarray, threads: int | None) -> np.ndarray:
    from mixup_cli.core import threads as pools

    n, width = feats.shape
    mean = feats.mean(axis=0, dtype=np.float64)
    cen = np.empty((n, width), dtype=np.float32)
    sq = np.empty(n, dtype=np.float64)  # |C_i|^2
    step = max(1, _READ_BYTES // (8 * max(1, width)))
    for s in range(0, n, step):
        cen[s : s + step] = feats[s : s + step].astype(np.float64) - mean
        c64 = cen[s : s + step].astype(np.float64)
        sq[s : s + step] = np.einsum("ij,ij->i", c64, c64)
    radius = np.sqrt(sq)
    big = float(radius.max())
    if not 4 * big * big < 1e30:  # keys would leave float32's range: the reference search
        return reference_table(feats, k)
    error = _key_error(radius, big, width)
    m = min(n, k + 1 + _MARGIN)
    levels = 0
    while levels < 2 and n >= _GROUP ** (levels + 1) * 4 * (m + 1):
        levels += 1
    unit = _GROUP**levels
    workers = max(1, int(threads or pools.budget()))
    # The blocks of all threads together take _BLOCK_BYTES (8 queries a block at least).
    q = int(min(n, max(8, min(512, _BLOCK_BYTES // workers // (4 * (n + unit))))))
    c = max(unit, _TILE_BYTES // (4 * q) // unit * unit)
    c = min(c, -(-n // unit) * unit)
    npad = -(-n // c) * c
    rows_side = np.zeros((npad, width + 1), dtype=np.float32)
    rows_side[:n, :width] = cen
    rows_side[:n, :width] *= -2
    rows_side[:n, width] = sq
    rows_side[n:, width] = _FAR
    del cen  # the queries are taken back from rows_side (-2 C: exact halving)
    search = _Blocks(feats, k, table, rows_side, sq, error, m, levels, q, c, npad)
    starts = range(0, n, q)
    workers = min(len(starts), workers)
    # One BLAS thread per product, the blocks over ``workers`` threads of our own:
    # BLAS's own threads wait for each other by spinning, which a loaded machine
    # turns into a standstill (2.4 GFLOP/s with two threads, 60-90 with one).
    with pools.blas_limited(1):
        if workers == 1:
            for qs in starts:
                search.block(qs)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mixup-knn") as pool:
                for _ in pool.map(search.block, starts):
                    pass
    return table


class _Blocks:
    """The blocks of queries of ``_search``, each computed alone (in any
    thread: buffers per thread) into its own rows of ``table``."""

    def __init__(self, feats, k, table, rows_side, sq, error, m, levels, q, c, npad):
        self.feats, self.k, self.table, self.rows_side = feats, k, table, rows_side
        self.sq, self.error, self.m, self.levels, self.q, self.c, self.npad = sq, error, m, levels, q, c, npad
        import threading

        self.local = threading.local()

    def buffers(self):
        bufs = getattr(self.local, "bufs", None)
        if bufs is None:
            npad, q = self.npad, self.q
            bufs = [np.empty(npad * q, dtype=np.float32)]
            bufs += [np.empty(npad // _GROUP**lev * q, dtype=np.float32) for lev in range(1, self.levels + 1)]
            self.local.bufs = bufs
        return bufs

    def block(self, qs: int) -> None:
        """Rows ``qs`` to ``qs + q``: candidates, exact re-ranking, the bound's check, the fallback."""
        feats, k, table, sq, error, m = self.feats, self.k, self.table, self.sq, self.error, self.m
        n = len(feats)
        rows = np.arange(qs, min(n, qs + self.q))
        levels_arrays = self.keys(rows)
        g, key, starts = self.below(levels_arrays, len(rows))
        cand = g[starts[:, None] + np.arange(m)]
        cand, d = _ranked(feats, rows, cand)
        if m < n:
            # Every row left out has a key >= the (M+1)-th, so an exact distance
            # > that + |C_i|^2 - E_i: it must exceed the K-th.
            nxt = key[starts + m].astype(np.float64)
            ok = d[:, k - 1] < nxt + sq[rows] - error[rows]
        else:
            ok = np.ones(len(rows), dtype=bool)
        table[rows[ok]] = cand[ok, :k]
        bad = np.flatnonzero(~ok)
        if len(bad):
            limit = d[bad, k - 1] - sq[rows[bad]] + error[rows[bad]]
            _fallback(feats, levels_arrays[0], qs, bad, limit, k, table)

    def keys(self, rows: np.ndarray) -> list[np.ndarray]:
        """The keys of ``rows`` against every row (npad x queries), and the
        minima of their groups, level by level."""
        rows_side, c, npad, nq = self.rows_side, self.c, self.npad, len(rows)
        width = rows_side.shape[1] - 1
        buf, *mins_buf = self.buffers()
        query = np.ones((width + 1, nq), dtype=np.float32)
        query[:width] = rows_side[rows[0] : rows[-1] + 1, :width].T
        query[:width] *= -0.5
        keys = buf[: npad * nq].reshape(npad, nq)
        mins = [b[: npad // _GROUP ** (lev + 1) * nq].reshape(-1, nq) for lev, b in enumerate(mins_buf)]
        for s in range(0, npad, c):
            tile = keys[s : s + c]
            np.matmul(rows_side[s : s + c], query, out=tile)
            below = tile
            for lev, out in enumerate(mins, 1):
                part = c // _GROUP**lev
                np.min(below.reshape(_GROUP, part, nq), axis=0, out=out[s // _GROUP**lev : s // _GROUP**lev + part])
                below = out[s // _GROUP**lev : s // _GROUP**lev + part]
        return [keys] + mins

    def below(self, levels_arrays: list[np.ndarray], nq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per query, the rows whose keys are at or below its threshold (the
        (M+1)-th smallest top group minimum: M+1 of them at least), found down
        the groups; sorted by (query, key, row): rows, keys, each query's start."""
        n, m, c = len(self.feats), self.m, self.c
        top = levels_arrays[-1]
        thr = np.partition(top, m, axis=0)[m] if m < n else np.full(nq, np.inf, dtype=np.float32)
        g, qi = np.nonzero(top <= thr)
        for lev in range(self.levels, 0, -1):
            part = c // _GROUP**lev
            chunk, local = np.divmod(g, part)
            g = (chunk * (part * _GROUP) + local)[:, None] + np.arange(_GROUP) * part
            g, qi = g.ravel(), np.repeat(qi, _GROUP)
            keep = levels_arrays[lev - 1][g, qi] <= thr[qi]
            g, qi = g[keep], qi[keep]
        keep = g < n
        g, qi = g[keep], qi[keep]
        key = levels_arrays[0][g, qi]
        order = np.lexsort((g, key, qi))
        counts = np.bincount(qi, minlength=nq)
        return g[order], key[order], np.cumsum(counts) - counts


def _fallback(feats, keys, qs, local, limit, k, table) -> None:
    """Rows whose K-th distance is too near their (M+1)-th key: every row
    whose key is at most ``limit`` (their K-th distance, in key terms, plus
    the bound) is a candidate; every row at least as near as the K-th is
    one, so the lists are exact (ties by index)."""
    n = len(feats)
    limit32 = limit.astype(np.float32)
    limit32 = np.where(limit32 < limit, np.nextafter(limit32, np.float32(np.inf)), limit32)
    step = max(1, _FALLBACK_PAIRS // n)
    for s in range(0, len(local), step):
        cols = local[s : s + step]
        j, col = np.nonzero(keys[:n, cols] <= limit32[s : s + step])
        rows = cols[col] + qs
        d = _exact(feats, rows, j[:, None])[:, 0]
        d[j == rows] = np.inf
        order = np.lexsort((j, d, col))
        j, col = j[order], col[order]
        counts = np.bincount(col, minlength=len(cols))
        starts = np.cumsum(counts) - counts
        table[cols + qs] = j[starts[:, None] + np.arange(k)]


def reference_table(feats: np.ndarray, k: int, threads: int | None = None) -> np.ndarray:
    """The K nearest other rows of every row, by (squared distance, index):
    the reference search ``verify`` recomputes with, by another path than
    ``neighbour_table`` (scikit-learn's brute force proposes candidates);
    scikit-learn's BLAS and OpenMP pools held to ``threads`` (the budget)."""
    from mixup_cli.core import threads as pools

    with pools.blas_limited(threads):
        return _reference(feats, k)


def _reference(feats: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    n = len(feats)
    table = np.empty((n, k), dtype=np.int64)
    if n == 0:
        return table
    search = NearestNeighbors(algorithm="brute").fit(feats)
    sq = np.einsum("ij,ij->i", feats.astype(np.float64), feats.astype(np.float64))
    top = float(sq.max())
    pending, m = np.arange(n), min(n, k + 1 + _SLACK)
    while len(pending):
        again = []
        step = max(1, min(_QUERY_ROWS, _QUERY_CANDIDATES // m))  # many tied rows: fewer rows at once
        for s in range(0, len(pending), step):
            stopping.check()  # between two pieces of the search
            rows = pending[s : s + step]
            cand = search.kneighbors(feats[rows], n_neighbors=m, return_distance=False).astype(np.int64)
            cand, d = _ranked(feats, rows, cand)
            if m < n:
                # Rows left out are at least as far, by the search's distances,
                # as its farthest candidate: exact distance >= that - tolerance.
                finite = np.where(np.isfinite(d), d, -np.inf).max(axis=1)
                bound = finite - 2 * _TOLERANCE * (sq[rows] + top)
                ok = d[:, k - 1] < bound
            else:
                ok = np.ones(len(rows), dtype=bool)
            table[rows[ok]] = cand[ok, :k]
            again.append(rows[~ok])
        pending = np.concatenate(again) if again else pending[:0]
        m = min(n, 2 * m)
    return table


def _ranked(feats, rows: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's candidates sorted by exact float64 distance, then index;
    the row itself last (infinitely far): ``(candidates, distances)``."""
    d = _exact(feats, rows, cand)
    d[cand == rows[:, None]] = np.inf  # the row itself: never its own neighbour
    order = _sort_rows(d, cand)
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(d, order, axis=1)


def _sort_rows(d: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per row, the order of its candidates by (distance, index)."""
    # lexsort sorts by the last key first; along axis 1, row by row.
    return np.lexsort((cand, d), axis=-1)


def build(
    reader,
    x_key: str,
    k: int,
    project: int | None = None,
    classes=None,
    label: str = "x",
    *,
    reference: bool = False,
    version: int = 3,
    cells: np.ndarray | None = None,
) -> NeighbourIndex:
    """The index for ``--pairing knn`` (``classes`` None) or ``knn-within-class``
    (``classes`` a ``ClassIndex``: neighbours among the rows of the same class).
    ``reference``: the lists found by ``reference_table`` (``verify``), not
    by the fast search; the same lists). ``version``: the plan version,
    which decides the projection (``features``). ``cells`` (--groups): the
    cell of every row (its group, or group and class): neighbours among the
    rows of the row's cell, every other row of it when it has at most K rows."""
    search = reference_table if reference else neighbour_table
    return build_lists(reader, x_key, k, project, classes, label, search, reference, version, cells)[0]


def build_lists(reader, x_key, k, project, classes, label, search, reference, version, cells):
    """``build`` with the search ``search(feats, k)`` (``approximate.build``
    passes its own): ``(index, features, class or cell of every row or None)``."""
    n = reader.spec(x_key).rows
    if cells is not None:
        feats, projection = features(reader, x_key, project, label, version)
        cells = np.asarray(cells, np.int64)
        if not reference:
            return _in_cells(feats, k, cells, search, projection), feats, cells
        from mixup_cli.core import threads as pools

        with pools.blas_limited(None):  # once, not per cell: the pools' limits cost milliseconds to set
            return _in_cells(feats, k, cells, _reference, projection), feats, cells
    if classes is None:
        if n <= k:
            raise ParameterError(
                f"--neighbors {k}: {label} has {n} rows; a row has at most {n - 1} other rows to pair with",
                "--neighbors",
            )
        feats, projection = features(reader, x_key, project, label, version)
        return NeighbourIndex(search(feats, k), projection), feats, None
    small = np.flatnonzero(classes.counts <= k)
    if len(small):
        c = int(small[0])
        raise ParameterError(
            f"--neighbors {k}: class {classes.values[c]} of {classes.label} has {int(classes.counts[c])} "
            f"rows, so fewer than {k} others to pair with within its class; use a smaller --neighbors "
            "or --pairing knn",
            "--neighbors",
        )
    feats, projection = features(reader, x_key, project, label, version)
    table = np.empty((n, k), dtype=np.int64)
    for c in range(classes.n_classes):
        stopping.check()
        rows = np.sort(classes.order[classes.offsets[c] : classes.offsets[c] + classes.counts[c]]).astype(np.int64)
        table[rows] = rows[search(feats[rows], k)]  # local order is row order: ties still by index
    return NeighbourIndex(table, projection), feats, classes.codes


def _in_cells(feats: np.ndarray, k: int, cells: np.ndarray, search, projection) -> NeighbourIndex:
    """--groups: each row's K nearest other rows of its cell (ties by index);
    all of them, nearest first, where the cell has at most K rows."""
    n = len(feats)
    table = np.empty((n, k), dtype=np.int64)
    counts = np.empty(n, dtype=np.int64)
    order = np.argsort(cells, kind="stable")  # each cell's rows contiguous, in row order
    bounds = np.flatnonzero(np.diff(cells[order])) + 1
    for rows in np.split(order, bounds):
        stopping.check()
        rows = rows.astype(np.int64)
        m = min(k, len(rows) - 1)
        counts[rows] = m
        table[rows] = rows[:, None]  # padding past the list: the row itself, never drawn
        if m > 0:  # local order is row order: ties still by index
            table[rows, :m] = rows[search(np.ascontiguousarray(feats[rows]), m)]
    return NeighbourIndex(table, projection, counts)
