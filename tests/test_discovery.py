"""discovery@k, unbiased pass@k, bootstrap CIs and the writers (sdpo_jax/discovery.py)."""

import csv
import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from sdpo_jax import discovery as dsc


def _brute_force_discovery(reward_rows, k):
    """Fraction of seeds with a success among their first k attempts, by looping."""
    hits = 0
    for rewards in reward_rows:
        hits += any(r >= 0.5 for r in rewards[:k])
    return hits / len(reward_rows)


def test_discovery_matches_brute_force_on_simulated_attempt_sequences():
    """discovery@k from first-success indices (censored at the budget) equals the brute-force fraction
    of seeds that succeed within their first k attempts, for every k up to the budget."""
    rng = np.random.default_rng(0)
    budget = 40
    for p in (0.0, 0.02, 0.1, 0.5):
        rows = [(rng.random(budget) < p).astype(float).tolist() for _ in range(17)]
        firsts = [dsc.first_success_index(r) for r in rows]
        ks = np.arange(1, budget + 1)
        got = dsc.discovery_at_k(firsts, ks, budget)
        want = [_brute_force_discovery(rows, int(k)) for k in ks]
        np.testing.assert_allclose(got, want, atol=0, rtol=0)
    assert dsc.first_success_index([0, 0, 1, 1], offset=32) == 35
    assert dsc.first_success_index([0, 0]) is None


def test_discovery_counts_every_attempt_across_batches():
    """A first success in the third batch of 16 at in-batch position 5 is attempt 2*16 + 5 = 37."""
    batches = [[0.0] * 16, [0.0] * 16, [0, 0, 0, 0, 1.0] + [0.0] * 11]
    offset, first = 0, None
    for batch in batches:
        first = dsc.first_success_index(batch, offset=offset)
        if first is not None:
            break
        offset += len(batch)
    assert first == 37
    curve = dsc.discovery_at_k([first, None], [36, 37, 48], budget=48)
    np.testing.assert_array_equal(curve, [0.0, 0.5, 0.5])


def test_discovery_rejects_k_past_budget_and_bad_indices():
    """k beyond the budget is unknown (censoring) and raises; so does an index outside [1, budget]."""
    with pytest.raises(ValueError, match="budget=10"):
        dsc.discovery_at_k([3, None], [11], budget=10)
    with pytest.raises(ValueError, match="seed 1"):
        dsc.discovery_at_k([3, 0], [5], budget=10)
    with pytest.raises(ValueError, match="seed 0"):
        dsc.discovery_at_k([11], [5], budget=10)


@pytest.mark.parametrize("n,c,k,want", [(10, 1, 1, 0.1), (5, 2, 2, 0.7), (10, 0, 5, 0.0), (10, 8, 3, 1.0),
                                        (4, 1, 4, 1.0),
                                        (100, 3, 10, 1 - (90 * 89 * 88) / (100 * 99 * 98))])
def test_pass_at_k_known_values(n, c, k, want):
    """Unbiased pass@k = 1 - C(N-c, k)/C(N, k) at hand-computed values, scalar and vectorised."""
    assert dsc.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)
    assert dsc.pass_at_k_curve(n, c, [k])[0] == pytest.approx(want, abs=1e-12)


def test_pass_at_k_equals_subset_enumeration_and_exact_fractions():
    """pass@k is the fraction of k-subsets of the N attempts that contain a success (enumerated), and
    matches the exact rational formula for large N where naive binomials overflow floats."""
    for n in (5, 7):
        for c in range(n + 1):
            outcomes = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
                assert dsc.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
    n = 2944
    ks = [1, 2, 64, 1000, 2750]
    for c in (0, 1, 2, 40, 2000):
        curve = dsc.pass_at_k_curve(n, c, ks)
        for k, value in zip(ks, curve):
            exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
            assert value == pytest.approx(float(exact), rel=1e-9, abs=1e-300)
            assert dsc.pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9, abs=1e-300)
    assert dsc.pass_at_k_curve(n, 1, [1])[0] == pytest.approx(1 / n, rel=1e-12)  # tiny value keeps precision


def test_pass_at_k_is_unbiased_for_iid_attempts():
    """E over c ~ Binomial(N, p) of pass@k(N, c, k) equals 1 - (1 - p)^k exactly (exact binomial sum)."""
    n, p = 30, 0.07
    pmf = np.array([math.comb(n, c) * p**c * (1 - p) ** (n - c) for c in range(n + 1)])
    ks = [1, 3, 10, 30]
    estimates = dsc.pass_at_k_curve(n, np.arange(n + 1), ks)  # [N+1, K]
    np.testing.assert_allclose(pmf @ estimates, [1 - (1 - p) ** k for k in ks], rtol=1e-10)


def test_pass_at_k_rejects_k_above_n():
    """pass@k with k > N is not estimable and raises naming the arguments."""
    with pytest.raises(ValueError, match="k=11"):
        dsc.pass_at_k(10, 2, 11)
    with pytest.raises(ValueError, match="at least as many samples"):
        dsc.pass_at_k_bootstrap_curve("best_of_k", [(8, 1)], budget=16)


def test_bootstrap_band_brackets_the_estimate_and_collapses_on_constant_data():
    """The 90 % band contains the point estimate, is deterministic for a seed, narrows with more seeds,
    and has zero width when every seed agrees."""
    rng = np.random.default_rng(1)
    budget = 64

    def times(num_seeds):
        t = rng.geometric(0.03, size=num_seeds)
        return [int(x) if x <= budget else None for x in t]

    questions = [times(5) for _ in range(4)]
    a = dsc.discovery_curve("sdpo", questions, budget, num_resamples=400, seed=3)
    b = dsc.discovery_curve("sdpo", questions, budget, num_resamples=400, seed=3)
    np.testing.assert_array_equal(a.lo, b.lo)
    assert np.all(a.lo <= a.mean + 1e-12) and np.all(a.mean <= a.hi + 1e-12)
    assert np.any(a.hi - a.lo > 0)
    wide = dsc.discovery_curve("x", [times(4)], budget, num_resamples=400, seed=0)
    narrow = dsc.discovery_curve("x", [times(400)], budget, num_resamples=400, seed=0)
    assert (narrow.hi - narrow.lo).mean() < (wide.hi - wide.lo).mean()
    flat = dsc.discovery_curve("x", [[7, 7, 7], [None, None]], budget=10, num_resamples=200)
    np.testing.assert_array_equal(flat.lo, flat.hi)
    np.testing.assert_allclose(flat.mean, [0] * 6 + [0.5] * 4)
    boot = dsc.pass_at_k_bootstrap_curve("bok", [(100, 3), (100, 0)], budget=50, num_resamples=300)
    assert np.all(boot.lo <= boot.mean + 1e-12) and np.all(boot.mean <= boot.hi + 1e-12)
    assert boot.mean[0] == pytest.approx(0.015)


def test_mean_attempts_and_attempts_to_reach():
    """For one question, sum_{k<B} (1 - discovery@k) equals the mean of min(T, B) over seeds; the
    attempts to reach p is the first k whose discovery@k >= p."""
    budget = 20
    firsts = [3, 8, None, 20, 1]
    curve = dsc.discovery_curve("m", [firsts], budget, num_resamples=0)
    want = np.mean([min(t if t is not None else budget, budget) for t in firsts])
    assert dsc.mean_attempts_to_success(curve) == pytest.approx(want)
    assert dsc.attempts_to_reach(curve, 0.4) == 3
    assert dsc.attempts_to_reach(curve, 0.8) == 20
    assert dsc.attempts_to_reach(curve, 0.9) is None
    summary = dsc.summarize(curve, report_ks=[1, 20], targets=[0.4])
    assert summary["discovery@20"]["mean"] == pytest.approx(0.8) and summary["attempts_to_0.4"] == 3


def test_writers_round_trip(tmp_path):
    """The JSON holds every curve's arrays (censoring-safe), the CSV reads back with empty cells for
    None, and the PNG is a real PNG file."""
    curve = dsc.discovery_curve("sdpo", [[2, None], [5, 1]], budget=6, num_resamples=50)
    bok = dsc.pass_at_k_bootstrap_curve("best_of_k", [(10, 1), (10, 0)], budget=6, num_resamples=50)
    path = dsc.write_curves_json(str(tmp_path / "curves.json"), [curve, bok], meta={"budget": 6},
                                 summaries=[dsc.summarize(curve, report_ks=[6])])
    data = json.loads(open(path).read())
    assert data["meta"]["budget"] == 6 and set(data["curves"]) == {"sdpo", "best_of_k"}
    np.testing.assert_allclose(data["curves"]["sdpo"]["mean"], curve.mean)
    assert len(data["curves"]["best_of_k"]["per_question"]) == 2
    rows = [{"method": "sdpo", "question": "q0", "seed": 0, "first_success": 2},
            {"method": "sdpo", "question": "q0", "seed": 1, "first_success": None, "note": "x"}]
    csv_path = dsc.write_results_csv(str(tmp_path / "r.csv"), rows)
    back = list(csv.DictReader(open(csv_path)))
    assert back[0]["first_success"] == "2" and back[1]["first_success"] == "" and back[1]["note"] == "x"
    png = dsc.plot_discovery(str(tmp_path / "d.png"), [curve, bok], title="t")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
