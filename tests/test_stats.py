"""Intervals, paired comparisons, DeLong's test and calibration against hand-computed or analytic cases."""
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medmamba.evaluation.calibration import (brier, calibration_metrics, fit_temperature, nll, operating_point, probabilities,
                                  reliability, single_class_share, threshold_for_sensitivity)
from medmamba.evaluation.stats import (auc_rank, bootstrap_intervals, delong_test, paired_bootstrap, point_metrics,
                            stratified_resamples)


def binary_case(n=400, seed=0, signal=1.5):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    logit = signal * (2 * y - 1) + rng.normal(size=n)
    p1 = 1 / (1 + np.exp(-logit))
    return y, np.stack([1 - p1, p1], 1)


def test_rank_auc_matches_sklearn_with_ties():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    s = np.array([0.1, 0.4, 0.4, 0.8, 0.4, 0.2, 0.9, 0.8])
    assert auc_rank(y, s) == pytest.approx(roc_auc_score(y, s))


def test_point_metrics_by_hand():
    # 2 positives, 3 negatives; predictions: TP, FN, TN, TN, FP
    y = np.array([1, 1, 0, 0, 0])
    p1 = np.array([0.9, 0.4, 0.1, 0.3, 0.6])
    m = point_metrics(y, np.stack([1 - p1, p1], 1), "binary-class")
    # class 1 (the positive class, whose figures a binary report gives): sens 1/2, spec 2/3, precision 1/2;
    # balanced accuracy: the mean of the two classes' sensitivities, (1/2 + 2/3) / 2 = 7/12
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(1 / 2) and m["specificity"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx(7 / 12)
    assert m["f1"] == pytest.approx(2 * 0.5 * 0.5 / 1.0)
    assert m["auc"] == pytest.approx(5 / 6)  # 5 of the 6 (positive, negative) pairs ordered right


def test_stratified_resamples_keep_class_counts_and_are_seeded():
    y = np.array([0] * 7 + [1] * 3)
    first = list(stratified_resamples(y, 5, seed=3))
    again = list(stratified_resamples(y, 5, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert all(np.bincount(y[idx]).tolist() == [7, 3] for idx in first)


def test_bootstrap_interval_covers_the_estimate_and_shrinks_with_n():
    widths = []
    for n in (100, 1600):
        y, p = binary_case(n)
        point = point_metrics(y, p, "binary-class")
        ci = bootstrap_intervals(y, p, "binary-class", n_resamples=1000, seed=0)
        for key in ("accuracy", "auc", "sensitivity", "specificity", "f1"):
            assert ci[key][0] <= point[key] <= ci[key][1], key
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
    # the width of an interval for a proportion falls like 1/sqrt(n): x16 the images, about a quarter
    assert 0.15 < widths[1] / widths[0] < 0.4


def test_bootstrap_accuracy_interval_matches_the_binomial_one():
    y, p = binary_case(2000, seed=1)
    acc = point_metrics(y, p, "binary-class")["accuracy"]
    low, high = bootstrap_intervals(y, p, "binary-class", n_resamples=2000, seed=0)["accuracy"]
    half = 1.96 * math.sqrt(acc * (1 - acc) / len(y))
    assert high - low == pytest.approx(2 * half, rel=0.15)


def test_paired_bootstrap_same_model_is_no_difference_and_better_model_is_significant():
    y, p = binary_case(300, seed=2)
    same = paired_bootstrap(y, p, p, "binary-class", n_resamples=300)
    assert same["auc"]["difference"] == 0 and same["auc"]["p"] == 1.0
    noise = np.random.default_rng(5).normal(size=len(y)) * 3
    worse_p1 = 1 / (1 + np.exp(-(np.log(p[:, 1] / p[:, 0]) + noise)))
    worse = np.stack([1 - worse_p1, worse_p1], 1)
    result = paired_bootstrap(y, p, worse, "binary-class", n_resamples=500)
    assert result["auc"]["difference"] > 0 and result["auc"]["low"] > 0 and result["auc"]["p"] < 0.01


def delong_by_definition(y, a, b):
    """DeLong's variance from its definition: pairwise kernels psi(X, Y) over every (positive, negative)."""
    y = y.astype(bool)

    def components(s):
        psi = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        return psi.mean(1), psi.mean(0), psi.mean()
    (v10a, v01a, auc_a), (v10b, v01b, auc_b) = components(a), components(b)
    m, n = y.sum(), (~y).sum()
    s10 = np.cov(np.stack([v10a, v10b]))
    s01 = np.cov(np.stack([v01a, v01b]))
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    return auc_a, auc_b, var


def test_delong_against_its_definition_with_ties():
    rng = np.random.default_rng(4)
    y = (rng.random(60) < 0.4).astype(int)
    a = np.round(y + rng.normal(size=60), 1)        # rounded: ties within and across classes
    b = np.round(0.5 * y + rng.normal(size=60), 1)
    got = delong_test(y, a, b)
    auc_a, auc_b, var = delong_by_definition(y, a, b)
    assert got["auc_a"] == pytest.approx(auc_a) and got["auc_b"] == pytest.approx(auc_b)
    assert got["auc_a"] == pytest.approx(roc_auc_score(y, a))
    assert got["se"] ** 2 == pytest.approx(var)
    z = (auc_a - auc_b) / math.sqrt(var)
    assert got["p"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))


def test_delong_identical_scores():
    y, p = binary_case(50)
    result = delong_test(y, p[:, 1], p[:, 1])
    assert result["difference"] == 0 and result["p"] == 1.0


def test_ece_brier_nll_by_hand():
    y = np.array([0, 1, 1, 0])
    p1 = np.array([0.2, 0.9, 0.6, 0.7])
    probs = np.stack([1 - p1, p1], 1)
    # confidences 0.8, 0.9, 0.6, 0.7; correct, correct, correct, wrong; each in its own 1/15 bin
    rel = reliability(y, probs, multi_label=False)
    assert rel["ece"] == pytest.approx((0.2 + 0.1 + 0.4 + 0.7) / 4)
    assert sum(rel["count"]) == 4
    assert brier(y, probs, False) == pytest.approx(np.mean([2 * 0.2 ** 2, 2 * 0.1 ** 2, 2 * 0.4 ** 2, 2 * 0.7 ** 2]))
    assert nll(y, probs, False) == pytest.approx(-np.mean(np.log([0.8, 0.9, 0.6, 0.3])))


def test_perfectly_calibrated_predictions_have_small_ece():
    rng = np.random.default_rng(0)
    p1 = rng.random(20000)
    y = (rng.random(20000) < p1).astype(int)
    assert calibration_metrics(y, np.stack([1 - p1, p1], 1), False)["ece"] < 0.02


def test_temperature_scaling_fixes_overconfidence_and_keeps_the_decisions():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(size=(3000, 3)) * 1.5
    y = np.array([rng.choice(3, p=row) for row in probabilities(true_logits, False)])
    overconfident = true_logits * 4                          # the same ranking, four times too sure
    t = fit_temperature(overconfident, y, multi_label=False)
    assert t == pytest.approx(4.0, rel=0.15)
    before, after = probabilities(overconfident, False), probabilities(overconfident, False, t)
    assert nll(y, after, False) < nll(y, before, False) - 0.1
    assert calibration_metrics(y, after, False)["ece"] < calibration_metrics(y, before, False)["ece"]
    assert np.array_equal(after.argmax(1), before.argmax(1))


def test_temperature_scaling_leaves_a_binary_auc_unchanged():
    y, p = binary_case(1000, seed=6, signal=1.0)
    logits = np.log(p) * 5                                     # over-confident: five times the log-odds
    t = fit_temperature(logits, y, multi_label=False)
    before, after = probabilities(logits, False), probabilities(logits, False, t)
    assert t > 1 and nll(y, after, False) < nll(y, before, False)
    assert roc_auc_score(y, after[:, 1]) == roc_auc_score(y, before[:, 1])


def test_threshold_reaches_the_target_sensitivity_on_validation():
    y, p = binary_case(500, seed=3)
    for target in (0.8, 0.9, 0.95, 1.0):
        t = threshold_for_sensitivity(y, p, target)
        point = operating_point(y, p, t)
        assert point["sensitivity"] >= target
        # the most specific such threshold: any higher one misses the target
        assert operating_point(y, p, np.nextafter(t, 1))["sensitivity"] < target
    with pytest.raises(ValueError):
        threshold_for_sensitivity(y, p, 0)


def test_single_class_share_flags_a_constant_predictor():
    probs = np.tile([0.3, 0.7], (20, 1))
    assert single_class_share(probs, False) == 1.0
    assert single_class_share(np.eye(2)[[0, 1, 1, 0]], False) == 0.5


@pytest.mark.parametrize("k", [2, 3])
def test_interval_figures_are_the_reports_figures(k):
    # the bootstrap resamples point_metrics; its figures on the full set must be the report's own
    from medmamba.evaluation.metrics import classification_metrics
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 200)
    logits = rng.normal(size=(200, k)) + 1.2 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    task = "binary-class" if k == 2 else "multi-class"
    fast, full = point_metrics(y, p, task), classification_metrics(y, p, task)
    for key in fast:
        assert fast[key] == pytest.approx(full[key]), key
