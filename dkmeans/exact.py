"""Exact comparisons of squared distances between floats: ``||x - a||²`` vs ``||x - b||²``.

Floats are dyadic rationals, so the exact squared distance between a row and
a center is well defined, and so is which of two centers is nearer. The
kernel (:mod:`dkmeans.kernel`) decides almost every label with rounded
arithmetic and a rigorous error bound; the few it cannot (exact and
near-exact ties) come here.

:func:`compare` works in floating point without rounding: each difference
``x_f - c_f`` is ``s + t`` exactly (two-sum), its square the sum of six
floats exactly (two-products), and all of them go into one floating-point
expansion (Shewchuk, "Adaptive precision floating-point arithmetic and fast
robust geometric predicates", 1997), a sum of non-overlapping floats whose
largest term has the sign of the whole. That needs every term within
``[EXACT_MIN, EXACT_MAX]`` in magnitude (no overflow in Dekker's splitting,
no underflow of the error terms); :func:`nearest_in_python` takes the rare
rows outside it, with Python's rationals.
"""

from __future__ import annotations

import numba
import numpy as np

EXACT_MIN, EXACT_MAX = 2.0**-450, 2.0**480


@numba.njit(inline="always")
def _two_sum(a, b):  # pragma: no cover - compiled
    """``a + b`` as ``s + e`` exactly (Knuth), any magnitudes."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@numba.njit(inline="always")
def _two_product(a, b):  # pragma: no cover - compiled
    """``a * b`` as ``p + e`` exactly (Dekker, with Veltkamp's splitting; no overflow)."""
    p = a * b
    c = 134217729.0 * a  # 2**27 + 1
    a_hi = c - (c - a)
    a_lo = a - a_hi
    c = 134217729.0 * b
    b_hi = c - (c - b)
    b_lo = b - b_hi
    return p, ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo


@numba.njit(inline="always")
def _grow(expansion, n, value):  # pragma: no cover - compiled
    """Add ``value`` to the expansion ``expansion[:n]`` exactly (Shewchuk's Grow-Expansion).

    The expansion's terms do not overlap and increase in magnitude; zeros are
    dropped. Returns the new length.
    """
    if value == 0.0:
        return n
    q = value
    m = 0
    for i in range(n):
        q, h = _two_sum(q, expansion[i])
        if h != 0.0:
            expansion[m] = h
            m += 1
    if q != 0.0:
        expansion[m] = q
        m += 1
    return m


@numba.njit(inline="always")
def _in_exact_range(value):  # pragma: no cover - compiled
    magnitude = abs(value)
    return value == 0.0 or (EXACT_MIN <= magnitude <= EXACT_MAX)


@numba.njit(nogil=True, cache=True)
def compare(x, a, b, expansion):  # pragma: no cover - compiled
    """The sign of ``||x - a||² - ||x - b||²``, exactly: -1, 0 or 1; 2 if out of range.

    ``a`` and ``b`` are float64 rows (exact copies of the stored centers);
    ``expansion`` is scratch space of at least ``12 d`` floats.
    """
    n = 0
    for f in range(x.shape[0]):
        for which in range(2):
            center = a[f] if which == 0 else b[f]
            sign = 1.0 if which == 0 else -1.0
            s, t = _two_sum(np.float64(x[f]), -np.float64(center))
            if not (_in_exact_range(s) and _in_exact_range(t)):
                return 2
            p, e = _two_product(s, s)
            n = _grow(expansion, n, sign * p)
            n = _grow(expansion, n, sign * e)
            if t != 0.0:
                p, e = _two_product(s + s, t)
                n = _grow(expansion, n, sign * p)
                n = _grow(expansion, n, sign * e)
                p, e = _two_product(t, t)
                n = _grow(expansion, n, sign * p)
                n = _grow(expansion, n, sign * e)
    for i in range(n - 1, -1, -1):
        if expansion[i] > 0.0:
            return 1
        if expansion[i] < 0.0:
            return -1
    return 0


def nearest_in_python(x: np.ndarray, centers: np.ndarray, rows: np.ndarray, labels) -> None:
    """Exact nearest centers of ``rows`` in Python's rationals (exponents too extreme).

    A row holding NaN or infinity has no nearest center: it gets label 0, and
    its distance, hence the block's objective, is not finite, which callers
    check (such a row reaches here only when a read returns other values
    than the validated first pass).
    """
    from fractions import Fraction

    exact_centers = [[Fraction(float(v)) for v in center] for center in centers]
    for i in rows:
        if not np.isfinite(x[i]).all():
            labels[i] = 0
            continue
        point = [Fraction(float(v)) for v in x[i]]
        distances = [
            sum((p - c) ** 2 for p, c in zip(point, center, strict=True))
            for center in exact_centers
        ]
        labels[i] = min(range(len(distances)), key=lambda j: (distances[j], j))
