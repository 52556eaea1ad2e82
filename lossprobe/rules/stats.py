"""Robust, scale-free statistics the curve rules share (numpy only)."""
from __future__ import annotations

import functools

import numpy as np

MAD_TO_SIGMA = 1.4826  # MAD of a normal sample times this estimates its standard deviation


def median(x: np.ndarray) -> float:
    """``np.median`` of a 1-D array (NaN when it holds a NaN or nothing), computed the same
    way -- one partition, the mean of the two middle values -- without its generic-axis
    machinery, which costs five times the work on the short series the rules read."""
    n = x.size
    if n == 0:
        return float("nan")
    k = n // 2
    if n % 2:
        part = np.partition(x, (k, n - 1))     # the last slot gets the largest (NaN sorts last)
        m = part[k]
    else:
        part = np.partition(x, (k - 1, k, n - 1))
        m = (part[k - 1] + part[k]) / 2
    return float("nan") if np.isnan(part[-1]) else float(m)


def row_median(m: np.ndarray) -> np.ndarray:
    """``np.median(m, axis=1)`` of a 2-D float array, computed the same way -- one partition
    of each row, the mean of its two middle values, NaN for a row holding a NaN -- without
    the generic-axis machinery (a third of the cost on the few-hundred-row blocks the rules
    read)."""
    m = np.asarray(m, dtype=float)
    rows, n = m.shape
    if n == 0 or rows == 0:
        return np.median(m, axis=1)
    k = n // 2
    # np.mean sums from 0.0, so a median of -0.0 comes out as 0.0: the "0.0 +" keeps that
    if n % 2:
        part = np.partition(m, (k, n - 1), axis=1)     # the last column gets the largest (NaN sorts last)
        out = 0.0 + part[:, k]
    else:
        part = np.partition(m, (k - 1, k, n - 1), axis=1)
        out = (0.0 + part[:, k - 1] + part[:, k]) / 2
    out[np.isnan(part[:, -1])] = np.nan
    return out


# numpy reduces a (steps, n) array along either axis one short row at a time while n is
# small (a (1024, 8) boolean any() costs ~15 us); up to this width, reducing the contiguous
# transposed copy instead is 3-4x faster (measured at widths 2 to 512: even at 32).
NARROW = 32


def along(b: np.ndarray, how: str, axis: int) -> np.ndarray:
    """``b.any(axis=axis)`` (``how`` "any", "all" or "sum") of a 2-D boolean array: the same
    values (a boolean or integer reduction is exact in any order), through the transposed
    copy when the rows are narrow."""
    if b.shape[1] > NARROW:
        return getattr(b, how)(axis=axis)
    return getattr(np.ascontiguousarray(b.T), how)(axis=1 - axis)


def finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x[np.isfinite(x)]


def robust_sigma(x: np.ndarray) -> float:
    x = finite(x)
    if x.size < 2:
        return 0.0
    return float(MAD_TO_SIGMA * median(np.abs(x - median(x))))


@functools.lru_cache(maxsize=8)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs i < j of n points (the rules ask for the same few n on every evaluation)."""
    i, j = np.triu_indices(n, 1)
    i.flags.writeable = j.flags.writeable = False
    return i, j


def theil_sen(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Median of pairwise slopes and a robust z-score of it (slope / its standard error).

    The standard error comes from the robust spread of the residuals around the fit,
    so a trend counts only when it stands out of the curve's own noise.
    """
    t, y = np.asarray(t, float), np.asarray(y, float)
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = t[ok], y[ok]
    n = t.size
    if n < 4:
        return 0.0, 0.0
    i, j = _pairs(n)
    dt = t[j] - t[i]
    keep = dt != 0
    if not keep.any():
        return 0.0, 0.0
    slope = median((y[j] - y[i])[keep] / dt[keep])
    resid = y - slope * t
    sigma = robust_sigma(resid - median(resid))
    spread_t = float(np.std(t))
    if spread_t == 0:
        return slope, 0.0
    se = sigma / (spread_t * np.sqrt(n)) if sigma > 0 else 0.0
    z = slope / se if se > 0 else (np.inf * np.sign(slope) if slope else 0.0)
    return slope, float(z)


def row_nanmedian(m: np.ndarray) -> np.ndarray:
    """The median of each row's non-NaN values (NaN for a row without any): what
    ``np.nanmedian(m, axis=1)`` gives, without its per-row masked-array path."""
    s = np.sort(m, axis=1)                        # NaNs sort last
    k = np.sum(~np.isnan(s), axis=1)
    rows = np.arange(s.shape[0])
    lo, hi = s[rows, np.maximum(k - 1, 0) // 2], s[rows, k // 2]
    out = (lo + hi) / 2
    out[k == 0] = np.nan
    return out


def thirds(y: np.ndarray) -> tuple[float, float]:
    """Median of the first and of the last third of a series."""
    y = finite(y)
    k = max(1, y.size // 3)
    return median(y[:k]), median(y[-k:])


def longest_run(flags) -> tuple[int, int]:
    """(length, start index) of the longest run of consecutive True values in a 1-D sequence;
    (0, 0) if none. Of several runs of that length, the first."""
    f = np.asarray(flags, dtype=bool)
    if not f.any():
        return 0, 0
    edges = np.diff(f.view(np.int8), prepend=0, append=0)   # +1 where a run starts, -1 after it ends
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    k = int(np.argmax(ends - starts))                       # argmax: the first of the longest
    return int(ends[k] - starts[k]), int(starts[k])
