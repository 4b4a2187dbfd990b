"""Nearest-neighbour partners, for ``--pairing knn`` and ``knn-within-class``.

Every row gets the list of its ``K`` nearest other rows (Euclidean, in the
space of its flattened x, or of an ``IncrementalPCA`` projection of it to
``D`` dimensions); a task then draws each row's partner uniformly from its
list, keyed by ``(seed, copy, block)`` like the class pairings, and reads the
partners by index. The lists are a function of the data alone, so the output
does not depend on the batch size or the engine.

Determinism: scikit-learn's ``NearestNeighbors`` (brute force) proposes
candidates; their distances are then computed again, exactly, in float64,
and the candidates sorted by ``(distance, row index)``. A row's list is kept
only when every row left out is provably farther than its K-th neighbour
(the search is asked again with twice as many candidates until it is), so
rows at exactly the same distance are taken in the order of their index.

Memory while the index is built: the features, ``N x D x 4`` bytes (D the
row width, or the projection's dimension), plus the search's working memory
(scikit-learn's ``working_memory``, 1 GiB by default); while the run lasts,
the neighbour table, ``N x K x 8`` bytes. The projection is fitted with one
streaming pass over x (``partial_fit`` per piece of 256 rows, or 8 D, at most 16 MiB), and x is
read a second time to project it. scikit-learn is imported only here, and
only when one of these pairings is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixup_cli import stopping
from mixup_cli.errors import InputError, ParameterError

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
    project_batch_rows: int | None = None  # rows per partial_fit of the projection

    @property
    def n_rows(self) -> int:
        return len(self.table)

    @property
    def k(self) -> int:
        return self.table.shape[1]

    def draw_partners(self, rng: np.random.Generator, start: int, stop: int) -> np.ndarray:
        pick = rng.integers(0, self.k, stop - start)
        return self.table[np.arange(start, stop), pick].astype(np.int64)


def check_options(neighbors: int | None, project: int | None) -> None:
    if neighbors is None or int(neighbors) < 1:
        raise ParameterError(f"--neighbors must be an integer >= 1, got {neighbors!r}", "--neighbors")
    if project is not None and int(project) < 1:
        raise ParameterError(f"--project must be an integer >= 1, got {project!r}", "--project")


def _pieces(n: int, step: int, least: int = 1) -> list[tuple[int, int]]:
    """Contiguous ranges of ``step`` rows; the last one merged into the one
    before when shorter than ``least`` (partial_fit needs D rows a piece)."""
    bounds = [(s, min(n, s + step)) for s in range(0, n, step)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < least:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def features(reader, key: str, project: int | None = None, label: str = "x") -> tuple[np.ndarray, int | None]:
    """Rows of ``key`` flattened to float32, or projected to ``project``
    dimensions by an IncrementalPCA fitted in one pass; and the rows per
    ``partial_fit`` (None without projection)."""
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
    return out, step


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


def neighbour_table(feats: np.ndarray, k: int) -> np.ndarray:
    """The K nearest other rows of every row, by (squared distance, index)."""
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
            d = _exact(feats, rows, cand)
            d[cand == rows[:, None]] = np.inf  # the row itself: never its own neighbour
            order = _sort_rows(d, cand)
            cand = np.take_along_axis(cand, order, axis=1)
            d = np.take_along_axis(d, order, axis=1)
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


def _sort_rows(d: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per row, the order of its candidates by (distance, index)."""
    # lexsort sorts by the last key first; along axis 1, row by row.
    return np.lexsort((cand, d), axis=-1)


def build(reader, x_key: str, k: int, project: int | None = None, classes=None, label: str = "x") -> NeighbourIndex:
    """The index for ``--pairing knn`` (``classes`` None) or ``knn-within-class``
    (``classes`` a ``ClassIndex``: neighbours among the rows of the same class)."""
    n = reader.spec(x_key).rows
    if classes is None:
        if n <= k:
            raise ParameterError(
                f"--neighbors {k}: {label} has {n} rows; a row has at most {n - 1} other rows to pair with",
                "--neighbors",
            )
        feats, batch = features(reader, x_key, project, label)
        return NeighbourIndex(neighbour_table(feats, k), batch)
    small = np.flatnonzero(classes.counts <= k)
    if len(small):
        c = int(small[0])
        raise ParameterError(
            f"--neighbors {k}: class {classes.values[c]} of {classes.label} has {int(classes.counts[c])} "
            f"rows, so fewer than {k} others to pair with within its class; use a smaller --neighbors "
            "or --pairing knn",
            "--neighbors",
        )
    feats, batch = features(reader, x_key, project, label)
    table = np.empty((n, k), dtype=np.int64)
    for c in range(classes.n_classes):
        stopping.check()
        rows = np.sort(classes.order[classes.offsets[c] : classes.offsets[c] + classes.counts[c]]).astype(np.int64)
        table[rows] = rows[neighbour_table(feats[rows], k)]  # local order is row order: ties still by index
    return NeighbourIndex(table, batch)
