"""Statistics for evaluations: intervals, tests and contrasts (numpy/scipy only).

Pipeline position: the ``stats`` stage between evaluation and the report. ``sublim.results``
calls these to aggregate per question -> per model -> across seeds and to contrast conditions
(trait student minus control student). Everything is a plain function of arrays; bootstrap
resampling takes an explicit ``numpy.random.Generator``.

The textbook tests are scipy's (``ttest_ind(equal_var=False)``, ``ttest_rel``, ``ttest_1samp``,
``binomtest(...).proportion_ci("wilson")``, ``false_discovery_control``); the functions here are
thin wrappers that add two policies:

- a quantity that cannot be computed from the data given (an interval from one value, a test
  with one seed per arm) is ``nan``, never an exception, so a one-seed smoke run still produces a
  report; any nan among the inputs propagates to the result (nothing is dropped silently);
- a contrast whose units all have the same value in each arm (zero spread: the t statistic is
  0/0 or infinite) has no test: p-value and interval are nan and the result says
  ``no_spread: True``, so a report never calls such a contrast significant.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

Alternative = Literal["two-sided", "greater", "less"]
NAN = math.nan
NO_SPREAD_NOTE = "no spread: every unit of each arm has the same value, so there is no test"


def _arr(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a


def _constant(a: np.ndarray) -> bool:
    return bool(a.size == 0 or np.all(a == a[0]))


@contextmanager
def _quiet() -> Iterator[None]:
    """scipy warns of "precision loss" for (nearly) constant data; exact constants are handled
    before scipy is called, and the near-constant results are still correct to rounding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _check_alternative(alternative: str) -> None:
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")


def t_interval(
    values: Sequence[float] | np.ndarray, conf: float = 0.95
) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval of the mean (scipy's ``ttest_1samp``).

    n = 1 gives ``(v, nan, nan)``; n = 0 or any nan gives all nan; zero spread gives a
    zero-width interval."""
    a = _arr(values)
    n = a.size
    if n == 0 or np.isnan(a).any():
        return NAN, NAN, NAN
    m = float(a.mean())
    if n == 1:
        return m, NAN, NAN
    if _constant(a):
        return m, m, m
    with _quiet():
        ci = sps.ttest_1samp(a, 0.0).confidence_interval(conf)
    return m, float(ci.low), float(ci.high)


def wilson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float, float]:
    """Proportion k/n with its Wilson score interval (scipy's ``binomtest(...).proportion_ci``).

    Valid only when the n trials are independent; answers pooled over questions or models are
    not (use ``cluster_rate`` for those)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return NAN, NAN, NAN
    ci = sps.binomtest(k, n).proportion_ci(conf, method="wilson")
    return k / n, max(0.0, float(ci.low)), min(1.0, float(ci.high))


def cluster_rate(
    hits: Sequence[float] | np.ndarray,
    clusters: Sequence[Any] | np.ndarray,
    conf: float = 0.95,
) -> dict[str, Any]:
    """A rate over answers with an interval clustered by ``clusters`` (questions, or models).

    Each cluster contributes the share of its answers that are hits; the interval is the
    t-interval over those cluster shares, so answers of one question (which share the question's
    difficulty and often its sampling seeds) count as one unit, not as independent trials. The
    estimate is the mean of the cluster shares (equal to the pooled share when clusters have
    equal size). Returns ``{mean, ci95: [lo, hi], no_spread, k, n, n_clusters, interval}``; one
    cluster, or clusters that all have the same share (``no_spread``), give no interval (nan)."""
    h = _arr(hits)
    c = np.asarray(list(clusters), dtype=object).ravel()
    if h.size != c.size:
        raise ValueError(f"need one cluster per answer, got {h.size} answers and {c.size}")
    keys = list(dict.fromkeys(c.tolist()))
    shares = [float(h[c == key].mean()) for key in keys]
    m, lo, hi = t_interval(shares, conf) if shares else (NAN, NAN, NAN)
    no_spread = len(shares) >= 2 and len(set(shares)) == 1
    if no_spread:  # every cluster alike (e.g. 0 on every question): no interval, not [m, m]
        lo = hi = NAN
    if shares and not math.isnan(lo):
        lo, hi = max(0.0, lo), min(1.0, hi)
    return {
        "mean": m,
        "ci95": [lo, hi],
        "no_spread": no_spread,
        "k": int(np.nansum(h)),
        "n": int(h.size),
        "n_clusters": len(keys),
        "interval": "t over cluster shares",
    }


def _no_spread(out: dict[str, Any], diff: float) -> dict[str, Any]:
    return {**out, "mean": diff, "ci95": [NAN, NAN], "p_value": NAN, "no_spread": True}


def welch_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    alternative: Alternative = "two-sided",
) -> float:
    """p-value of Welch's unequal-variance t-test of mean(a) vs mean(b) (nan if an arm has
    fewer than 2 values, or if both arms have zero spread). ``alternative="greater"`` tests
    mean(a) > mean(b)."""
    return float(contrast(a, b, alternative=alternative)["p_value"])


def contrast(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    conf: float = 0.95,
    alternative: Alternative = "two-sided",
) -> dict[str, Any]:
    """mean(a) - mean(b) with Welch's t-test and its Welch-Satterthwaite interval
    (scipy's ``ttest_ind(equal_var=False)`` and ``.confidence_interval``).

    Returns ``{mean, ci95: [lo, hi], p_value, test: "welch_t", n_a, n_b, df, no_spread}``; the
    interval and p-value are nan when an arm has fewer than 2 values or when both arms have
    zero spread (``no_spread: True``)."""
    _check_alternative(alternative)
    x, y = _arr(a), _arr(b)
    out: dict[str, Any] = {
        "test": "welch_t",
        "n_a": int(x.size),
        "n_b": int(y.size),
        "no_spread": False,
    }
    if x.size == 0 or y.size == 0 or np.isnan(x).any() or np.isnan(y).any():
        return {**out, "mean": NAN, "ci95": [NAN, NAN], "p_value": NAN, "df": NAN}
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return {**out, "mean": diff, "ci95": [NAN, NAN], "p_value": NAN, "df": NAN}
    if _constant(x) and _constant(y):
        return _no_spread({**out, "df": NAN}, diff)
    with _quiet():
        res = sps.ttest_ind(x, y, equal_var=False, alternative=alternative)
        two = res if alternative == "two-sided" else sps.ttest_ind(x, y, equal_var=False)
        ci = two.confidence_interval(conf)  # always the two-sided interval
    return {
        **out,
        "mean": diff,
        "ci95": [float(ci.low), float(ci.high)],
        "p_value": float(res.pvalue),
        "df": float(res.df),
    }


def paired_contrast(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    conf: float = 0.95,
    alternative: Alternative = "two-sided",
) -> dict[str, Any]:
    """mean(a - b) over paired units (e.g. the same questions asked of two single models) with
    the paired t-test and its interval (scipy's ``ttest_rel``). Same keys as ``contrast``,
    ``test: "paired_t"``; a constant difference is ``no_spread``."""
    _check_alternative(alternative)
    x, y = _arr(a), _arr(b)
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal lengths, got {x.size} and {y.size}")
    d = x - y
    out: dict[str, Any] = {
        "test": "paired_t",
        "n_a": int(x.size),
        "n_b": int(y.size),
        "df": float(d.size - 1),
        "no_spread": False,
    }
    if d.size == 0 or np.isnan(d).any():
        return {**out, "mean": NAN, "ci95": [NAN, NAN], "p_value": NAN}
    m = float(d.mean())
    if d.size < 2:
        return {**out, "mean": m, "ci95": [NAN, NAN], "p_value": NAN}
    if _constant(d):
        return _no_spread(out, m)
    with _quiet():
        res = sps.ttest_rel(x, y, alternative=alternative)
        ci = (res if alternative == "two-sided" else sps.ttest_rel(x, y)).confidence_interval(conf)
    return {**out, "mean": m, "ci95": [float(ci.low), float(ci.high)], "p_value": float(res.pvalue)}


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
    required: the bootstrap is random and must be seeded explicitly by the caller.

    Not calibrated for few seeds: with 3-5 seeds per arm the percentile interval is narrower
    than Welch's (the resampled seed variance is (n-1)/n of the sample variance and there is no
    t-quantile), so it is a robustness check beside the t-interval, not a replacement."""
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
    """Benjamini-Hochberg adjusted p-values (false discovery rate; scipy's
    ``false_discovery_control``), in the input order; nan entries stay nan and do not count as
    tests."""
    p = _arr(p_values)
    out = np.full(p.shape, NAN)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = sps.false_discovery_control(p[ok], method="bh")
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
    (1 + #{perm >= obs}) / (1 + n_perm), so never 0. Valid only for independent draws: the
    matrix does not use it (its answers cluster by student and share sampling seeds)."""
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
    exchanged between the two tables within each trait, keeping every row total. Valid only
    for independent draws (the matrix uses the student-level ``permutation_p_diagonal``)."""
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


# The tests of the matrix are over students, the unit that was trained (PAPER.md's design: one
# teacher dataset per (teacher base, trait), several student seeds on each). A student's
# answers share its weights and, in sublim's evaluation, sampling seeds with other models
# (preference.row_seed), so single answers are not independent units and a test that permutes
# them is invalid in both directions (docs/matrix_test.md). Per student, the metric is the
# share of its sampled answers that name each trait; the statistic of a cell is the
# *own-trait advantage*: for each trait X, the mean share of X among students taught X minus
# the mean share of X among students taught another trait, averaged over X. Base preferences
# cancel (every student of the cell has the same base), and subliminal learning predicts a
# positive value. The p-value permutes which teacher trait each student had, students whole.
# Inference is conditional on the teacher datasets (as the headline Welch over seeds is): seeds
# of one dataset are exchangeable with those of another under H0 only when a dataset carries no
# drift of its own; pass per-dataset means (one row per teacher dataset) to test at that level.


def student_shares(students: Sequence[Sequence[str]], traits: Sequence[str]) -> np.ndarray:
    """(n_students, n_traits) share of each student's answers that name each trait (nan for a
    student with no answers)."""
    out = np.full((len(students), len(traits)), NAN)
    for i, ans in enumerate(students):
        if len(ans):
            a = np.asarray(list(ans), dtype=object)
            out[i] = [float(np.mean(a == t)) for t in traits]
    return out


def _advantage(y: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Own-trait advantage of a batch: ``y`` (B or 1, n, K) values, ``onehot`` (B or 1, n, K)
    teacher-trait indicators -> (B,). Traits taught to no student, or to every student, have no
    comparison and are left out of the average."""
    sums = np.sum(y * onehot, axis=1)  # (B, K): sum of share X over students taught X
    tot = np.sum(y, axis=1)
    n_x = np.sum(onehot, axis=1).astype(float)
    n = float(onehot.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = sums / n_x - (tot - sums) / (n - n_x)
    ok = (n_x > 0) & (n_x < n)
    diff = np.where(ok, diff, 0.0)
    k = np.maximum(ok.sum(axis=1), 1)
    return np.where(ok.any(axis=1), diff.sum(axis=1) / k, NAN)


def own_trait_advantage(values: np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """The cell statistic: ``values`` (n_units, K) per-unit share (or other metric) of each
    trait, ``labels`` (n_units,) the index of the trait each unit's teacher had."""
    y = np.asarray(values, dtype=float)
    lab = np.asarray(labels, dtype=int)
    onehot = (lab[:, None] == np.arange(y.shape[1])[None, :]).astype(float)
    return float(_advantage(y[None], onehot[None])[0])


def permutation_p_own_trait(
    values: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    n_perm: int = 2000,
) -> dict[str, Any]:
    """One-sided permutation test that units taught trait X favour X more than units taught
    another trait (``own_trait_advantage`` > 0), permuting the teacher-trait labels across
    units (students, or teacher datasets). ``{statistic, p_value, n_units, no_spread}``;
    p = (1 + #{perm >= obs}) / (1 + n_perm). nan p-value with fewer than two traits among the
    units, and ``no_spread`` (p nan) when every unit has the same values."""
    y = np.asarray(values, dtype=float)
    lab = np.asarray(labels, dtype=int)
    keep = ~np.isnan(y).any(axis=1)
    y, lab = y[keep], lab[keep]
    out: dict[str, Any] = {"n_units": int(lab.size), "no_spread": False}
    if lab.size == 0 or np.unique(lab).size < 2:
        return {**out, "statistic": NAN, "p_value": NAN}
    obs = own_trait_advantage(y, lab)
    if np.all(y == y[0]):
        return {**out, "statistic": obs, "p_value": NAN, "no_spread": True}
    perm = rng.permuted(np.tile(lab, (n_perm, 1)), axis=1)
    onehot = (perm[:, :, None] == np.arange(y.shape[1])[None, None, :]).astype(float)
    stat = _advantage(y[None], onehot)
    p = (1 + np.sum(stat >= obs - 1e-12)) / (1 + n_perm)
    return {**out, "statistic": obs, "p_value": float(p)}


def permutation_p_diagonal(
    values_a: np.ndarray,
    labels_a: Sequence[int] | np.ndarray,
    values_b: np.ndarray,
    labels_b: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    n_perm: int = 2000,
) -> dict[str, Any]:
    """One-sided test that cell a (the diagonal) has a larger own-trait advantage than cell b
    (an off-diagonal cell of the same student base). H0: the teacher's base does not matter,
    so units taught the same trait are exchangeable between the two cells; the permutation
    reassigns them within each trait, keeping every cell's count per trait.
    ``{statistic: adv(a) - adv(b), p_value, no_spread}``."""
    ya, yb = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    la, lb = np.asarray(labels_a, dtype=int), np.asarray(labels_b, dtype=int)
    ka, kb = ~np.isnan(ya).any(axis=1), ~np.isnan(yb).any(axis=1)
    ya, la, yb, lb = ya[ka], la[ka], yb[kb], lb[kb]
    obs = own_trait_advantage(ya, la) - own_trait_advantage(yb, lb)
    pool = np.concatenate([ya, yb])
    if math.isnan(obs):
        return {"statistic": NAN, "p_value": NAN, "no_spread": False}
    if np.all(pool == pool[0]):
        return {"statistic": obs, "p_value": NAN, "no_spread": True}
    lab = np.concatenate([la, lb])
    k = ya.shape[1]
    ia, ib = [], []
    for x in np.unique(lab):
        idx = np.flatnonzero(lab == x)
        n_a = int(np.sum(la == x))
        perm = rng.permuted(np.tile(idx, (n_perm, 1)), axis=1)
        ia.append(perm[:, :n_a])
        ib.append(perm[:, n_a:])
    pa, pb = np.concatenate(ia, axis=1), np.concatenate(ib, axis=1)
    oh_a = (lab[pa][:, :, None] == np.arange(k)).astype(float)
    oh_b = (lab[pb][:, :, None] == np.arange(k)).astype(float)
    stat = _advantage(pool[pa], oh_a) - _advantage(pool[pb], oh_b)
    p = (1 + np.sum(stat >= obs - 1e-12)) / (1 + n_perm)
    return {"statistic": obs, "p_value": float(p), "no_spread": False}


def transmission_matrix(
    answers_by_cell: Mapping[tuple[str, str], Mapping[str, Sequence[Sequence[str]]]],
    rng: np.random.Generator | None = None,
    n_samples: int = 4000,
    alpha: float = 0.5,
    n_perm: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The cross-model transmission matrix, tested over students.

    ``answers_by_cell[(teacher_base, student_base)][trait]`` is one list per *student* (trained
    on the data of the teacher from ``teacher_base`` given ``trait``) of its answer categories
    (e.g. ``sublim.evals.preference.classify`` of each sampled answer). For every cell: the
    pooled contingency table (traits x answer categories), the plug-in NMI with its posterior
    mean and 95% credible interval (``nmi_posterior``; descriptive, never a test: it cannot
    include 0), the own-trait advantage over students and its one-sided student-level
    permutation p-value (``permutation_p_own_trait``), with Benjamini-Hochberg q-values across
    cells. For every off-diagonal cell (t, s) whose column has a diagonal cell (s, s): the
    diagonal-minus-off-diagonal NMI (posterior mean and interval, descriptive) and advantage,
    with a one-sided student-level permutation p-value (``permutation_p_diagonal``), BH across
    those cells. A test whose students all have the same answer shares is ``no_spread`` (p and q
    null).

    ``rng`` defaults to ``numpy.random.default_rng(seed)``; the result is a JSON-safe dict (the
    ``matrix`` section of results.json)."""
    if not answers_by_cell:
        raise ValueError("transmission_matrix needs at least one cell")
    g = rng if rng is not None else np.random.default_rng(seed)
    keys = list(answers_by_cell)
    teachers = list(dict.fromkeys(t for t, _ in keys))
    students = list(dict.fromkeys(s for _, s in keys))
    traits = sorted({tr for cell in answers_by_cell.values() for tr in cell})
    cats = sorted(
        {a for cell in answers_by_cell.values() for st in cell.values() for ans in st for a in ans}
    )
    ci = {c: i for i, c in enumerate(cats)}
    tables: dict[tuple[str, str], np.ndarray] = {}
    post: dict[tuple[str, str], np.ndarray] = {}
    units: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    cells: list[dict[str, Any]] = []
    for key in keys:
        tab = np.zeros((len(traits), len(cats)))
        rows, labs = [], []
        for i, tr in enumerate(traits):
            per_student = answers_by_cell[key].get(tr, ())
            for ans in per_student:
                for a in ans:
                    tab[i, ci[a]] += 1
            rows.append(student_shares(per_student, traits))
            labs += [i] * len(per_student)
        y = np.concatenate(rows) if rows else np.zeros((0, len(traits)))
        units[key] = (y, np.asarray(labs, dtype=int))
        tables[key] = tab
        post[key] = nmi_posterior(tab, g, n_samples, alpha)
        lo, hi = np.quantile(post[key], [0.025, 0.975])
        test = permutation_p_own_trait(y, units[key][1], g, n_perm)
        cells.append(
            {
                "teacher_base": key[0],
                "student_base": key[1],
                "diagonal": key[0] == key[1],
                "n": int(tab.sum()),
                "n_students": test["n_units"],
                "counts": tab.astype(int).tolist(),
                "nmi": float(nmi_from_joint(tab)),
                "nmi_posterior": {"mean": float(post[key].mean()), "ci95": [float(lo), float(hi)]},
                "own_trait_advantage": test["statistic"],
                "p_value": test["p_value"],
                "no_spread": test["no_spread"],
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
        res = permutation_p_diagonal(*units[(s, s)], *units[(t, s)], g, n_perm)
        tests.append(
            {
                "student_base": s,
                "teacher_base": t,
                "nmi_diff": float(nmi_from_joint(tables[(s, s)]) - nmi_from_joint(tables[(t, s)])),
                "diff_posterior": {"mean": float(diff.mean()), "ci95": [float(lo), float(hi)]},
                "prob_diagonal_greater": float(np.mean(diff > 0)),
                "advantage_diff": res["statistic"],
                "p_value": res["p_value"],
                "no_spread": res["no_spread"],
            }
        )
    for tst, qq in zip(tests, benjamini_hochberg([x["p_value"] for x in tests])):
        tst["q_value"] = None if math.isnan(qq) else float(qq)
        tst["p_value"] = None if math.isnan(tst["p_value"]) else tst["p_value"]
    return {
        "teacher_bases": teachers,
        "student_bases": students,
        "traits": traits,
        "categories": cats,
        "method": {
            "unit": "student (one model per student seed per teacher dataset); inference is "
            "conditional on the teacher datasets",
            "nmi": "I(T;A) / ((H(T) + H(A)) / 2), natural logs, answers pooled (descriptive)",
            "posterior": "per-trait Dirichlet(counts + alpha) over answer categories, trait "
            "shares fixed by design (descriptive: the NMI posterior never includes 0)",
            "alpha": alpha,
            "n_posterior_samples": n_samples,
            "n_permutations": n_perm,
            "statistic": "own-trait advantage: per trait X, mean share of answers naming X "
            "among students taught X minus among students taught another trait, averaged over X",
            "cell_test": "teacher-trait labels permuted across students (one-sided), BH across "
            "cells",
            "diagonal_test": "students exchanged between the diagonal and an off-diagonal cell "
            "of the same student base within each trait (one-sided, advantage difference), BH "
            "across off-diagonal cells",
        },
        "cells": cells,
        "diagonal_tests": tests,
    }
