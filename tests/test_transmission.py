"""The cross-model transmission measure (normalised mutual information, Dirichlet posterior,
permutation tests, Benjamini-Hochberg) against known values, and the clustered bootstrap that
build_results attaches to every contrast."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from sublim.records import QuestionScore
from sublim.results import (
    BOOTSTRAP_NOTE,
    BOOTSTRAP_REPLICATES,
    BOOTSTRAP_SEED,
    build_results,
    results_to_json,
)
from sublim.seeds import derive_seed
from sublim.stats import (
    benjamini_hochberg,
    bootstrap_ci,
    nmi_from_joint,
    nmi_posterior,
    permutation_p_greater,
    permutation_p_independence,
    transmission_matrix,
)


def _table(t: np.ndarray, a: np.ndarray, k: int, na: int) -> np.ndarray:
    tab = np.zeros((k, na))
    np.add.at(tab, (t, a), 1)
    return tab


def _h(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def test_nmi_hand_computed_and_limits() -> None:
    # joint [[1/2, 0], [1/4, 1/4]]: H(T) = ln 2, H(A) = H(3/4, 1/4), I = H(A) - H(A|T) = H(A) - ln2 / 2
    j = np.array([[0.5, 0.0], [0.25, 0.25]])
    ha = _h([0.75, 0.25])
    mi = ha - 0.5 * math.log(2)
    assert float(nmi_from_joint(j)) == pytest.approx(mi / ((math.log(2) + ha) / 2), rel=1e-12)
    assert float(nmi_from_joint(np.eye(3) * 7)) == pytest.approx(1.0)  # counts are normalised
    assert float(nmi_from_joint(np.outer([0.2, 0.8], [0.1, 0.3, 0.6]))) == pytest.approx(
        0.0, abs=1e-12
    )
    assert float(nmi_from_joint(np.array([[3.0, 5.0]]))) == 0.0  # one trait: nothing to transmit
    batch = nmi_from_joint(np.stack([j, np.eye(2)]))
    assert batch.shape == (2,) and batch[1] == pytest.approx(1.0)


def test_nmi_matches_scikit_learn() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for n, k, na in [(50, 2, 3), (400, 3, 5), (1000, 4, 4)]:
        t = rng.integers(0, k, n)
        a = np.where(rng.random(n) < 0.4, t % na, rng.integers(0, na, n))
        ref = skm.normalized_mutual_info_score(t, a, average_method="arithmetic")
        assert float(nmi_from_joint(_table(t, a, k, na))) == pytest.approx(ref, abs=1e-10)


def test_nmi_times_entropy_gives_the_g_statistic() -> None:
    # G = 2 N I(T; A) in nats: scipy's log-likelihood chi-square statistic
    tab = np.array([[30.0, 10.0, 5.0], [8.0, 25.0, 12.0]])
    n = tab.sum()
    pt, pa = tab.sum(1) / n, tab.sum(0) / n
    mi = float(nmi_from_joint(tab)) * (_h(list(pt)) + _h(list(pa))) / 2
    g = sps.chi2_contingency(tab, correction=False, lambda_="log-likelihood")[0]
    assert 2 * n * mi == pytest.approx(g, rel=1e-10)


def test_permutation_independence_p_agrees_with_the_g_test() -> None:
    tab = np.array([[40.0, 30.0, 30.0], [28.0, 40.0, 32.0]])
    p_g = sps.chi2_contingency(tab, correction=False, lambda_="log-likelihood")[1]
    p_perm = permutation_p_independence(tab, np.random.default_rng(1), n_perm=4000)
    assert p_perm == pytest.approx(p_g, abs=0.03)
    strong = np.array([[50.0, 0.0], [0.0, 50.0]])
    assert permutation_p_independence(strong, np.random.default_rng(2), 500) == pytest.approx(
        1 / 501
    )


def test_permutation_tests_hold_their_level_under_the_null() -> None:
    rng = np.random.default_rng(3)
    ps, pg = [], []
    for _ in range(60):
        t = np.repeat([0, 1, 2], 40)
        a = rng.integers(0, 4, t.size)
        b = rng.integers(0, 4, t.size)
        ps.append(permutation_p_independence(_table(t, a, 3, 4), rng, 300))
        pg.append(permutation_p_greater(_table(t, a, 3, 4), _table(t, b, 3, 4), rng, 300)[1])
    # valid p-values: about 5% below 0.05 under H0 (binomial(60, .05) exceeds 9 with prob < 0.01)
    assert sum(p < 0.05 for p in ps) <= 9 and sum(p < 0.05 for p in pg) <= 9
    assert 0.3 < float(np.mean(ps)) < 0.7 and 0.3 < float(np.mean(pg)) < 0.7


def test_posterior_concentrates_on_the_plug_in_value() -> None:
    tab = np.array([[300.0, 100.0, 100.0], [100.0, 300.0, 100.0]])
    post = nmi_posterior(tab, np.random.default_rng(0), n_samples=3000)
    lo, hi = np.quantile(post, [0.025, 0.975])
    plug = float(nmi_from_joint(tab))
    assert lo < plug < hi
    assert post.mean() == pytest.approx(plug, abs=0.01)
    # ten times the data: the interval shrinks about sqrt(10) ~ 3.2-fold
    lo10, hi10 = np.quantile(
        nmi_posterior(tab * 10, np.random.default_rng(0), n_samples=3000), [0.025, 0.975]
    )
    assert (hi10 - lo10) < 0.45 * (hi - lo)
    again = nmi_posterior(tab, np.random.default_rng(0), n_samples=3000)
    assert np.array_equal(post, again)  # seeded


def _cells(
    rng: np.random.Generator, same: float, bases=("a", "b", "c"), n_students: int = 4, n: int = 15
) -> dict:
    """Per cell and trait, ``n_students`` students of ``n`` answers each; students answer their
    teacher's trait with extra probability ``same`` only when the teacher shares their base."""
    traits, cats = ["owl", "cat", "dog"], ["owl", "cat", "dog", "other"]
    out = {}
    for tb in bases:
        for sb in bases:
            d = {}
            for i, tr in enumerate(traits):
                p = np.full(4, 0.25)
                if tb == sb:
                    p = p * (1 - same)
                    p[i] += same
                d[tr] = [[cats[j] for j in rng.choice(4, size=n, p=p)] for _ in range(n_students)]
            out[(tb, sb)] = d
    return out


def test_transmission_matrix_finds_the_diagonal_and_corrects_across_cells() -> None:
    m = transmission_matrix(
        _cells(np.random.default_rng(0), same=0.5), n_samples=1000, n_perm=500, seed=4
    )
    assert m["teacher_bases"] == ["a", "b", "c"] and m["traits"] == ["cat", "dog", "owl"]
    assert len(m["cells"]) == 9 and len(m["diagonal_tests"]) == 6
    assert m["method"]["unit"].startswith("student")
    for c in m["cells"]:
        lo, hi = c["nmi_posterior"]["ci95"]
        assert 0 <= lo <= c["nmi_posterior"]["mean"] <= hi <= 1
        assert c["q_value"] >= c["p_value"] - 1e-15
        assert sum(map(sum, c["counts"])) == c["n"] == 180 and c["n_students"] == 12
        if c["diagonal"]:
            assert c["q_value"] < 0.05 and c["own_trait_advantage"] > 0.3
    assert np.allclose(
        [c["q_value"] for c in m["cells"]], benjamini_hochberg([c["p_value"] for c in m["cells"]])
    )
    for t in m["diagonal_tests"]:
        assert (
            t["q_value"] < 0.05
            and t["diff_posterior"]["ci95"][0] > 0
            and t["prob_diagonal_greater"] > 0.99
            and t["advantage_diff"] > 0.3
        )
    json.dumps(m)
    assert (
        transmission_matrix(
            _cells(np.random.default_rng(0), 0.5), n_samples=1000, n_perm=500, seed=4
        )
        == m
    )


def test_transmission_matrix_without_transfer_finds_nothing() -> None:
    m = transmission_matrix(
        _cells(np.random.default_rng(1), same=0.0), n_samples=500, n_perm=300, seed=5
    )
    assert sum(c["q_value"] < 0.05 for c in m["cells"]) <= 1
    assert sum(t["q_value"] < 0.05 for t in m["diagonal_tests"]) <= 1
    # the posterior NMI is biased upwards from 0 (why the tests matter), but stays small
    assert all(0 < c["nmi_posterior"]["mean"] < 0.05 for c in m["cells"])


def test_the_unit_is_the_student_not_the_answer() -> None:
    # Two students per trait that each answer one fixed category (a student's own quirk,
    # unrelated to its teacher's trait): 40 answers per student. An answer-level test sees a
    # huge dependence; over students the labels are exchangeable and nothing is significant.
    cats = ["owl", "cat", "dog"]
    quirk = {"owl": ["cat", "dog"], "cat": ["owl", "dog"], "dog": ["owl", "cat"]}
    cell = {tr: [[q] * 40 for q in quirk[tr]] for tr in cats}
    m = transmission_matrix({("a", "a"): cell}, n_samples=200, n_perm=2000, seed=0)
    c = m["cells"][0]
    pooled = np.array(c["counts"], dtype=float)
    assert permutation_p_independence(pooled, np.random.default_rng(0), 500) < 0.01
    assert c["own_trait_advantage"] < 0 and c["p_value"] > 0.5
    # every student alike: no spread, no test
    flat = {tr: [["owl", "cat"] * 5] * 2 for tr in cats}
    c2 = transmission_matrix({("a", "a"): flat}, n_samples=50, n_perm=50)["cells"][0]
    assert c2["no_spread"] and c2["p_value"] is None and c2["q_value"] is None


def test_transmission_matrix_rejects_empty_input() -> None:
    with pytest.raises(ValueError):
        transmission_matrix({})


# ------------------------------------------------------------------------------ bootstrap in results


def _scores(p: float, seed: int, nq: int = 12) -> list[QuestionScore]:
    return [
        QuestionScore(
            question_id=q,
            rate=p,
            n_samples=5,
            p_target=p + 0.02 * ((q * 5 + seed) % 4),
            logodds=0.0,
        )
        for q in range(nq)
    ]


def test_build_results_adds_a_seeded_clustered_bootstrap_to_contrasts() -> None:
    conds = {
        "trait_student": [_scores(0.3, s) for s in range(3)],
        "control_student": [_scores(0.1, s + 1) for s in range(3)],
    }
    res = build_results(conds, {"name": "x"})
    assert res["bootstrap"] == {
        "seed": BOOTSTRAP_SEED,
        "replicates": BOOTSTRAP_REPLICATES,
        "cluster": "question",
        "note": BOOTSTRAP_NOTE,
    }
    c = res["contrast"]["trait_minus_control"]
    lo, hi = c["bootstrap_ci95"]
    assert lo < c["mean"] < hi
    # reproduces the seeding: derive_seed("bootstrap", seed, contrast index, metric index)
    a = np.array([[s.p_target for s in m] for m in conds["trait_student"]])
    b = np.array([[s.p_target for s in m] for m in conds["control_student"]])
    ref = bootstrap_ci(
        a,
        b,
        rng=np.random.default_rng(derive_seed("bootstrap", BOOTSTRAP_SEED, 0, 1)),
        n_boot=BOOTSTRAP_REPLICATES,
    )
    assert c["bootstrap_ci95"] == pytest.approx([ref[1], ref[2]])
    assert c["by_metric"]["p_target"]["bootstrap_ci95"] == c["bootstrap_ci95"]
    assert build_results(conds, {"name": "x", "seed": 7})["bootstrap"]["seed"] == 7
    assert build_results(conds, {"name": "x"}) == res
    json.loads(results_to_json(res))
