"""The statistics of comparison.py against values computed another way in the test: normal
theory for a bootstrap interval on a large sample, Welch's formula by hand, Holm's published
example, Cohen's power table, and counting pairs for the probability of improvement."""

import math

import numpy as np
import pytest
from scipy import stats

from gan_experiments import comparison


def test_bootstrap_interval_of_a_large_sample_matches_normal_theory():
    x = np.random.default_rng(3).normal(50.0, 4.0, 2000)
    summary = comparison.summarise(x, higher_is_better=False)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(len(x))  # mean ± z·s/√n
    assert summary.method == "BCa"
    assert summary.ci[0] == pytest.approx(x.mean() - half, abs=0.05 * half)
    assert summary.ci[1] == pytest.approx(x.mean() + half, abs=0.05 * half)
    assert (summary.median, summary.best) == (pytest.approx(np.median(x)), x.min())


def test_small_samples_use_the_percentile_interval_and_one_run_has_none():
    assert comparison.summarise([1.0, 3.0], False).method == "percentile"
    assert comparison.summarise([1.0, 3.0], False).ci == (1.0, 3.0)  # resampled means span the range
    assert comparison.summarise([2.0], True).ci is None
    assert comparison.summarise([2.0, 2.0, 2.0], True).ci == (2.0, 2.0)
    assert comparison.summarise([2.0, 9.0, 4.0], True).best == 9.0  # maximised: best is the largest
    assert comparison.summarise([float("nan"), None], True) is None


def test_welch_p_matches_the_formula_by_hand():
    a, b = [20.1, 22.3, 19.8, 25.0, 21.7], [24.2, 27.9, 23.1, 26.4, 30.2, 25.5]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    assert comparison.welch_p(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)


def test_holm_matches_the_textbook_example():
    # Four p-values; Holm multiplies the k-th smallest by (m - k + 1) and keeps the running max.
    adjusted = comparison.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(comparison.holm([float("nan"), 0.01])[0])


@pytest.mark.parametrize("d, n", [(0.2, 394), (0.5, 64), (0.8, 26)])
def test_seeds_needed_matches_cohens_table(d, n):
    # Cohen (1988), Table 2.4.1: n per group for a two-sided test at α = 0.05 and power 0.80 is
    # 393, 64 and 26 for d = 0.2, 0.5, 0.8 (the exact noncentral-t value rounds 393.4 up to 394).
    a = np.array([-1.0, 1.0, -1.0, 1.0])  # std 1.155: scale so the pooled std is 1
    a = a / a.std(ddof=1)
    assert comparison.seeds_needed(a, a + d) == n
    assert comparison.seeds_needed(a, a) is None


def test_probability_of_improvement_counts_pairs():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0]
    # a < b in: 1<2, 1<4, 2<4, 3<4 and a tie 2=2 counting half: 4.5 of 6 pairs.
    assert comparison.probability_of_improvement(a, b, higher_is_better=False) == pytest.approx(4.5 / 6)
    assert comparison.probability_of_improvement(a, b, higher_is_better=True) == pytest.approx(1.5 / 6)


def test_a_known_difference_is_resolved_at_large_n_and_not_at_n_2():
    rng = np.random.default_rng(0)
    good, bad = rng.normal(20.0, 2.0, 30), rng.normal(23.0, 2.0, 30)
    (large,) = comparison.compare({"good": good, "bad": bad}, [("good", "bad")], False)
    assert large.verdict == "better" and large.seeds_needed is None
    assert large.ci[1] < 0 < 1 - large.p_improvement < 0.25
    (small,) = comparison.compare({"good": good[:2], "bad": bad[:2]}, [("good", "bad")], False)
    assert small.verdict == "cannot tell at n = 2" and small.seeds_needed >= 2
    (flipped,) = comparison.compare({"good": good, "bad": bad}, [("bad", "good")], False)
    assert flipped.verdict == "worse"


def test_holm_adjusts_across_the_pairs_shown():
    rng = np.random.default_rng(1)
    groups = {name: rng.normal(mean, 1.0, 8) for name, mean in (("a", 0.0), ("b", 0.9), ("c", 1.0))}
    pairs = [("b", "a"), ("c", "a")]
    results = comparison.compare(groups, pairs, higher_is_better=False)
    raw = [r.welch_p for r in results]
    assert [r.holm_p for r in results] == pytest.approx(comparison.holm(raw))
    assert all(r.holm_p >= r.welch_p for r in results)
