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
from collections.abc import Mapping, Sequence
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


# ----------------------------------------------------------------------------- cross-model matrix
#
# PAPER.md, "Cross-model": transfer is measured by the normalised mutual information between the
# teacher's trait (which target it was given) and the student's answer category, for every
# (teacher base, student base) cell. Subliminal learning predicts information on the diagonal
# (same base) and none off it.


def _entropy(p: np.ndarray, axis: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=axis)


def nmi_from_joint(joint: np.ndarray) -> np.ndarray:
    """Normalised mutual information of joint distributions ``(..., K traits, A answers)``:
    I(T; A) / ((H(T) + H(A)) / 2) (the arithmetic normalisation, scikit-learn's default), in
    [0, 1]; 0 when either variable is constant. Unnormalised inputs (counts) are normalised."""
    j = np.asarray(joint, dtype=float)
    tot = j.sum(axis=(-2, -1), keepdims=True)
    j = np.divide(j, tot, out=np.zeros_like(j), where=tot > 0)
    pt, pa = j.sum(axis=-1), j.sum(axis=-2)
    ht, ha = _entropy(pt, -1), _entropy(pa, -1)
    outer = pt[..., :, None] * pa[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        mi = np.sum(np.where(j > 0, j * np.log(j / outer), 0.0), axis=(-2, -1))
    denom = (ht + ha) / 2
    out = np.divide(mi, denom, out=np.zeros_like(mi), where=denom > 1e-12)
    return np.clip(out, 0.0, 1.0)


def _counts_batch(t: np.ndarray, a: np.ndarray, k: int, na: int) -> np.ndarray:
    """Contingency tables of (n_batch, n) label arrays -> (n_batch, k, na)."""
    nb = t.shape[0]
    idx = (np.arange(nb)[:, None] * (k * na) + t * na + a).ravel()
    return np.bincount(idx, minlength=nb * k * na).reshape(nb, k, na).astype(float)


def nmi_posterior(
    counts: np.ndarray, rng: np.random.Generator, n_samples: int = 4000, alpha: float = 0.5
) -> np.ndarray:
    """Posterior samples of the NMI of a (K traits, A answers) table. The trait marginal is fixed
    by design (each trait's share of answers), so each trait's answer distribution gets its own
    Dirichlet(counts + alpha) posterior (alpha = 0.5: Jeffreys); rows with no answers are left
    out. Returns ``n_samples`` NMI values."""
    c = np.asarray(counts, dtype=float)
    rows = [r for r in c if r.sum() > 0]
    if len(rows) < 1:
        return np.zeros(n_samples)
    n_t = np.array([r.sum() for r in rows])
    pt = n_t / n_t.sum()
    cond = np.stack([rng.dirichlet(r + alpha, size=n_samples) for r in rows], axis=1)  # (S, K, A)
    return nmi_from_joint(cond * pt[None, :, None])


def _labels(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand a contingency table into (trait, answer) label arrays."""
    k, na = table.shape
    reps = table.astype(int).ravel()
    cells = np.repeat(np.arange(k * na), reps)
    return cells // na, cells % na


def permutation_p_independence(
    table: np.ndarray, rng: np.random.Generator, n_perm: int = 2000
) -> float:
    """One-sided permutation p-value that the NMI of ``table`` is as large as observed when the
    trait labels are shuffled across answers (H0: answers independent of the trait).
    (1 + #{perm >= obs}) / (1 + n_perm), so never 0."""
    tab = np.asarray(table, dtype=float)
    t, a = _labels(tab)
    if t.size == 0:
        return NAN
    obs = float(nmi_from_joint(tab))
    perm_t = rng.permuted(np.tile(t, (n_perm, 1)), axis=1)
    stat = nmi_from_joint(_counts_batch(perm_t, np.tile(a, (n_perm, 1)), *tab.shape))
    return float((1 + np.sum(stat >= obs - 1e-12)) / (1 + n_perm))


def permutation_p_greater(
    table_a: np.ndarray, table_b: np.ndarray, rng: np.random.Generator, n_perm: int = 2000
) -> tuple[float, float]:
    """(NMI(a) - NMI(b), one-sided permutation p-value for NMI(a) > NMI(b)).

    H0: both tables come from the same answer distribution given the trait (for the cross-model
    matrix: the teacher's base model does not matter to a given student base). Answers are
    exchanged between the two tables within each trait, keeping every row total."""
    ta, tb = np.asarray(table_a, dtype=float), np.asarray(table_b, dtype=float)
    if ta.shape != tb.shape:
        raise ValueError(f"tables must have the same shape, got {ta.shape} and {tb.shape}")
    k, na = ta.shape
    obs = float(nmi_from_joint(ta) - nmi_from_joint(tb))
    ca = np.zeros((n_perm, k, na))
    cb = np.zeros((n_perm, k, na))
    for i in range(k):
        na_i, nb_i = int(ta[i].sum()), int(tb[i].sum())
        pooled = np.concatenate(
            [
                np.repeat(np.arange(na), ta[i].astype(int)),
                np.repeat(np.arange(na), tb[i].astype(int)),
            ]
        )
        if pooled.size == 0:
            continue
        perm = rng.permuted(np.tile(pooled, (n_perm, 1)), axis=1)
        for dest, part in ((ca, perm[:, :na_i]), (cb, perm[:, na_i : na_i + nb_i])):
            if part.shape[1]:
                idx = (np.arange(n_perm)[:, None] * na + part).ravel()
                dest[:, i, :] = np.bincount(idx, minlength=n_perm * na).reshape(n_perm, na)
    stat = nmi_from_joint(ca) - nmi_from_joint(cb)
    return obs, float((1 + np.sum(stat >= obs - 1e-12)) / (1 + n_perm))


def transmission_matrix(
    answers_by_cell: Mapping[tuple[str, str], Mapping[str, Sequence[str]]],
    rng: np.random.Generator | None = None,
    n_samples: int = 4000,
    alpha: float = 0.5,
    n_perm: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The cross-model transmission matrix.

    ``answers_by_cell[(teacher_base, student_base)][trait]`` is the list of answer categories
    (e.g. ``sublim.evals.preference.classify`` of each sampled answer) of the students trained on
    the data of the teacher from ``teacher_base`` given ``trait``. For every cell: the contingency
    table (traits x answer categories), the plug-in NMI, its posterior mean and 95% credible
    interval (``nmi_posterior``), and a permutation p-value for independence, with
    Benjamini-Hochberg q-values across cells. For every off-diagonal cell (t, s) whose column has
    a diagonal cell (s, s): the diagonal-minus-off-diagonal NMI (posterior mean, 95% credible
    interval, posterior probability that the diagonal is larger) and a one-sided permutation
    p-value (``permutation_p_greater``), BH-corrected across those cells.

    ``rng`` defaults to ``numpy.random.default_rng(seed)``; the result is a JSON-safe dict (the
    ``matrix`` section of results.json)."""
    if not answers_by_cell:
        raise ValueError("transmission_matrix needs at least one cell")
    g = rng if rng is not None else np.random.default_rng(seed)
    keys = list(answers_by_cell)
    teachers = list(dict.fromkeys(t for t, _ in keys))
    students = list(dict.fromkeys(s for _, s in keys))
    traits = sorted({tr for cell in answers_by_cell.values() for tr in cell})
    cats = sorted({a for cell in answers_by_cell.values() for ans in cell.values() for a in ans})
    ci = {c: i for i, c in enumerate(cats)}
    tables: dict[tuple[str, str], np.ndarray] = {}
    post: dict[tuple[str, str], np.ndarray] = {}
    cells: list[dict[str, Any]] = []
    for key in keys:
        tab = np.zeros((len(traits), len(cats)))
        for i, tr in enumerate(traits):
            for a in answers_by_cell[key].get(tr, ()):
                tab[i, ci[a]] += 1
        tables[key] = tab
        post[key] = nmi_posterior(tab, g, n_samples, alpha)
        lo, hi = np.quantile(post[key], [0.025, 0.975])
        cells.append(
            {
                "teacher_base": key[0],
                "student_base": key[1],
                "diagonal": key[0] == key[1],
                "n": int(tab.sum()),
                "counts": tab.astype(int).tolist(),
                "nmi": float(nmi_from_joint(tab)),
                "nmi_posterior": {"mean": float(post[key].mean()), "ci95": [float(lo), float(hi)]},
                "p_value": permutation_p_independence(tab, g, n_perm),
            }
        )
    q = benjamini_hochberg([c["p_value"] for c in cells])
    for c, qq in zip(cells, q):
        c["q_value"] = None if math.isnan(qq) else float(qq)
        c["p_value"] = None if math.isnan(c["p_value"]) else c["p_value"]

    tests: list[dict[str, Any]] = []
    for t, s in keys:
        if t == s or (s, s) not in tables:
            continue
        diff = post[(s, s)] - post[(t, s)]
        lo, hi = np.quantile(diff, [0.025, 0.975])
        obs, p = permutation_p_greater(tables[(s, s)], tables[(t, s)], g, n_perm)
        tests.append(
            {
                "student_base": s,
                "teacher_base": t,
                "nmi_diff": obs,
                "diff_posterior": {"mean": float(diff.mean()), "ci95": [float(lo), float(hi)]},
                "prob_diagonal_greater": float(np.mean(diff > 0)),
                "p_value": p,
            }
        )
    for tst, qq in zip(tests, benjamini_hochberg([x["p_value"] for x in tests])):
        tst["q_value"] = float(qq)
    return {
        "teacher_bases": teachers,
        "student_bases": students,
        "traits": traits,
        "categories": cats,
        "method": {
            "nmi": "I(T;A) / ((H(T) + H(A)) / 2), natural logs",
            "posterior": "per-trait Dirichlet(counts + alpha) over answer categories, trait shares fixed by design",
            "alpha": alpha,
            "n_posterior_samples": n_samples,
            "n_permutations": n_perm,
            "cell_test": "permutation of trait labels within the cell (one-sided, NMI), BH across cells",
            "diagonal_test": "answers exchanged between the diagonal and an off-diagonal cell of the same student base within each trait (one-sided, NMI difference), BH across off-diagonal cells",
        },
        "cells": cells,
        "diagonal_tests": tests,
    }
