"""Per-block kernels: exact nearest-center labels and the block's partial statistics.

Everything here is a pure function of (block, centers, previous labels, weights):
no I/O, no globals, no Dask. The orchestration lives in :mod:`dkmeans.lloyd`;
the references these kernels are tested against are brute-force float64 and
exact rational (``fractions.Fraction``) implementations in the tests.

**Labels are exact.** A row's label is the argmin over centers of the exact
squared distance between the stored values of the row and of the centers
(floats are dyadic rationals, so this is well defined), ties to the lowest
index: the same whatever the BLAS, the CPU or the chunking.

1. Fast path. BLAS forms the dot products of a cache-sized tile of rows with
   the centers, in the data's dtype, and a compiled loop takes each row's
   best and second-best score ``s_j = ||c_j||² - 2 x·c_j`` (``||x||²`` does
   not change the order). With the rows' previous labels as hints (a Lloyd
   pass), the second best costs next to nothing where the label holds; where
   only labels are wanted, a count of the centers not clearly behind the
   hint certifies it without either score (:func:`_hints_hold`).
2. Certificate. Every computed score is within
   ``E(x) = 2.1 u (cmax² + (d + 2) ||x|| cmax) + 2 (d + 2) λ`` of the exact
   one (:func:`_score_error`): a dot product of length d computed in any
   order, with or without fused multiply-adds, errs by at most
   ``γ_d Σ|x_f c_f| ≤ γ_d ||x|| ||c||`` (γ_d = du / (1 - du); Higham,
   *Accuracy and Stability of Numerical Algorithms*, §3.1), rounding
   ``||c||²`` to the dtype and the final subtraction add at most
   ``u(||c||² + |s|) ≤ 2u(||c||² + ||x|| ||c||)``, and each product that
   underflows at most λ (the dtype's smallest normal number, which also
   covers flush-to-zero); u is the unit roundoff, cmax the largest center
   norm. A label is certain when the second-best score exceeds the best by
   more than 2E, provided no score overflowed the dtype: every intermediate
   is at most ``(cmax² + 2 ||x|| cmax)(1 + (d + 4) u)`` in magnitude, so rows
   of norm above the limit that keeps this finite (large data in float32)
   are never certain from their scores. One E per tile, from a bound on
   every row's norm (the norm of each feature's largest |x_f|, or the bound
   an earlier pass found), clears nearly every row; the others are looked
   at with their own norm.
3. Slow path, for the rows that are not certain. Only the centers whose score
   is within 2E of the best can be nearest; their squared distances are
   computed directly in float64, where every term is non-negative, so the
   result is within a relative ``(d + 3) u₆₄`` (plus an absolute term for
   underflow) of the exact value; the nearest is certain when these
   intervals separate. Where they do not (exact or near-exact ties), two
   candidates are compared exactly: the difference of their squared
   distances as a sum of floats that is computed without rounding
   (:mod:`dkmeans.exact`), or with Python's rationals when the values'
   exponents are too extreme for that.

**Sums are fixed.** The float64 sums, weights and objective are accumulated
rows in order within each tile, element-wise over the features (the
objective as each cluster's sum of ``w (x_f - c_f)²`` per feature), the
tiles' sums added in order, the objective summed at the end of the block;
a row's squared distance, where one is needed, is summed over its features
in order. Nothing is left to the compiler to reassociate, so they are
bitwise the same on every CPU and vector width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numba.extending
import numpy as np
from numpy.typing import DTypeLike

from dkmeans import exact, fused
from dkmeans.stats import ChunkStats, Farthest, Moments

# -- tiles ------------------------------------------------------------------------------------


# Rows per tile: the tile's k x rows scores stay near 1 MiB, in cache.
_TILE_ELEMENTS = 1 << 18
_U64 = 2.0**-53


def _tile_rows(n_rows: int, n_clusters: int) -> int:
    return max(16, min(n_rows, _TILE_ELEMENTS // max(n_clusters, 1)))


def _scores_by_row(n_features: int, n_clusters: int) -> bool:
    """Whether float32 scores are formed as ``tile @ centers.T``, one row of k per point.

    OpenBLAS computes ``tile @ centers.T`` up to twice as fast as
    ``centers @ tile.T``, but a best-and-second along a row of k scores
    (:func:`_top2_by_row`) costs more per point than down the columns
    (:func:`_top2_by_column`), which dominates when the product is cheap
    (few centers and features). Measured per 250k-row block on two CPUs
    (AMD EPYC Zen 4, 2026-11-24; Intel Xeon Sapphire Rapids, 2026-11-29): e.g.
    the rows win at d=32, k=64 and d=128, k=256, the columns at d=2, k=8.
    Measured again on the first (2026-12-05, 100k-row blocks, one BLAS thread
    as in a pass, d = 2..128, k = 8..256) after the column loop became 2-5x
    faster: the columns take 0.79-0.98x the rows' time at k=8 up to d=16,
    1.0-1.2x at k=8 from d=32 and at k=16, 1.1-2.2x beyond; this rule.
    Labels do not depend on the choice.
    """
    return n_clusters <= 256 and (n_clusters >= 16 or n_features >= 32)


# -- 1. fast path: best and second-best score of each row -------------------------------------


@numba.njit(nogil=True, cache=True)
def _top2_by_column(dots_t, centers_sq, index, best, second):  # pragma: no cover - compiled
    """Each row's best score, its center's index, and the second-best score.

    From the (k, rows) dot products ``centers @ tile.T``: the scores
    ``||c||² - 2 x·c`` are formed in the data's dtype and compared strictly
    (no fast-math), ties to the lowest index. The loop runs along rows for
    each center, with selects rather than branches, which the compiler
    vectorises: several rows are updated per instruction. Written this way
    on purpose (measured, AMD Zen 4): ``index`` is int32, the width of a
    float32 score (an int8 label array there, or ``min(second[i], ...)``
    with ``second`` stored after ``best``, made the loop 2-5x slower). (Hints
    as in :func:`_top2_by_row` do not pay here: scattering and gathering the
    hinted products across the columns cost more than the second best.)
    """
    k, n = dots_t.shape
    for i in range(n):
        best[i] = centers_sq[0] - (dots_t[0, i] + dots_t[0, i])
        second[i] = np.inf
        index[i] = 0
    for j in range(1, k):
        c_sq = centers_sq[j]
        label = np.int32(j)
        for i in range(n):
            score = c_sq - (dots_t[j, i] + dots_t[j, i])
            old = best[i]
            nearer = score < old
            runner_up = old if nearer else score
            nearest = score if nearer else old
            previous_second = second[i]
            second[i] = min(previous_second, runner_up)
            best[i] = nearest
            index[i] = label if nearer else index[i]


_MAX_KEY = np.int64(0x7FFFFFFFFFFFFFFF)
_MAX_KEY32 = np.int32(0x7FFFFFFF)


@numba.njit(inline="always")
def _key32(dots, centers_sq, i, j):  # pragma: no cover - compiled
    """Row i's float32 score of center j as an int32 of the same order.

    Negative floats have their magnitude bits flipped, so the integers order
    as the scores; an integer minimum along a row is something the compiler
    vectorises (a float argmin it does not). Scores are never -0.0
    (``||c||²`` is never).
    """
    score = np.float32(centers_sq[j] - (dots[i, j] + dots[i, j]))
    bits = score.view(np.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@numba.njit(inline="always")
def _key(dots, centers_sq, i, j):  # pragma: no cover - compiled
    """A :func:`_key32` in the high half of an int64, j in the low: ties by the lowest index."""
    return (np.int64(_key32(dots, centers_sq, i, j)) << 32) | j


@numba.njit(inline="always")
def _key_score(key32):  # pragma: no cover - compiled
    """The float32 score of a :func:`_key32` (or of the high half of a :func:`_key`)."""
    high = np.int32(key32)
    return np.int32(high ^ ((high >> 31) & 0x7FFFFFFF)).view(np.float32)


@numba.njit(inline="always")
def _top2_of_row(dots, centers_sq, i, labels, best, second):  # pragma: no cover - compiled
    """Row i's best score, its index (ties: the lowest) and the second-best, with no hint."""
    k = dots.shape[1]
    smallest = _MAX_KEY
    for j in range(k):
        smallest = min(smallest, _key(dots, centers_sq, i, j))
    label = smallest & 0xFFFFFFFF
    others = _MAX_KEY
    for j in range(k):
        key = _key(dots, centers_sq, i, j)
        others = min(others, key if j != label else _MAX_KEY)
    labels[i] = label
    best[i] = _key_score(smallest >> 32)
    second[i] = _key_score(others >> 32) if others != _MAX_KEY else np.float32(np.inf)


@numba.njit(nogil=True, cache=True)
def _top2_by_row(dots, centers_sq, hint, labels, best, second):  # pragma: no cover
    """Each row's best score, its index and the second-best score, from ``tile @ centers.T``.

    The row's ``hint`` (its label in the previous pass) is checked first: one
    minimum of the other centers' :func:`_key32` (half the width of a
    :func:`_key`, so twice the centers per instruction); if the hint's score
    is strictly below it, as for nearly every row late in a fit, the hint is
    the best and that minimum the runner-up. Otherwise (a new best, a tie that
    the lowest index must decide, no hint, no other score below the largest
    key) one minimum of the :func:`_key` finds the best and a second the
    runner-up.
    """
    n, k = dots.shape
    hinted = hint.shape[0] == n
    for i in range(n):
        p = hint[i] if hinted else -1
        if 0 <= p < k:
            others32 = _MAX_KEY32
            for j in range(k):
                key32 = _key32(dots, centers_sq, i, j)
                others32 = min(others32, key32 if j != p else _MAX_KEY32)
            own = _key32(dots, centers_sq, i, p)
            if own < others32 < _MAX_KEY32:
                labels[i] = p
                best[i] = _key_score(own)
                second[i] = _key_score(others32)
                continue
        _top2_of_row(dots, centers_sq, i, labels, best, second)


@numba.njit(nogil=True, cache=True)
def _hints_hold(dots, centers_sq, hint, margin, labels, best, second, flagged):  # pragma: no cover
    """Certify each row's ``hint`` directly where every other score exceeds its by ``margin``.

    For a Lloyd pass that needs labels only (no bounds): instead of the best
    and second scores (:func:`_top2_by_row`) and then their gap
    (:func:`_uncertain`), count the centers whose score is not ahead of the
    hint's by more than ``margin``, the same test on the same float64
    differences. A count of one (the hint itself) is the certificate: that
    row's label is the hint, as the two steps would have found, and its
    scores are not kept. A count is a sum of comparisons, which the compiler
    vectorises (a minimum of floats it does not): 25-35% less time than the
    two steps at k = 16..256 (AMD Zen 4). Any other row (a label that may
    change, a hint out of range) gets its best and second scores and its
    flag as the two steps give them, for :func:`_certify`. Returns the
    number flagged.
    """
    n, k = dots.shape
    uncertain = 0
    for i in range(n):
        p = hint[i]
        if 0 <= p < k:
            own = np.float64(np.float32(centers_sq[p] - (dots[i, p] + dots[i, p])))
            not_ahead = 0
            for j in range(k):
                score = np.float32(centers_sq[j] - (dots[i, j] + dots[i, j]))
                not_ahead += not (margin < np.float64(score) - own < np.inf)
            if not_ahead == 1:
                labels[i] = p
                flagged[i] = False
                continue
        _top2_of_row(dots, centers_sq, i, labels, best, second)
        flag = not (margin < np.float64(second[i]) - np.float64(best[i]) < np.inf)
        flagged[i] = flag
        uncertain += flag
    return uncertain


# -- 2. certificate; 3. slow path -------------------------------------------------------------


def _score_error(
    dtype: np.dtype, n_features: int, centers64: np.ndarray
) -> tuple[float, float, float]:
    """(a, b, limit): every score's rounding error is at most ``a + b ||x||`` for a row x.

    See the module docstring: ``E = 2.1 u (cmax² + (d + 2) ||x|| cmax) + 2 (d + 2) λ``,
    for rows of norm at most ``limit``. A larger row's scores may overflow the
    dtype (an infinite score would rank a center last, whatever its distance):
    they bound nothing (negative: no row's do).
    """
    info = np.finfo(dtype)
    u = float(info.eps) / 2
    cmax = float(np.sqrt(np.max(np.einsum("ij,ij->i", centers64, centers64))))
    a = 2.1 * u * cmax * cmax + 2 * (n_features + 2) * float(info.tiny)
    b = 2.1 * u * (n_features + 2) * cmax
    # |||c||² - 2 x·c| and every partial sum stay below the dtype's largest value
    # while cmax² + 2 ||x|| cmax does, with rounding (and this float64 arithmetic's).
    room = float(info.max) / (1.0 + (n_features + 4) * u) * (1.0 - 1e-9) - cmax * cmax
    limit = -1.0 if not room > 0.0 else (room / (2.0 * cmax) if cmax > 0.0 else np.inf)
    return a, b, limit


def _column_magnitudes(x, largest):  # pragma: no cover - compiled only (see the overload)
    """Each feature's largest ``|x_f|`` over the rows, in float64, into ``largest``."""
    raise NotImplementedError


@numba.extending.overload(_column_magnitudes)
def _column_magnitudes_impl(x, largest):
    """The maxima as integers: the magnitude bits of a float order as its absolute value.

    Integer maxima vectorise (float ones do not, for NaN's sake); written
    element-wise into 64 lanes where d divides 64 (the lanes then hold whole
    features, folded at the end), along each row otherwise. 2-8x faster than a
    float loop (AMD Zen 4, 8192-row tiles, d = 2..128). Finite input (checked
    when read) has no NaN, whose bits would order above infinity.
    """
    if x.dtype == numba.types.float32:
        float_type, bits_type, magnitude = np.float32, np.int32, np.int32(0x7FFFFFFF)
    else:
        float_type, bits_type, magnitude = np.float64, np.int64, np.int64(0x7FFFFFFFFFFFFFFF)

    def impl(x, largest):  # pragma: no cover - compiled
        n, d = x.shape
        bits = x.view(bits_type)
        if 64 % d == 0:
            top = np.zeros(64, dtype=bits_type)
            flat = bits.reshape(n * d)
            whole = (n * d) // 64 * 64
            for start in range(0, whole, 64):
                for lane in range(64):
                    top[lane] = max(top[lane], flat[start + lane] & magnitude)
            for position in range(whole, n * d):  # the last rows, into their features' lanes
                top[position - whole] = max(top[position - whole], flat[position] & magnitude)
            for lane in range(d, 64):
                top[lane % d] = max(top[lane % d], top[lane])
            values = top[:d].view(float_type)
        else:
            per_feature = np.zeros(d, dtype=bits_type)
            for i in range(n):
                row = bits[i]
                for f in range(d):
                    per_feature[f] = max(per_feature[f], row[f] & magnitude)
            values = per_feature.view(float_type)
        for f in range(d):
            largest[f] = np.float64(values[f])

    return impl


@numba.njit(nogil=True, cache=True)
def _norm_bound(x, largest):  # pragma: no cover - compiled
    """An upper bound on every row's norm: the norm of each feature's largest |x_f|."""
    d = x.shape[1]
    _column_magnitudes(x, largest)
    total = 0.0
    for f in range(d):
        total += largest[f] * largest[f]
    return np.sqrt(total * (1.0 + (d + 2) * _U64))


@numba.njit(nogil=True, cache=True)
def _uncertain(best, second, margin, out):  # pragma: no cover - compiled
    """Flag the rows whose best score is not ahead of the second by more than ``margin``.

    The gap is exact for float32 scores and within a relative u of it for
    float64 ones, which the callers' (1 + 4u) covers; an infinite or NaN gap
    (a score that overflowed) certifies nothing. Returns the flagged count.
    """
    count = 0
    for i in range(best.shape[0]):
        gap = np.float64(second[i]) - np.float64(best[i])
        flag = not (margin < gap < np.inf)
        out[i] = flag
        count += flag
    return count


@numba.njit(inline="always")
def _direct_sqdist(x, c):  # pragma: no cover - compiled
    """``||x - c||²`` in float64, features in order: the same on every CPU."""
    total = 0.0
    for f in range(x.shape[0]):
        diff = np.float64(x[f]) - c[f]
        total += diff * diff
    return total


@numba.njit(nogil=True, cache=True)
def _certify(
    x, centers64, dots_t, centers_sq, twins, labels, best, second, flagged, bound, pending, work
):
    """Decide exactly the labels of the ``flagged`` rows of a tile; certify the others' first.

    ``dots_t`` (k, rows) are the products the fast path formed its scores
    from, ``best``/``second`` each row's two best scores; ``bound`` is
    :func:`_score_error`'s (a, b, limit): ``a + b ||x||`` bounds every
    score's rounding error for rows of norm up to the limit (module
    docstring). A flagged row's own norm may still certify it; if not, its
    candidates are decided by direct float64 distances and, where those
    cannot separate two, exactly. A center equal to one of lower index
    (``twins[j] != j``) is never a candidate: it ties with that one, which
    wins (data with fewer distinct points than centers made every row
    compare every pair of them exactly: 56 us a row at k = 300).
    Rows the exact comparison cannot take (extreme exponents) are flagged in
    ``pending`` for :func:`dkmeans.exact.nearest_in_python`. Returns the number of rows that
    took the slow path.
    """
    n, d = x.shape
    k = centers64.shape[0]
    relative = 1.01 * (d + 3) * _U64  # of a direct float64 squared distance
    absolute = (d + 3) * 2.0**-1070  # underflow of its terms
    slow = 0
    for i in range(n):
        if not flagged[i]:
            continue
        norm_sq = 0.0
        for f in range(d):
            norm_sq += np.float64(x[i, f]) * np.float64(x[i, f])
        norm = np.sqrt(norm_sq)
        margin = 2.0 * (bound[0] + bound[1] * norm) * (1.0 + 4.0 * _U64)
        if not norm <= bound[2]:  # its scores may have overflowed: all candidates, directly
            margin = np.inf
        gap = np.float64(second[i]) - np.float64(best[i])
        if margin < gap < np.inf:
            continue
        slow += 1
        window = np.float64(best[i]) + margin
        everything = not np.isfinite(window)
        chosen = -1
        chosen_sq = 0.0
        for j in range(k):  # in index order: a tie keeps the lower index
            if twins[j] != j:
                continue
            score = np.float64(centers_sq[j] - (dots_t[j, i] + dots_t[j, i]))
            if not everything and score > window and np.isfinite(score):
                continue  # certainly not nearer than the fast path's best
            sq = _direct_sqdist(x[i], centers64[j])
            if chosen < 0:
                chosen, chosen_sq = j, sq
            elif sq * (1.0 + relative) + absolute < chosen_sq * (1.0 - relative) - absolute:
                chosen, chosen_sq = j, sq  # certainly nearer
            elif sq * (1.0 - relative) - absolute > chosen_sq * (1.0 + relative) + absolute:
                pass  # certainly farther
            else:
                sign = exact.compare(x[i], centers64[j], centers64[chosen], work)
                if sign == 2:
                    pending[i] = True
                elif sign < 0:
                    chosen, chosen_sq = j, sq
        labels[i] = chosen
    return slow


# -- distance bounds (for the bounded Lloyd, dkmeans.bounded) ---------------------------------


@numba.njit(inline="always")
def _bound_sqdist(x, c):  # pragma: no cover - compiled
    """``||x - c||²`` in float64 in four interleaved partial sums (a fixed order).

    For bounds only, where any order within the ``(d + 3) u`` error bound will
    do: four short chains of additions instead of one long one.
    """
    d = x.shape[0]
    s0 = s1 = s2 = s3 = 0.0
    f = 0
    while f + 4 <= d:
        e0 = np.float64(x[f]) - c[f]
        e1 = np.float64(x[f + 1]) - c[f + 1]
        e2 = np.float64(x[f + 2]) - c[f + 2]
        e3 = np.float64(x[f + 3]) - c[f + 3]
        s0 += e0 * e0
        s1 += e1 * e1
        s2 += e2 * e2
        s3 += e3 * e3
        f += 4
    while f < d:
        e0 = np.float64(x[f]) - c[f]
        s0 += e0 * e0
        f += 1
    return (s0 + s1) + (s2 + s3)


@numba.njit(nogil=True, cache=True)
def _row_bounds(x, labels, centers64, best, second, flagged, two_e, up, low):  # pragma: no cover
    """Each row's distance bounds: ``up >= d(x, c_label)``, ``low <= d(x, c_j)`` (j != label).

    From what the fast path left: a row it certified has ``label`` = its best
    score's center, and every other center's exact score is at least the
    second-best score minus E(x) (:func:`_score_error`), so with the exact
    ``d_a² = ||x||² + σ_a`` and ``σ_a <= best + E``,
    ``d_j² >= d_a² + (second - best) - 2E``; ``two_e`` is the tile's margin,
    at least 2E for every row of the tile. ``d_a²`` is computed directly
    (relative error ``(d + 3) u``); every rounding after is taken outward. A
    row the fast path could not certify gets ``lower = 0`` (no claim).
    """
    n, d = x.shape
    k = centers64.shape[0]
    relative = 1.01 * (d + 3) * _U64
    absolute = (d + 3) * 2.0**-1070
    for i in range(n):
        own_sq = _bound_sqdist(x[i], centers64[labels[i]])
        up[i] = np.sqrt(own_sq * (1.0 + relative) + absolute) * (1.0 + 2.0 * _U64)
        if k == 1:
            low[i] = np.inf
            continue
        if flagged[i]:
            low[i] = 0.0
            continue
        gap = (np.float64(second[i]) - np.float64(best[i])) * (1.0 - 2.0 * _U64)
        lower_sq = (own_sq * (1.0 - relative) - absolute + gap - two_e) * (1.0 - 4.0 * _U64)
        low[i] = np.sqrt(lower_sq) * (1.0 - 2.0 * _U64) if lower_sq > 0.0 else 0.0


# -- statistics, in a fixed order -------------------------------------------------------------


@numba.njit(inline="always")
def _add_row(x_row, center, sums_row, deviations_row, w):  # pragma: no cover - compiled
    """Add one row of weight ``w`` to its cluster's sums and squared deviations."""
    for f in range(x_row.shape[0]):
        value = np.float64(x_row[f])
        diff = value - center[f]
        sums_row[f] += w * value
        deviations_row[f] += w * (diff * diff)


@numba.njit(nogil=True, cache=True)
def _accumulate(x, labels, previous, centers64, weights, block):  # pragma: no cover
    """Add rows to their clusters' sums, weights and squared deviations, rows in order.

    ``block`` is (sums, weights, deviations): ``deviations[a, f]`` gathers
    ``w (x_f - c_af)²`` of the rows labelled a, whose total is the objective,
    with no per-row reduction (whose order the compiler would have to keep,
    and could not vectorise) and no cancellation. Every update is element-wise
    over the features. An empty ``weights`` means all ones; an empty
    ``previous``, no labels before. Returns how many labels differ from
    ``previous``.

    Unweighted rows get a loop of their own, where the weight is the constant
    1.0 (``1.0 * v`` is ``v``: the same sums, without the products); labels
    index as unsigned (no wraparound test for a negative index). 1.5-2.5 ns a
    row faster (AMD Zen 4, d = 2..128).
    """
    sums, totals, deviations = block
    n = x.shape[0]
    changed = n
    if previous.shape[0] == n:
        changed = 0
        for i in range(n):
            changed += labels[i] != previous[i]
    if weights.shape[0] == n:
        for i in range(n):
            a = np.uint64(labels[i])
            _add_row(x[i], centers64[a], sums[a], deviations[a], weights[i])
            totals[a] += weights[i]
    else:
        for i in range(n):
            a = np.uint64(labels[i])
            _add_row(x[i], centers64[a], sums[a], deviations[a], 1.0)
            totals[a] += 1.0
    return changed


@numba.njit(nogil=True, cache=True)
def _sequential_sum(values):  # pragma: no cover - compiled
    total = 0.0
    for value in values.flat:
        total += value
    return total


@numba.njit(nogil=True, cache=True)
def _row_sqdist(x, labels, centers64, out):  # pragma: no cover - compiled
    for i in range(x.shape[0]):
        out[i] = _direct_sqdist(x[i], centers64[labels[i]])


@numba.njit(nogil=True, cache=True)
def _column_moments(x):  # pragma: no cover - compiled
    """Column means and centred sums of squares, two passes in float64."""
    n, d = x.shape
    mean = np.zeros(d)
    for i in range(n):
        for f in range(d):
            mean[f] += x[i, f]
    mean /= n
    m2 = np.zeros(d)
    for i in range(n):
        for f in range(d):
            diff = np.float64(x[i, f]) - mean[f]
            m2[f] += diff * diff
    return mean, m2


def column_moments(x: np.ndarray) -> Moments:
    """Row count, column means and centred sums of squares of a block."""
    mean, m2 = _column_moments(np.ascontiguousarray(x))
    return Moments(count=len(x), mean=mean, m2=m2)


@numba.njit(nogil=True, cache=True)
def _fixed_sum(values, weights):  # pragma: no cover - compiled
    """``Σ w_i v_i`` in float64, rows in order."""
    total = 0.0
    if weights.shape[0] == values.shape[0]:
        for i in range(values.shape[0]):
            total += values[i] * weights[i]
    else:
        for i in range(values.shape[0]):
            total += values[i]
    return total


def fixed_sum(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    """``sum(weights * values)`` in float64, rows in order: bitwise the same on every CPU."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    w = np.empty(0) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    return float(_fixed_sum(values, w))


@numba.njit(nogil=True, cache=True)
def score_sums(x, labels, others, means64, centers64, weights, cluster_weights, distance_sums):
    """One block's sums for cluster-quality scores (:mod:`dkmeans.sweeps`), rows in order.

    Adds each row's weight and weighted distance to its cluster's mean into
    ``cluster_weights`` and ``distance_sums`` (per cluster), and returns the
    weighted sums of the squared distances to the means and of the simplified
    silhouette ``(b - a) / max(a, b)`` (a: the distance to the row's center, b:
    to center ``others[i]``; 0 where both are 0; ``others`` empty: no other
    center, the sum is 0). ``weights`` empty: every weight 1.
    """
    sqdist_sum, silhouette_sum = 0.0, 0.0
    for i in range(x.shape[0]):
        label = labels[i]
        w = weights[i] if weights.shape[0] > 0 else 1.0
        to_mean = _direct_sqdist(x[i], means64[label])
        cluster_weights[label] += w
        distance_sums[label] += w * np.sqrt(to_mean)
        sqdist_sum += w * to_mean
        if others.shape[0] > 0:
            a = np.sqrt(_direct_sqdist(x[i], centers64[label]))
            b = np.sqrt(_direct_sqdist(x[i], centers64[others[i]]))
            top = max(a, b)
            if top > 0:
                silhouette_sum += w * (b - a) / top
    return sqdist_sum, silhouette_sum


# -- one tile, one block ----------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _tile_margin(tile, bound, norm_bound, largest, block_bound):  # pragma: no cover - compiled
    """(margin, norm bound): what a certified row's best score leads its second by, in a tile.

    From :func:`_score_error`'s ``bound`` and a bound on every row's norm
    (``norm_bound``, or negative: the tile's own, the largest kept in
    ``block_bound[0]``); infinite where a score may have overflowed (none is
    certain). The margin is kept in ``block_bound[1]``.
    """
    if norm_bound < 0.0:
        norm_bound = _norm_bound(tile, largest)
        block_bound[0] = max(block_bound[0], norm_bound)
    margin = 2.0 * (bound[0] + bound[1] * norm_bound) * (1.0 + 4.0 * _U64)
    if not norm_bound <= bound[2]:
        margin = np.inf
    block_bound[1] = margin
    return margin, norm_bound


@numba.njit(nogil=True, cache=True)
def _tile_pass(
    tile,
    dots,
    by_row,
    hint,
    weights,
    centers,
    labels,
    bound,
    norm_bound,
    work,
    block,
    with_stats,
    with_scores,
):
    """One tile after its GEMM: its exact labels, and (``with_stats``) its rows added to ``block``.

    ``dots`` is ``tile @ centers.T`` (rows, k) when ``by_row``, else
    ``centers @ tile.T`` (k, rows); the fast path gives each row's best and
    second score. ``norm_bound`` bounds every row's norm (or is negative: the
    tile's own is found, and the largest kept in ``work``), which gives one
    margin for the whole tile: it clears nearly every row, the others go to
    :func:`_certify`. Then the rows, with their final labels, are added to
    the block's sums (:func:`_accumulate`). ``with_scores``: every row's best
    and second score are left in ``work`` (for its bounds); otherwise, with
    hints, only the rows whose hint is not certain get them (:func:`_hints_hold`).

    ``hint`` is the rows' previous labels (or empty), ``centers`` is
    (centers64, centers_sq, twins), ``bound`` the score error's (a, b,
    limit), ``work`` the scratch arrays. Returns (slow rows, rows left to
    :func:`dkmeans.exact.nearest_in_python`, labels changed since ``hint``);
    with rows left, nothing is added: the caller decides them, then adds the
    tile with :func:`_accumulate`.
    """
    centers64, centers_sq, twins = centers
    best, second, index, flagged, pending, expansion, largest, block_bound = work
    m = tile.shape[0]
    margin, norm_bound = _tile_margin(tile, bound, norm_bound, largest, block_bound)
    uncertain = 0
    if centers64.shape[0] == 1:  # one center: every label is 0, certainly
        labels[:] = 0
    elif by_row and hint.shape[0] == m and not with_scores:
        uncertain = _hints_hold(dots, centers_sq, hint, margin, labels, best, second, flagged[:m])
    else:
        if by_row:
            _top2_by_row(dots, centers_sq, hint, labels, best, second)
        else:
            _top2_by_column(dots, centers_sq, index, best, second)
            labels[:] = index[:m]
        uncertain = _uncertain(best[:m], second[:m], margin, flagged[:m])
    slow = 0
    if uncertain > 0:
        scores = dots.T if by_row else dots
        slow = _certify(
            tile,
            centers64,
            scores,
            centers_sq,
            twins,
            labels,
            best,
            second,
            flagged,
            bound,
            pending,
            expansion,
        )
        left = np.count_nonzero(pending[:m])
        if left > 0:
            return slow, left, 0
    changed = 0
    if with_stats:
        changed = _accumulate(tile, labels, hint, centers64, weights, block)
    return slow, 0, changed


@dataclass(frozen=True)
class Centers:
    """Centers with what every block's kernel needs of them, computed once (:func:`prepare`)."""

    values: np.ndarray  # (k, d), in X's dtype, C-contiguous
    # (d, k), C-contiguous: OpenBLAS forms tile @ transposed faster than tile @ values.T
    # (float32, one thread: 2.7x at d=3, k=16; 3-4% at d=8..32; Xeon, 2026-12-05)
    transposed: np.ndarray
    values64: np.ndarray  # (k, d) float64, exactly the same values
    squared_norms: np.ndarray  # (k,) ||c||² computed accurately, rounded to X's dtype
    # (a, b, limit): every score's error is at most a + b ||x|| where ||x|| <= limit
    error: tuple[float, float, float]
    by_row: bool  # scores formed as tile @ centers.T (see _scores_by_row)
    twins: np.ndarray  # (k,) int64: the lowest index of a center of the same values
    # the centers as dkmeans.fused.label takes them, where it runs and pays (_fused_pays)
    fused: tuple[np.ndarray, np.ndarray] | None = None


def prepare(centers: np.ndarray, dtype: DTypeLike) -> Centers:
    """The :class:`Centers` of ``centers`` for data of ``dtype`` (float32 or float64)."""
    dtype = np.dtype(dtype)
    values = np.ascontiguousarray(centers, dtype=dtype)
    values64 = values.astype(np.float64)
    # ||c||² accurately, then rounded to the dtype (the certificate counts that
    # rounding; an overflow makes the scores of those centers uncertain, not wrong).
    with np.errstate(over="ignore"):
        squared_norms = np.einsum("ij,ij->i", values64, values64).astype(dtype)
    k, d = values.shape
    return Centers(
        values=values,
        transposed=np.ascontiguousarray(values.T),
        values64=values64,
        squared_norms=squared_norms,
        error=_score_error(dtype, d, values64),
        by_row=dtype == np.float32 and _scores_by_row(d, k),
        twins=_twins(values64),
        fused=fused.padded_centers(values, squared_norms) if _fused_pays(dtype, d, k) else None,
    )


def _fused_pays(dtype: np.dtype, n_features: int, n_clusters: int) -> bool:
    """Whether the compiled kernel (:mod:`dkmeans.fused`) labels tiles instead of BLAS and numba.

    Float32 only (float64 scores are formed by columns, with no hint check),
    where it runs on this CPU, and where it is faster. Measured per row, one
    thread, 20k-200k rows, on the Xeon VM (2026-12-06), compiled / BLAS with
    hints and without: d=1..16 and k=16..32: 0.21-0.81 and 0.39-0.78; (16,
    256) 0.60, 0.53; (32, 64) 0.67, 0.73; (64, 128) 0.79, 0.79; (512, 16)
    0.75, 0.81; (32, 8) 0.83, 0.93; but (4, 8) and (8, 8) without hints 1.59,
    1.34 (the column orientation, :func:`_scores_by_row`, wins there), and
    from d k = 16384 the GEMM: (64, 256) 1.11, 0.99; (128, 128) 1.26, 1.14;
    (128, 256) 1.29, 1.19. Hence the by-row shapes up to d k = 8192. (Not
    where bounds are wanted either, :class:`_Tiles`: bounds come from the
    scores, which would differ in their last bits between CPUs with and
    without it.)
    """
    return (
        dtype == np.float32
        and fused.AVAILABLE
        and _scores_by_row(n_features, n_clusters)
        and n_features * n_clusters <= _FUSED_MOST_PRODUCTS
    )


# Beyond this many products a row (d k), BLAS's GEMM is faster than the compiled kernel.
_FUSED_MOST_PRODUCTS = 8192


@numba.njit(nogil=True, cache=True)
def _twins(centers64):  # pragma: no cover - compiled
    """Each center's lowest index of a center of the same values (itself if none).

    Pairs in order, each left at its first differing feature: k²/2 comparisons
    of one feature where the centers differ (1 us at k = 16; ``np.unique`` by
    rows took 30).
    """
    k, d = centers64.shape
    twins = np.arange(k)
    for j in range(k):
        for i in range(j):
            if twins[i] != i:
                continue
            f = 0
            while f < d and centers64[i, f] == centers64[j, f]:
                f += 1
            if f == d:
                twins[j] = i
                break
    return twins


# Where the compiled kernel flags more of a tile's rows than this (near-ties: data with many
# exact ties), BLAS labels the tile instead: the flagged rows cost a gather and a GEMM more.
_FUSED_MOST_FLAGGED = 0.125


class _Tiles:
    """One block's labelling (and statistics), tile by tile, with its scratch space.

    Everything is allocated once per block: a fresh 1 MiB array per tile costs
    page faults each time where malloc returns memory to the OS at once (Dask's
    workers set MALLOC_TRIM_THRESHOLD_), which doubled the kernel's time there.
    """

    def __init__(self, x: np.ndarray, centers: np.ndarray | Centers, with_stats: bool):
        n, d = x.shape
        if not isinstance(centers, Centers) or centers.values.dtype != x.dtype:
            centers = prepare(centers.values if isinstance(centers, Centers) else centers, x.dtype)
        k = len(centers.values)
        self.centers = centers.values
        self.centers_t = centers.transposed
        self.centers64 = centers.values64
        self.centers_sq = centers.squared_norms
        self.twins = centers.twins
        self.bound = centers.error
        self.fused = centers.fused
        self.step = _tile_rows(n, k)
        self.by_row = centers.by_row
        self.dots = np.empty(k * self.step, dtype=x.dtype)
        self.work = (
            np.empty(self.step, dtype=x.dtype),  # best
            np.empty(self.step, dtype=x.dtype),  # second
            np.empty(self.step, dtype=np.int32),  # each row's best center (column scores)
            np.zeros(self.step, dtype=np.bool_),  # flagged
            np.zeros(self.step, dtype=np.bool_),  # pending
            np.empty(12 * d + 4),  # expansion
            np.empty(d),  # each feature's largest |x| in the tile
            np.zeros(2),  # the largest bound on row norms over the tiles; the last tile's margin
        )
        # The block's sums, weights and deviations (unused for labels only).
        self.with_stats = with_stats
        shape = (k, d) if with_stats else (0, d)
        self.block = (np.zeros(shape), np.zeros(shape[0]), np.zeros(shape))

    def run(self, x, labels, hint, weights, norm_bound: float | None = None, bounds=None) -> tuple:
        """Exact labels of a block's rows, written to ``labels`` (and its statistics).

        ``hint``: the rows' previous labels (or empty), which make the fast path
        cheaper where they still hold and count the labels that changed; the
        labels do not depend on them. ``norm_bound``: at least every row's norm
        (found from the rows if not given). ``bounds``: (upper, lower) arrays
        that receive each row's distance bounds (:func:`_row_bounds`). Returns
        (slow rows, labels changed, the norm bound used).
        """
        n = len(x)
        slow = changed = 0
        centers = (self.centers64, self.centers_sq, self.twins)
        compiled = self.fused is not None and bounds is None
        with np.errstate(over="ignore", invalid="ignore"):  # overflows: uncertain, see _certify
            for start in range(0, n, self.step):
                stop = min(start + self.step, n)
                m, tile = stop - start, x[start:stop]
                tile_hint = hint[start:stop] if len(hint) else hint
                tile_weights = weights[start:stop] if len(weights) else weights
                tile_norm = -1.0 if norm_bound is None else norm_bound
                if compiled:
                    done, tile_norm = self._label_compiled(
                        tile, tile_hint, labels[start:stop], tile_norm
                    )
                    if done is not None:
                        slow += done
                        if self.with_stats:
                            changed += _accumulate(
                                tile,
                                labels[start:stop],
                                tile_hint,
                                self.centers64,
                                tile_weights,
                                self.block,
                            )
                        continue
                tile_slow, left, tile_changed = _tile_pass(
                    tile,
                    self._dots(tile),
                    self.by_row,
                    tile_hint,
                    tile_weights,
                    centers,
                    labels[start:stop],
                    self.bound,
                    tile_norm,
                    self.work,
                    self.block,
                    self.with_stats,
                    bounds is not None,
                )
                if left:  # exponents too extreme for the expansions
                    tile_changed = self._decide_in_python(
                        tile, labels[start:stop], tile_hint, tile_weights
                    )
                if bounds is not None:
                    best, second, _, flagged = self.work[:4]
                    _row_bounds(
                        tile,
                        labels[start:stop],
                        self.centers64,
                        best[:m],
                        second[:m],
                        flagged[:m],
                        self.work[7][1],
                        bounds[0][start:stop],
                        bounds[1][start:stop],
                    )
                slow += tile_slow
                changed += tile_changed
        used = float(self.work[7][0]) if norm_bound is None else norm_bound
        return slow, changed, used

    def _dots(self, tile: np.ndarray) -> np.ndarray:
        """BLAS's products of a cache-sized tile with the centers, in the orientation chosen."""
        m, k = len(tile), len(self.centers)
        if self.by_row:
            return np.matmul(tile, self.centers_t, out=self.dots[: k * m].reshape(m, k))
        return np.matmul(self.centers, tile.T, out=self.dots[: k * m].reshape(k, m))

    def _label_compiled(self, tile, hint, labels, norm_bound: float) -> tuple[int | None, float]:
        """A tile's exact labels by the compiled kernel (:mod:`dkmeans.fused`), where it pays.

        It labels the rows whose scores make their label certain (by the hint,
        or by the best score); the rows it flags (near-ties) are labelled as a
        compact tile of their own by :func:`_tile_pass`, with the same margin.
        Returns (slow rows, the norm bound used), or (None, the norm bound)
        where the kernel could not run or flagged more than
        :data:`_FUSED_MOST_FLAGGED` of the rows: the caller then labels the
        tile by BLAS, as if it had not been tried.
        """
        largest, block_bound = self.work[6], self.work[7]
        margin, norm_bound = _tile_margin(tile, self.bound, norm_bound, largest, block_bound)
        flagged = self.work[3][: len(tile)]
        count = fused.label(tile, self.fused, len(self.centers), hint, margin, labels, flagged)
        if not 0 <= count <= _FUSED_MOST_FLAGGED * len(tile):
            return None, norm_bound
        if count == 0:
            return 0, norm_bound
        rows = np.flatnonzero(flagged)
        sub = tile[rows]
        sub_hint = hint[rows] if len(hint) else hint
        sub_labels = np.empty(len(rows), dtype=labels.dtype)
        centers = (self.centers64, self.centers_sq, self.twins)
        slow, left, _ = _tile_pass(
            sub,
            self._dots(sub),
            self.by_row,
            sub_hint,
            np.empty(0),
            centers,
            sub_labels,
            self.bound,
            norm_bound,
            self.work,
            self.block,
            False,
            False,
        )
        if left:  # exponents too extreme for the expansions
            pending = self.work[4]
            exact.nearest_in_python(
                sub, self.centers, np.flatnonzero(pending[: len(sub)]), sub_labels
            )
            pending[: len(sub)] = False
        labels[rows] = sub_labels
        return slow, norm_bound

    def _decide_in_python(self, tile, labels, hint, weights) -> int:
        pending = self.work[4]
        rows = np.flatnonzero(pending[: len(tile)])
        exact.nearest_in_python(tile, self.centers, rows, labels)
        pending[rows] = False
        if not self.with_stats:
            return 0
        return _accumulate(tile, labels, hint, self.centers64, weights, self.block)


def _label_block(
    x: np.ndarray,
    centers: np.ndarray | Centers,
    label_dtype: DTypeLike,
    hint: np.ndarray | None = None,
    norm_bound: float | None = None,
) -> tuple:
    """Exact labels of a block (C-contiguous): (labels, the tiles' constants).

    ``hint`` (the rows' previous labels) makes the fast path cheaper where
    they still hold; the labels do not depend on it, nor on ``norm_bound``.
    """
    tiles = _Tiles(x, centers, with_stats=False)
    labels = np.empty(len(x), dtype=label_dtype)
    hint = np.empty(0, dtype=label_dtype) if hint is None else hint.astype(label_dtype, copy=False)
    tiles.run(x, labels, hint, np.empty(0), norm_bound)
    return labels, tiles


def nearest(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Label each row with its nearest center, exactly (int64; ties to the lowest index)."""
    labels, _ = _label_block(np.ascontiguousarray(x), centers, np.int64)
    return labels


def assign(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label each row with its nearest center, exactly, and give its squared distance.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        The rows of one block, float32 or float64.
    centers : ndarray of shape (k, d)
        Centers, in the same dtype as ``x``.

    Returns
    -------
    labels : ndarray of shape (n,), int64
        Index of the nearest center (exact squared distances of the stored
        values); ties go to the lowest index.
    sqdist : ndarray of shape (n,), float64
        Squared distance from each row to its labelled center, in float64,
        features in order: bitwise the same on every CPU.
    """
    x = np.ascontiguousarray(x)
    labels, tiles = _label_block(x, centers, np.int64)
    sqdist = np.empty(len(x))
    _row_sqdist(x, labels, tiles.centers64, sqdist)
    return labels, sqdist


def distances(x: np.ndarray, centers: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Distances from each row to every center, shape (n, k).

    ``metric="euclidean"``: Euclidean distances. ``"cosine"``: for unit rows
    and centers, the cosine distance ``1 - cos = ||x - c||² / 2``. Computed
    in float64 by the GEMM expansion (clipped at zero), returned in the
    dtype of ``x``, as scikit-learn's ``KMeans.transform``: rounded, not
    exact, and may differ in the last bits between BLAS builds.
    """
    x64 = x.astype(np.float64, copy=False)
    c64 = centers.astype(np.float64, copy=False)
    sq = np.einsum("ij,ij->i", x64, x64)[:, None] - 2 * (x64 @ c64.T)
    sq += np.einsum("ij,ij->i", c64, c64)
    np.maximum(sq, 0, out=sq)
    result = sq / 2 if metric == "cosine" else np.sqrt(sq)
    return result.astype(x.dtype, copy=False)


def block_stats(
    x: np.ndarray,
    centers: np.ndarray | Centers,
    *,
    prev_labels: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    row_offset: int = 0,
    n_farthest: int | None = None,
    with_moments: bool = False,
    label_dtype: DTypeLike = np.int64,
    norm_bound: float | None = None,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[ChunkStats, np.ndarray]:
    """One block's share of a Lloyd pass: labels and partial statistics.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        The block's rows.
    centers : ndarray of shape (k, d), or Centers
        Current centers, in the dtype of ``x`` (prepared once for all blocks
        by :func:`prepare`, or as an array).
    prev_labels : ndarray of shape (n,), optional
        The labels of the previous pass; ``None`` on the first pass, when
        every label counts as changed.
    weights : ndarray of shape (n,), optional
        Non-negative sample weights; ``None`` means all ones.
    row_offset : int
        Global index of the block's first row (names re-seeding candidates).
    n_farthest : int, optional
        Most farthest points to report (default k); a block reports only as
        many as it has empty clusters, which bounds the clusters to re-seed.
    with_moments : bool
        Also return the column moments (used once, for ``tol``).
    label_dtype : numpy integer dtype
        Dtype of the returned labels; must hold ``k - 1``.
    norm_bound : float, optional
        At least the norm of every row of ``x`` (the ``norm_bound`` of an
        earlier pass over the same data): spares finding it. Labels do not
        depend on it, as long as it is a bound.
    bounds : (ndarray, ndarray) of shape (n,) each, float64, optional
        Receive each row's upper bound on the distance to its center and
        lower bound on the distance to every other center (rigorous, for
        exact distances of the stored values).

    Returns
    -------
    stats : ChunkStats
    labels : ndarray of shape (n,), in ``label_dtype``
    """
    k = len(centers.values if isinstance(centers, Centers) else centers)
    label_dtype = np.dtype(label_dtype)
    if np.iinfo(label_dtype).max < k - 1:
        raise ValueError(f"label_dtype {label_dtype} cannot hold labels up to {k - 1}")
    x = np.ascontiguousarray(x)
    previous = np.empty(0, label_dtype) if prev_labels is None else prev_labels
    tiles = _Tiles(x, centers, with_stats=True)
    labels = np.empty(len(x), dtype=label_dtype)
    w = np.empty(0) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    slow, changed, used = tiles.run(
        x, labels, previous.astype(label_dtype, copy=False), w, norm_bound, bounds
    )
    sums, cluster_weights, deviations = tiles.block
    # A cluster empty over all of X is empty in every block, so the number of
    # clusters to re-seed is at most this block's count of empty clusters: a
    # block without one (the usual case) reports no candidates at all, and
    # needs no distances of its rows.
    n_empty = int(np.count_nonzero(cluster_weights == 0))
    m = min(n_empty, k if n_farthest is None else n_farthest)
    farthest = Farthest.empty(x.shape[1])
    if m > 0:
        sqdist = np.empty(len(x))
        _row_sqdist(x, labels, tiles.centers64, sqdist)
        farthest = Farthest.select(sqdist, labels, weights, x, row_offset, m)
    stats = ChunkStats(
        sums=sums,
        weights=cluster_weights,
        objective=float(_sequential_sum(deviations)),
        changed=int(changed),
        farthest=farthest,
        moments=column_moments(x) if with_moments else None,
        slow_rows=slow,
        norm_bound=used,
    )
    return stats, labels


# -- for the bounded Lloyd (dkmeans.bounded): compact rows, bounds, slack --------------------


def relabel(
    x: np.ndarray, centers: Centers, hint: np.ndarray, norm_bound: float | None = None
) -> np.ndarray:
    """Exact labels of rows (C-contiguous) whose previous labels were ``hint``, in its dtype.

    Labels only, no statistics: where the hints still hold (most rows, once a
    fit has begun to settle) the fast path only checks them.
    """
    labels, _ = _label_block(x, centers, hint.dtype, hint, norm_bound)
    return labels


def assign_with_bounds(
    x: np.ndarray, centers: Centers, hint: np.ndarray, label_dtype: DTypeLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact labels of rows (C-contiguous) and their distance bounds (see :func:`_row_bounds`).

    Returns (labels, upper, lower): ``upper >= d(x, c_label)`` and
    ``lower <= d(x, c_j)`` for every other center j, for exact distances.
    """
    tiles = _Tiles(x, centers, with_stats=False)
    labels = np.empty(len(x), dtype=label_dtype)
    upper, lower = np.empty(len(x)), np.empty(len(x))
    tiles.run(x, labels, hint.astype(label_dtype, copy=False), np.empty(0), None, (upper, lower))
    return labels, upper, lower


def cluster_sums(
    x: np.ndarray,
    labels: np.ndarray,
    centers64: np.ndarray,
    weights: np.ndarray,
    previous: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Per-cluster sums, weights, objective and labels changed of rows, in a fixed order.

    As a block's statistics are gathered (:func:`_accumulate`): rows in
    order; ``weights`` empty means all ones, ``previous`` empty means no
    labels before. Returns (sums (k, d), weights (k,), objective, changed).
    """
    k, d = centers64.shape
    block = (np.zeros((k, d)), np.zeros(k), np.zeros((k, d)))
    changed = _accumulate(x, labels, previous, centers64, weights, block)
    return block[0], block[1], float(_sequential_sum(block[2])), int(changed)


@numba.njit(nogil=True, cache=True)
def row_sqdist(x, labels, centers64):  # pragma: no cover - compiled
    """Each row's squared distance to its labelled center, float64, features in order."""
    out = np.empty(x.shape[0])
    _row_sqdist(x, labels, centers64, out)
    return out


@numba.njit(nogil=True, cache=True)
def hamerly_filter(x, labels, bounds, step, other, centers64, moved, suspects):  # pragma: no cover
    """Move each row's bounds by the centers' steps; collect the rows whose label may change.

    ``bounds`` is (upper, lower) as they were; ``moved`` (upper, lower)
    receives them moved: ``upper`` grown by the step of the row's center,
    ``lower`` shrunk by ``other[label]``, the largest step of another center
    (both rounded outward). A row with ``upper < lower`` certainly keeps its
    label; for the others ``upper`` is tightened to the directly computed
    distance, and those still not certain are written to ``suspects``.
    Returns their count.

    In two loops: the first, over every row, has no branch to mispredict on
    rows near a boundary (the active rows are those); the second computes
    distances for only the rows it collected.
    """
    n, d = x.shape
    upper, lower = bounds
    new_upper, new_lower = moved
    relative = 1.01 * (d + 3) * _U64
    absolute = (d + 3) * 2.0**-1070
    count = 0
    for i in range(n):
        a = labels[i]
        up = (upper[i] + step[a]) * (1.0 + 4.0 * _U64)
        low = max((lower[i] - other[a]) * (1.0 - 4.0 * _U64), 0.0)
        new_upper[i] = up
        new_lower[i] = low
        suspects[count] = i  # kept only where the test fails
        count += not up < low
    kept = 0
    for j in range(count):
        i = suspects[j]
        own_sq = _bound_sqdist(x[i], centers64[labels[i]])
        up = np.sqrt(own_sq * (1.0 + relative) + absolute) * (1.0 + 2.0 * _U64)
        new_upper[i] = up
        suspects[kept] = i
        kept += not up < new_lower[i]
    return kept


@numba.njit(nogil=True, cache=True)
def take_suspects(x, labels, suspects):  # pragma: no cover - compiled
    """The ``suspects``' rows of ``x`` (compact, C order) and their labels: a tile to assign."""
    m, d = suspects.shape[0], x.shape[1]
    rows = np.empty((m, d), x.dtype)
    hints = np.empty(m, labels.dtype)
    for j in range(m):
        i = suspects[j]
        for f in range(d):
            rows[j, f] = x[i, f]
        hints[j] = labels[i]
    return rows, hints


@numba.njit(nogil=True, cache=True)
def put_assigned(
    suspects, found, up, low, labels, new_labels, upper, lower, moved
):  # pragma: no cover
    """Write the suspects' new labels and bounds back; ``moved`` gets those whose label changed.

    ``labels`` are the labels before, ``new_labels`` a copy of them to update.
    Returns how many moved (their positions, in order, lead ``moved``).
    """
    count = 0
    for j in range(suspects.shape[0]):
        i = suspects[j]
        new_labels[i] = found[j]
        upper[i] = up[j]
        lower[i] = low[j]
        if found[j] != labels[i]:
            moved[count] = i
            count += 1
    return count


@numba.njit(nogil=True, cache=True)
def moved_totals(x, weights, rows, old, new, reference64, sums, totals, sizes):  # pragma: no cover
    """Add the moves of ``rows`` (labels ``old`` -> ``new``) to a cluster's sums and weights.

    Rows in order, element-wise over the features. Returns the change of
    ``Σ w ||x - c0_label||²`` (``reference64``: the centers c0), each row's
    squared distances summed over its features in order, and the size of the
    terms it cancelled, ``Σ w (||x - c0_old||² + ||x - c0_new||²)``.
    ``sizes`` (k, 2) gains, for each addition to a cluster's sums and weight,
    the squares of its results (``Σ_f sums[a, f]²``, ``totals[a]²``): each
    rounds by up to a unit in the last place of its result, so their square
    roots estimate the rounding the running sums gather, as a random walk
    (:class:`dkmeans.bounded.Reference`).
    """
    weighted = weights.shape[0] == x.shape[0]
    change, size = 0.0, 0.0
    for i in rows:
        a, b = old[i], new[i]
        if a == b:
            continue
        w = weights[i] if weighted else 1.0
        # One loop: its four sums are chains of additions, which run side by side
        # here, each still feature by feature (the squared distances bitwise
        # :func:`_direct_sqdist`'s): 10-30% less time a row than a loop each
        # (Xeon, 2026-12-06, d = 3..64).
        size_a, size_b, leaving, joining = 0.0, 0.0, 0.0, 0.0
        for f in range(x.shape[1]):
            feature = np.float64(x[i, f])
            value = w * feature
            sums[a, f] -= value
            sums[b, f] += value
            size_a += sums[a, f] * sums[a, f]
            size_b += sums[b, f] * sums[b, f]
            from_a = feature - reference64[a, f]
            from_b = feature - reference64[b, f]
            leaving += from_a * from_a
            joining += from_b * from_b
        totals[a] -= w
        totals[b] += w
        sizes[a, 0] += size_a
        sizes[b, 0] += size_b
        sizes[a, 1] += totals[a] * totals[a]
        sizes[b, 1] += totals[b] * totals[b]
        change += w * (joining - leaving)
        size += w * (joining + leaving)
    return change, size


SLACK_BINS = 2048  # histogram bins of slack: 0 for slack <= 0, then by binary exponent


@numba.njit(nogil=True, cache=True)
def slack_summary(labels, upper, lower, weights, margin, slack, least, histogram, members):
    """Each row's slack ``lower - upper`` (rounded down, into ``slack``), and what a split needs.

    Rows of slack at most ``margin`` are active (their count is returned);
    of the others (frozen) each cluster's least slack goes to ``least``.
    Every row's slack is binned into ``histogram``: bin 0 holds slack <= 0, bin
    ``e + 1022`` slack in ``[2^(e-1), 2^e)`` (subnormals in bin 1, infinity in
    the last). ``members`` counts each cluster's rows of positive weight
    (``weights`` empty: all).
    """
    weighted = weights.shape[0] == labels.shape[0]
    active = 0
    for i in range(labels.shape[0]):
        a = labels[i]
        if lower[i] == np.inf:  # one center: nothing to change to
            value = np.inf
        else:
            value = (lower[i] - upper[i]) - 2.0 * _U64 * (lower[i] + upper[i])
        slack[i] = value
        if value <= margin:
            active += 1
        elif value < least[a]:
            least[a] = value
        if not value > 0.0:
            histogram[0] += 1
        else:
            biased = (np.float64(value).view(np.int64) >> 52) & 0x7FF  # frexp's exponent + 1022
            histogram[min(max(biased, 1), SLACK_BINS - 1)] += 1
        if not weighted or weights[i] > 0:
            members[a] += 1
    return active


@numba.njit(nogil=True, cache=True)
def gather_active(x, weights, labels, upper, lower, slack, margin, count):  # pragma: no cover
    """The ``count`` rows of slack at most ``margin``, in order, compact: one loop, no index.

    Returns their positions (int32), values, weights (empty if ``weights`` is),
    labels and bounds. Written for :func:`slack_summary`'s count: 2-8 ns a row
    faster than ``flatnonzero`` and NumPy's five gathers (AMD Zen 4, 250k
    rows, d = 8..32, 10-60% of them taken).
    """
    n, d = x.shape
    weighted = weights.shape[0] == n
    rows = np.empty(count, np.int32)
    values = np.empty((count, d), x.dtype)
    taken_weights = np.empty(count if weighted else 0)
    taken_labels = np.empty(count, labels.dtype)
    taken_upper = np.empty(count)
    taken_lower = np.empty(count)
    j = 0
    for i in range(n):
        if slack[i] <= margin:
            rows[j] = i
            for f in range(d):
                values[j, f] = x[i, f]
            if weighted:
                taken_weights[j] = weights[i]
            taken_labels[j] = labels[i]
            taken_upper[j] = upper[i]
            taken_lower[j] = lower[i]
            j += 1
    return rows, values, taken_weights, taken_labels, taken_upper, taken_lower


# -- unit rows (metric="cosine") ---------------------------------------------------------------


_UNSCALED_MIN = 2.0**-1000  # sums of squares below this are scaled first (no underflow)


@numba.njit(inline="always")
def _sum_of_squares(x, divisor):  # pragma: no cover - compiled
    """``sum (x_f / divisor)²`` in float64, in eight interleaved partial sums (a fixed order).

    Eight independent chains instead of one: a long row's sum is not held up
    by the latency of each addition, and the order, written out here, is the
    same on every CPU (nothing is left to the compiler to reassociate).
    """
    d = x.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    f = 0
    while f + 8 <= d:
        v0, v1 = np.float64(x[f]) / divisor, np.float64(x[f + 1]) / divisor
        v2, v3 = np.float64(x[f + 2]) / divisor, np.float64(x[f + 3]) / divisor
        v4, v5 = np.float64(x[f + 4]) / divisor, np.float64(x[f + 5]) / divisor
        v6, v7 = np.float64(x[f + 6]) / divisor, np.float64(x[f + 7]) / divisor
        s0 += v0 * v0
        s1 += v1 * v1
        s2 += v2 * v2
        s3 += v3 * v3
        s4 += v4 * v4
        s5 += v5 * v5
        s6 += v6 * v6
        s7 += v7 * v7
        f += 8
    while f < d:  # the last d % 8 features, in order, into the first partial sum
        v0 = np.float64(x[f]) / divisor
        s0 += v0 * v0
        f += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@numba.njit(nogil=True, cache=True)
def _unit_rows(x, out, zero):  # pragma: no cover - compiled
    """Each row of ``x`` over its Euclidean norm into ``out``; ``zero[i]``: row i is all zeros.

    In float64: ``x * (1 / sqrt(sum x_f²))``, the sum in a fixed order
    (:func:`_sum_of_squares`), the same on every CPU. Rows whose sum of
    squares would underflow or overflow (float64 data only) are divided by
    their largest ``|x_f|`` first. A zero row is left zero; a row holding NaN
    or infinity becomes NaN (the callers' finite checks name it). Returns the
    number of zero rows.
    """
    n, d = x.shape
    count = 0
    for i in range(n):
        total = _sum_of_squares(x[i], 1.0)
        zero[i] = False
        if _UNSCALED_MIN <= total < np.inf:
            scale = 1.0 / np.sqrt(total)
            for f in range(d):
                out[i, f] = np.float64(x[i, f]) * scale
            continue
        largest = 0.0
        for f in range(d):
            largest = max(largest, abs(np.float64(x[i, f])))
        if largest == 0.0:
            zero[i] = True
            count += 1
            for f in range(d):
                out[i, f] = 0.0
        elif not largest < np.inf:  # NaN or infinity
            for f in range(d):
                out[i, f] = np.nan
        else:
            scale = 1.0 / np.sqrt(_sum_of_squares(x[i], largest))
            for f in range(d):
                out[i, f] = (np.float64(x[i, f]) / largest) * scale
    return count


@numba.njit(nogil=True, cache=True)
def first_zero_row(x):  # pragma: no cover - compiled
    """Index of the first row of ``x`` that is all zeros, or -1."""
    for i in range(x.shape[0]):
        zero = True
        for f in range(x.shape[1]):
            if x[i, f] != 0:
                zero = False
                break
        if zero:
            return i
    return -1


def unit_rows(x: np.ndarray, dtype: DTypeLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every row of ``x`` scaled to unit Euclidean length, and which rows are zero.

    The scaling is computed in float64 in a fixed order (bitwise the same on
    every CPU) and the result rounded to ``dtype`` (default: that of ``x``).
    Zero rows stay zero; rows holding NaN or infinity become NaN.

    Returns
    -------
    unit : ndarray of shape (n, d)
    zero : ndarray of shape (n,), bool
    """
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape, dtype=x.dtype if dtype is None else dtype)
    zero = np.empty(len(x), dtype=np.bool_)
    _unit_rows(x, out, zero)
    return out, zero


# -- for seeding (dkmeans.seeding): distances and draws in a fixed order ----------------------


def float_rows(points: np.ndarray) -> np.ndarray:
    """``points`` C-contiguous in float32 if they are float32, else float64 (no copy if so)."""
    dtype = np.float32 if points.dtype == np.float32 else np.float64
    return np.ascontiguousarray(points, dtype=dtype)


def sqdist_to(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Squared distance of every row of ``points`` to ``center``, float64, bitwise reproducible."""
    return _sqdist_to(float_rows(points), np.ascontiguousarray(center, dtype=np.float64))


@numba.njit(nogil=True, cache=True)
def _sqdist_to(points, center):  # pragma: no cover - compiled
    out = np.empty(points.shape[0])
    for i in range(points.shape[0]):
        out[i] = _direct_sqdist(points[i], center)
    return out


@numba.njit(nogil=True, cache=True)
def _trial_values(
    points, norms, closest, weights, trials, trial_sq, dots, rounding, values, potentials
):  # pragma: no cover - compiled
    """Each trial's ``min(closest_i, ||p_i - t||²)`` and weighted total (see trial_potentials).

    ``dots`` (points, trials) from BLAS, in the points' dtype of unit roundoff
    u, give ``||p||² - 2 p·t + ||t||²`` to within ``1.1 (d + 3) u (||p|| +
    ||t||)²`` (a dot product's bound, as for labels) plus an underflow term:
    ``rounding`` is (u, the dtype's smallest normal). A point whose distance
    certainly exceeds its closest keeps its closest, the others get their
    direct float64 distance. The result is the same as computing every
    distance directly.
    """
    m, t_count = dots.shape
    d = points.shape[1]
    relative = 1.01 * (d + 3) * _U64
    gemm = 1.1 * (d + 3) * rounding[0]
    absolute = 4.0 * (d + 3) * rounding[1]
    weighted = weights.shape[0] == m
    sq_norms, point_norms = norms
    trial_norms = np.sqrt(trial_sq)
    potentials[:] = 0.0
    for i in range(m):  # each trial's total still adds the points in order
        nearest = closest[i]
        for t in range(t_count):
            estimate = (sq_norms[i] - 2.0 * np.float64(dots[i, t])) + trial_sq[t]
            reach = point_norms[i] + trial_norms[t]
            lower = (estimate - gemm * reach * reach - absolute) * (1.0 - relative)
            value = nearest
            if not (lower > nearest and estimate < np.inf):
                value = min(value, _direct_sqdist(points[i], trials[t]))
            values[t, i] = value
            potentials[t] += value * weights[i] if weighted else value


def point_norms(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``||p||²``, ``||p||``) of each row in float64, for :func:`trial_potentials` (any order)."""
    sq_norms = np.einsum("ij,ij->i", points, points, dtype=np.float64)
    return sq_norms, np.sqrt(sq_norms)


def trial_potentials(
    points: np.ndarray,
    closest: np.ndarray,
    weights: np.ndarray | None,
    trials: np.ndarray,
    norms: tuple[np.ndarray, np.ndarray] | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each trial center t: ``min(closest, ||p - t||²)`` per point, and its weighted sum.

    The step of greedy k-means++: ``points`` (m, d), ``closest`` (m,)
    each point's squared distance to its nearest chosen center, ``trials``
    (t, d). BLAS filters out the points a trial cannot bring closer (a
    rigorous bound, :func:`_trial_values`); the values and sums are computed
    in a fixed order, so they are bitwise the same on every CPU and BLAS.
    ``norms`` (:func:`point_norms` of ``points``) and ``out`` (t, m) spare
    computing and allocating them at every step.

    Returns
    -------
    values : ndarray of shape (t, m)
    potentials : ndarray of shape (t,)
    """
    points = float_rows(points)  # BLAS in their dtype: float32 is twice as fast
    trials = np.ascontiguousarray(trials, dtype=points.dtype)
    # Beyond the dtype's range (squares of 1e154 and up) these are inf or nan, for which
    # _trial_values computes the distance directly: no warning for them.
    with np.errstate(over="ignore", invalid="ignore"):
        norms = point_norms(points) if norms is None else norms
        trial_sq = np.einsum("ij,ij->i", trials, trials, dtype=np.float64)
        dots = points @ trials.T  # (m, t): a point's trials side by side
    info = np.finfo(points.dtype)
    rounding = (float(info.eps) / 2, float(info.tiny))
    values = np.empty((len(trials), len(points))) if out is None else out
    potentials = np.empty(len(trials))
    w = np.empty(0) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    _trial_values(points, norms, closest, w, trials, trial_sq, dots, rounding, values, potentials)
    return values, potentials


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@numba.njit(nogil=True, cache=True)
def _splitmix_uniforms(key, row_offset, out):  # pragma: no cover - compiled
    for i in range(out.shape[0]):
        z = key + np.uint64(row_offset + i + 1) * _GOLDEN_GAMMA  # wraps modulo 2^64
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
        out[i] = 1.0 - np.float64(z >> np.uint64(11)) * 2.0**-53


def row_uniforms(key: np.uint64, row_offset: int, n_rows: int) -> np.ndarray:
    """Uniforms in (0, 1]: outputs ``row_offset + 1 ..`` of SplitMix64 seeded with ``key``.

    SplitMix64 (Steele, Lea & Flood 2014; the generator that seeds
    xoshiro) adds a constant to its state at each step and mixes it, so
    output i is a function of (key, i) alone: any block computes its rows'
    draws directly. Integer arithmetic only: the same on every CPU.
    """
    out = np.empty(int(n_rows))
    _splitmix_uniforms(np.uint64(key), np.uint64(row_offset), out)
    return out


_LN2 = 0.6931471805599453


@numba.njit(inline="always")
def _log(x):  # pragma: no cover - compiled
    """Natural log of a positive float from + - * / only, so bitwise the same on every CPU.

    ``x = m 2^e`` with m in [√½, √2); ``log m = 2 atanh(s)``, s = (m - 1)/(m + 1),
    |s| < 0.172, summed to 13 terms (relative error below 1e-16).
    """
    m, e = math.frexp(x)
    if m < 0.7071067811865476:
        m *= 2.0
        e -= 1
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    term = s
    total = s
    for k in range(3, 29, 2):
        term *= s2
        total += term / k
    return e * _LN2 + 2.0 * total


@numba.njit(nogil=True, cache=True)
def _race(uniforms, weights):  # pragma: no cover - compiled
    best = np.inf
    winner = 0  # no positive weight: no arrival, as with -log(u) / 0 = inf
    for i in range(uniforms.shape[0]):
        if weights[i] > 0.0:
            time = -_log(uniforms[i]) / weights[i]
            if time < best:
                best = time
                winner = i
    return best, winner


def exponential_race(uniforms: np.ndarray, weights: np.ndarray) -> tuple[float, int]:
    """(earliest arrival ``-log(u_i) / w_i``, its row): a row drawn with probability ∝ weight.

    Zero weights never arrive; ties go to the lowest row. Bitwise the same on
    every CPU (no library ``log``).
    """
    return _race(
        np.ascontiguousarray(uniforms, np.float64), np.ascontiguousarray(weights, np.float64)
    )


@numba.njit(nogil=True, cache=True)
def _keep_nearer(x, candidates64, nearest, sqdist, new_labels, new_sqdist, pending, expansion):
    """Each row's nearer of its incumbent candidate and its nearest new one, exactly.

    ``nearest``/``sqdist`` are updated in place. The new candidates come after
    the incumbents, so a tie keeps the incumbent (the lower index). Direct
    float64 distances (relative error ``(d + 3) u``) decide almost every row;
    the others are compared exactly (:func:`dkmeans.exact.compare`), or
    flagged in ``pending`` where the values are too extreme for that.
    """
    n, d = x.shape
    relative = 1.01 * (d + 3) * _U64
    absolute = (d + 3) * 2.0**-1070
    for i in range(n):
        old, new = nearest[i], new_labels[i]
        a, b = sqdist[i], new_sqdist[i]
        if b * (1.0 + relative) + absolute < a * (1.0 - relative) - absolute:
            take = True
        elif b * (1.0 - relative) - absolute > a * (1.0 + relative) + absolute:
            take = False
        else:
            sign = exact.compare(x[i], candidates64[new], candidates64[old], expansion)
            pending[i] = sign == 2
            take = sign < 0
        if take:
            nearest[i] = new
            sqdist[i] = b


def nearer(
    x: np.ndarray,
    candidates: np.ndarray,
    first_new: int,
    nearest: np.ndarray | None,
    sqdist: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest candidate and its squared distance, given those among the older ones.

    ``candidates[:first_new]`` are the ones ``nearest``/``sqdist`` (None before
    any) already account for; the rest are new. Only the distances to the new
    ones are computed. The result is exactly :func:`assign` of ``x`` to all
    the candidates: the exact nearest (ties to the lowest index) and its
    float64 squared distance, features in order.

    Returns
    -------
    nearest : ndarray of shape (n,), int32
    sqdist : ndarray of shape (n,), float64
    """
    x = np.ascontiguousarray(x)
    if first_new >= len(candidates):
        return nearest, sqdist
    labels, new_sqdist = assign(x, candidates[first_new:])
    labels = (labels + first_new).astype(np.int32)
    if nearest is None:
        return labels, new_sqdist
    nearest, sqdist = nearest.astype(np.int32), sqdist.astype(np.float64)
    candidates64 = np.ascontiguousarray(candidates, dtype=np.float64)
    pending = np.zeros(len(x), dtype=np.bool_)
    _keep_nearer(
        x,
        candidates64,
        nearest,
        sqdist,
        labels,
        new_sqdist,
        pending,
        np.empty(12 * x.shape[1] + 4),
    )
    for i in np.flatnonzero(pending):  # too extreme for the expansions: rationals
        pair = np.array([nearest[i], labels[i]])
        choice = np.zeros(1, dtype=np.int64)
        exact.nearest_in_python(x[i : i + 1], candidates[pair], np.array([0]), choice)
        if choice[0] == 1:
            nearest[i], sqdist[i] = labels[i], new_sqdist[i]
    return nearest, sqdist
