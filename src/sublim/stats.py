"""Statistics for evaluations: intervals, tests and contrasts (numpy/scipy only).

Pipeline position: the ``stats`` stage between evaluation and the report. ``sublim.results``
calls these to aggregate per question -> per model -> across seeds and to contrast conditions
(trait student minus control student). Everything is a plain function of arrays; bootstrap
resampling takes an explicit ``numpy.random.Generator``.

Conventions: an interval is returned as ``(estimate, lo, hi)``; a quantity that cannot be
computed from the data given (an interval from one value, a test with one seed per arm) is
``nan``, never an exception, so a one-seed smoke run still produces a report. Any nan among the
inputs propagates to the result (nothing is dropped silently).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

Alternative = Literal["two-sided", "greater", "less"]
NAN = math.nan


def _arr(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a


def t_interval(
    values: Sequence[float] | np.ndarray, conf: float = 0.95
) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval of the mean.

    n = 1 gives ``(v, nan, nan)``; n = 0 or any nan gives all nan; zero spread gives a
    zero-width interval."""
    a = _arr(values)
    n = a.size
    if n == 0 or np.isnan(a).any():
        return NAN, NAN, NAN
    m = float(a.mean())
    if n == 1:
        return m, NAN, NAN
    se = float(a.std(ddof=1)) / math.sqrt(n)
    h = float(sps.t.ppf(0.5 + conf / 2, df=n - 1)) * se
    return m, m - h, m + h


def wilson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float, float]:
    """Proportion k/n with its Wilson score interval (good at small n and near 0 or 1)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return NAN, NAN, NAN
    p = k / n
    z = float(sps.norm.ppf(0.5 + conf / 2))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def _welch_parts(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(difference of means, standard error, Welch-Satterthwaite degrees of freedom)."""
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se2 = va + vb
    diff = float(a.mean() - b.mean())
    if se2 == 0:
        return diff, 0.0, float(a.size + b.size - 2)
    df = se2**2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return diff, math.sqrt(se2), float(df)


def _p_from_t(t: float, df: float, alternative: Alternative) -> float:
    if alternative == "two-sided":
        return float(2 * sps.t.sf(abs(t), df))
    if alternative == "greater":
        return float(sps.t.sf(t, df))
    if alternative == "less":
        return float(sps.t.cdf(t, df))
    raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")


def _p_degenerate(diff: float, alternative: Alternative) -> float:
    """p-value when both arms have zero spread: the t statistic is 0 or infinite."""
    if diff == 0:
        return 1.0 if alternative == "two-sided" else 0.5
    if alternative == "two-sided":
        return 0.0
    return 0.0 if (diff > 0) == (alternative == "greater") else 1.0


def welch_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    alternative: Alternative = "two-sided",
) -> float:
    """p-value of Welch's unequal-variance t-test of mean(a) vs mean(b) (nan if an arm has
    fewer than 2 values). ``alternative="greater"`` tests mean(a) > mean(b)."""
    x, y = _arr(a), _arr(b)
    if x.size < 2 or y.size < 2 or np.isnan(x).any() or np.isnan(y).any():
        return NAN
    diff, se, df = _welch_parts(x, y)
    if se == 0:
        return _p_degenerate(diff, alternative)
    return _p_from_t(diff / se, df, alternative)


def contrast(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    conf: float = 0.95,
    alternative: Alternative = "two-sided",
) -> dict[str, Any]:
    """mean(a) - mean(b) with a Welch-Satterthwaite interval and Welch's p-value.

    Returns ``{mean, ci95: [lo, hi], p_value, test: "welch_t", n_a, n_b, df}``; the interval
    and p-value are nan when an arm has fewer than 2 values."""
    x, y = _arr(a), _arr(b)
    out: dict[str, Any] = {"test": "welch_t", "n_a": int(x.size), "n_b": int(y.size)}
    if x.size == 0 or y.size == 0 or np.isnan(x).any() or np.isnan(y).any():
        return {**out, "mean": NAN, "ci95": [NAN, NAN], "p_value": NAN, "df": NAN}
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return {**out, "mean": diff, "ci95": [NAN, NAN], "p_value": NAN, "df": NAN}
    diff, se, df = _welch_parts(x, y)
    h = float(sps.t.ppf(0.5 + conf / 2, df)) * se
    p = _p_degenerate(diff, alternative) if se == 0 else _p_from_t(diff / se, df, alternative)
    return {**out, "mean": diff, "ci95": [diff - h, diff + h], "p_value": p, "df": df}


def paired_contrast(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    conf: float = 0.95,
    alternative: Alternative = "two-sided",
) -> dict[str, Any]:
    """mean(a - b) over paired units (e.g. the same questions asked of two single models) with
    a t-interval and the paired t-test. Same keys as ``contrast``, ``test: "paired_t"``."""
    x, y = _arr(a), _arr(b)
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal lengths, got {x.size} and {y.size}")
    d = x - y
    m, lo, hi = t_interval(d, conf)
    out: dict[str, Any] = {
        "test": "paired_t",
        "n_a": int(x.size),
        "n_b": int(y.size),
        "df": float(d.size - 1),
    }
    if d.size < 2 or math.isnan(m):
        return {**out, "mean": m, "ci95": [lo, hi], "p_value": NAN}
    sd = float(d.std(ddof=1))
    p = (
        _p_degenerate(m, alternative)
        if sd == 0
        else _p_from_t(m / (sd / math.sqrt(d.size)), d.size - 1, alternative)
    )
    return {**out, "mean": m, "ci95": [lo, hi], "p_value": p}


def bootstrap_ci(
    a: Sequence[Sequence[float]] | np.ndarray,
    b: Sequence[Sequence[float]] | np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    n_boot: int = 2000,
    conf: float = 0.95,
    resample_seeds: bool = True,
) -> tuple[float, float, float]:
    """Percentile bootstrap of mean(a) (or mean(a) - mean(b)) clustered by question.

    ``a`` and ``b`` are (n_seeds, n_questions) arrays over the same questions in the same
    order. Each replicate draws one set of question indices with replacement and uses it for
    both arms (questions are shared, so their difficulty cancels in the contrast); with
    ``resample_seeds`` each arm's seeds are resampled too (two-level bootstrap). ``rng`` is
    required: the bootstrap is random and must be seeded explicitly by the caller."""
    if rng is None:
        raise ValueError("bootstrap_ci needs an explicit numpy.random.Generator (rng=...)")
    x = np.atleast_2d(np.asarray(a, dtype=float))
    y = None if b is None else np.atleast_2d(np.asarray(b, dtype=float))
    if y is not None and y.shape[1] != x.shape[1]:
        raise ValueError(f"arms must share questions: {x.shape[1]} vs {y.shape[1]} columns")
    if np.isnan(x).any() or (y is not None and np.isnan(y).any()):
        return NAN, NAN, NAN
    est = float(x.mean() - (y.mean() if y is not None else 0.0))
    nq = x.shape[1]
    q = rng.integers(0, nq, size=(n_boot, nq))

    def arm_means(z: np.ndarray) -> np.ndarray:
        if resample_seeds and z.shape[0] > 1:
            s = rng.integers(0, z.shape[0], size=(n_boot, z.shape[0]))
            # z[s][:, :, q] per replicate: gather rows then columns
            rows = z[s]  # (n_boot, n_seeds, nq)
            return np.take_along_axis(rows, q[:, None, :].repeat(z.shape[0], axis=1), axis=2).mean(
                axis=(1, 2)
            )
        return z[:, q].mean(axis=(0, 2))  # z[:, q] is (n_seeds, n_boot, nq)

    reps = arm_means(x) - (arm_means(y) if y is not None else 0.0)
    alpha = (1 - conf) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return est, float(lo), float(hi)


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the input order; nan
    entries stay nan and do not count as tests."""
    p = _arr(p_values)
    out = np.full(p.shape, NAN)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv)
    ranked = pv[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out
