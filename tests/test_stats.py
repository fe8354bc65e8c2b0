"""Statistics against scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from sublim.stats import (
    benjamini_hochberg,
    bootstrap_ci,
    cluster_rate,
    contrast,
    paired_contrast,
    t_interval,
    welch_test,
    wilson_interval,
)

A = [0.12, 0.18, 0.15, 0.22, 0.09]
B = [0.10, 0.11, 0.08, 0.14]


def test_t_interval_known_value() -> None:
    # mean 3, s = sqrt(2.5), se = 0.70711, t_{0.975, 4} = 2.776445
    m, lo, hi = t_interval([1, 2, 3, 4, 5])
    assert m == 3.0
    assert lo == pytest.approx(3 - 2.776445 * math.sqrt(2.5 / 5), abs=1e-6)
    assert hi == pytest.approx(1.036757 + 2 * 1.963243, abs=1e-5)


def test_t_interval_matches_scipy() -> None:
    m, lo, hi = t_interval(A, conf=0.9)
    ref = sps.t.interval(0.9, len(A) - 1, loc=np.mean(A), scale=sps.sem(A))
    assert (lo, hi) == pytest.approx(ref, abs=1e-12)
    assert m == pytest.approx(np.mean(A))


def test_t_interval_edge_cases() -> None:
    m, lo, hi = t_interval([0.4])
    assert m == 0.4 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(x) for x in t_interval([]))
    assert all(math.isnan(x) for x in t_interval([0.1, math.nan]))
    assert t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)


def test_wilson_matches_scipy_and_known_value() -> None:
    for k, n in [(3, 20), (0, 10), (10, 10), (37, 120)]:
        p, lo, hi = wilson_interval(k, n)
        ref = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert p == k / n
        assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-9)
    # textbook value: 0 successes in 10 trials -> upper bound 0.2775
    assert wilson_interval(0, 10)[2] == pytest.approx(0.2775, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


@pytest.mark.parametrize("alt", ["two-sided", "greater", "less"])
def test_welch_matches_scipy(alt: str) -> None:
    ref = sps.ttest_ind(A, B, equal_var=False, alternative=alt).pvalue
    assert welch_test(A, B, alternative=alt) == pytest.approx(ref, rel=1e-10)


def test_welch_degenerate() -> None:
    assert math.isnan(welch_test([1.0], [1.0, 2.0]))
    # zero spread in both arms: no test (not p = 0 with a zero-width "interval")
    for a, b in [([1.0, 1.0], [1.0, 1.0]), ([2.0, 2.0], [1.0, 1.0])]:
        assert math.isnan(welch_test(a, b))
        c = contrast(a, b)
        assert c["no_spread"] and math.isnan(c["p_value"]) and all(map(math.isnan, c["ci95"]))
        assert c["mean"] == pytest.approx(np.mean(a) - np.mean(b))
    assert math.isnan(welch_test([2.0, 2.0], [1.0, 1.0], alternative="less"))
    # spread in one arm is enough for Welch
    assert not contrast([2.0, 2.0], [1.0, 1.5])["no_spread"]
    pc = paired_contrast([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])  # constant difference
    assert pc["no_spread"] and pc["mean"] == pytest.approx(0.5) and math.isnan(pc["p_value"])


def test_one_sided_tests_keep_the_two_sided_interval() -> None:
    two, one = contrast(A, B), contrast(A, B, alternative="greater")
    assert one["ci95"] == pytest.approx(two["ci95"]) and one["p_value"] == pytest.approx(
        two["p_value"] / 2
    )


def test_cluster_rate_counts_questions_not_answers() -> None:
    # 4 questions x 50 answers: each question is all hits or all misses, so the 200 answers
    # carry only 4 units of information; Wilson over answers would be far too narrow
    hits = np.repeat([1.0, 0.0, 1.0, 0.0], 50)
    qs = np.repeat([0, 1, 2, 3], 50)
    r = cluster_rate(hits, qs)
    ref = sps.ttest_1samp([1.0, 0.0, 1.0, 0.0], 0.0).confidence_interval(0.95)
    assert r["mean"] == 0.5 and (r["k"], r["n"], r["n_clusters"]) == (100, 200, 4)
    assert r["ci95"] == pytest.approx([max(0.0, ref.low), min(1.0, ref.high)])
    _, wlo, whi = wilson_interval(100, 200)
    assert r["ci95"][1] - r["ci95"][0] > 5 * (whi - wlo)
    one = cluster_rate([1.0, 0.0], [7, 7])
    assert one["mean"] == 0.5 and math.isnan(one["ci95"][0])
    with pytest.raises(ValueError):
        cluster_rate([1.0], [0, 1])


def test_contrast_matches_scipy_welch_interval() -> None:
    c = contrast(A, B)
    ref = sps.ttest_ind(A, B, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert c["mean"] == pytest.approx(np.mean(A) - np.mean(B))
    assert c["ci95"] == pytest.approx([ci.low, ci.high], rel=1e-10)
    assert c["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert c["df"] == pytest.approx(ref.df, rel=1e-10)
    assert (c["test"], c["n_a"], c["n_b"]) == ("welch_t", 5, 4)


def test_contrast_hand_computed() -> None:
    # a = [1, 3], b = [0, 0, 0]: var_a/n_a = 1, var_b = 0 -> se = 1, df = 1, t_{0.975,1} = 12.7062
    c = contrast([1.0, 3.0], [0.0, 0.0, 0.0])
    assert c["mean"] == 2.0
    assert c["df"] == pytest.approx(1.0)
    assert c["ci95"] == pytest.approx([2 - 12.7062047, 2 + 12.7062047], abs=1e-6)
    assert c["p_value"] == pytest.approx(2 * sps.t.sf(2.0, 1), rel=1e-12)


def test_contrast_with_one_seed_has_no_interval() -> None:
    c = contrast([0.3], [0.1, 0.2])
    assert c["mean"] == pytest.approx(0.15)
    assert math.isnan(c["ci95"][0]) and math.isnan(c["p_value"])


def test_paired_contrast_matches_scipy() -> None:
    x, y = np.array([0.3, 0.5, 0.2, 0.6, 0.4]), np.array([0.25, 0.41, 0.22, 0.5, 0.3])
    c = paired_contrast(x, y)
    ref = sps.ttest_rel(x, y)
    ci = ref.confidence_interval(0.95)
    assert c["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert c["ci95"] == pytest.approx([ci.low, ci.high], rel=1e-10)
    with pytest.raises(ValueError):
        paired_contrast([1, 2], [1, 2, 3])


def test_bootstrap_known_cases() -> None:
    rng = np.random.default_rng(0)
    a = np.array([[0.1, 0.2, 0.3, 0.4], [0.15, 0.25, 0.35, 0.45]])
    # a constant shift between arms: every replicate gives exactly the shift
    est, lo, hi = bootstrap_ci(a + 0.5, a, rng=rng, resample_seeds=False)
    assert (est, lo, hi) == pytest.approx((0.5, 0.5, 0.5))
    # one arm: interval brackets the mean and lies within the data range
    est, lo, hi = bootstrap_ci(a, rng=np.random.default_rng(1))
    assert est == pytest.approx(a.mean())
    assert a.min() <= lo < est < hi <= a.max()
    with pytest.raises(ValueError):
        bootstrap_ci(a)  # no generator: the caller must seed it


def test_bootstrap_interval_width_matches_normal_theory() -> None:
    # 200 questions of iid N(0, 1): the 95% bootstrap interval of the mean is ~ +-1.96/sqrt(200)
    rng = np.random.default_rng(123)
    x = rng.normal(size=(1, 200))
    _, lo, hi = bootstrap_ci(x, rng=rng, n_boot=4000)
    assert (hi - lo) / 2 == pytest.approx(1.96 * x.std(ddof=1) / math.sqrt(200), rel=0.15)


def test_bootstrap_is_reproducible_given_the_generator() -> None:
    a = np.random.default_rng(5).random((3, 30))
    b = np.random.default_rng(6).random((3, 30))
    r1 = bootstrap_ci(a, b, rng=np.random.default_rng(9))
    r2 = bootstrap_ci(a, b, rng=np.random.default_rng(9))
    assert r1 == r2


def test_benjamini_hochberg_matches_scipy() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.2, 0.5]
    assert benjamini_hochberg(p) == pytest.approx(sps.false_discovery_control(p), rel=1e-12)
    out = benjamini_hochberg([0.01, math.nan, 0.02])
    assert math.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.02)
