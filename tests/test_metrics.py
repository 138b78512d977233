import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

from medmamba.evaluation.metrics import classification_metrics


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_hand_computed_binary_case():
    # labels 0 0 0 1 1 1 1; predicted 0 1 0 1 1 0 1 -> for class 1: TP 3, FP 1, FN 1, TN 2
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.2, 0.7, 0.1, 0.8, 0.9, 0.4, 0.6])
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), "binary-class", ["neg", "pos"])
    pos, neg = m["per_class"]["pos"], m["per_class"]["neg"]
    assert pos["precision"] == pytest.approx(3 / 4) and pos["sensitivity"] == pytest.approx(3 / 4)
    assert pos["specificity"] == pytest.approx(2 / 3) and pos["f1"] == pytest.approx(3 / 4)
    # class 0 mirrors class 1: TP 2, FP 1, FN 1, TN 3
    assert neg["precision"] == pytest.approx(2 / 3) and neg["sensitivity"] == pytest.approx(2 / 3)
    assert neg["specificity"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(5 / 7)
    # a binary report's headline figures are the positive class's, not macro averages (which would make
    # sensitivity and specificity both the balanced accuracy, (3/4 + 2/3) / 2)
    assert m["positive_class"] == "pos"
    assert m["sensitivity"] == pytest.approx(3 / 4) and m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(3 / 4) and m["f1"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    # AUC of the positive score: of 12 (pos, neg) pairs, 10 ranked right (0.4 and 0.6 lose to 0.7)
    assert m["auc"] == pytest.approx(10 / 12) and m["medmnist"]["auc"] == pytest.approx(10 / 12)
    assert m["confusion_matrix"] == [[2, 1], [1, 3]]


@pytest.mark.parametrize("k", [2, 3, 7])
def test_against_sklearn_on_random_data(k):
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 300)
    probs = softmax(rng.normal(size=(300, k)) + 1.5 * np.eye(k)[y])
    m = classification_metrics(y, probs, "binary-class" if k == 2 else "multi-class")
    pred = probs.argmax(1)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    if k == 2:
        pb, rb, fb, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
        assert m["precision"] == pytest.approx(pb) and m["sensitivity"] == pytest.approx(rb)
        assert m["f1"] == pytest.approx(fb)
    else:
        assert m["precision"] == pytest.approx(p.mean()) and m["sensitivity"] == pytest.approx(r.mean())
        assert m["f1"] == pytest.approx(f.mean())
    assert m["balanced_accuracy"] == pytest.approx(r.mean())
    for c in range(k):
        pc = m["per_class"][str(c)]
        assert pc["precision"] == pytest.approx(p[c]) and pc["f1"] == pytest.approx(f[c])
        # specificity of class c is the recall of "not c"
        spec = precision_recall_fscore_support(y != c, pred != c, average="binary", zero_division=0)[1]
        assert pc["specificity"] == pytest.approx(spec)
        assert pc["support"] == s[c]
    expected_auc = roc_auc_score(y, probs[:, 1]) if k == 2 else roc_auc_score(y, probs, multi_class="ovr")
    assert m["auc"] == pytest.approx(expected_auc)


def test_multilabel_follows_medmnist_rules():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (200, 5))
    probs = 1 / (1 + np.exp(-(rng.normal(size=(200, 5)) + 2 * (y - 0.5))))
    m = classification_metrics(y, probs, "multi-label, binary-class")
    pred = probs > 0.5
    assert m["medmnist"]["acc"] == pytest.approx(np.mean([accuracy_score(y[:, i], pred[:, i]) for i in range(5)]))
    assert m["auc"] == pytest.approx(np.mean([roc_auc_score(y[:, i], probs[:, i]) for i in range(5)]))
    p, r, f, _ = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    assert m["precision"] == pytest.approx(p.mean()) and m["sensitivity"] == pytest.approx(r.mean())


def test_absent_class_gives_nan_auc_not_a_crash():
    y = np.array([0, 0, 1, 1])
    probs = softmax(np.random.default_rng(0).normal(size=(4, 3)))
    m = classification_metrics(y, probs, "multi-class")
    assert np.isnan(m["per_class"]["2"]["auc"]) and not np.isnan(m["auc"])


def test_tta_averages_each_image_with_its_mirror():
    import torch

    from medmamba.evaluation.prediction import predict
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))  # not mirror-invariant
    images, labels = torch.randn(10, 1, 3, 4), torch.arange(10) % 3
    data = torch.utils.data.TensorDataset(images, labels)
    y, plain = predict(model, data, batch_size=4)
    _, tta = predict(model, data, batch_size=4, tta=True)
    with torch.no_grad():
        mirrored = model(images.flip(-1)).softmax(-1).numpy()
    np.testing.assert_array_equal(y, labels.numpy())
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, rtol=1e-6)
    assert np.abs(tta - plain).max() > 1e-3


def test_binary_headline_follows_the_named_positive_class():
    # as in test_hand_computed_binary_case, with "neg" named positive: its sensitivity 2/3, specificity 3/4
    from medmamba.evaluation.reports import assess, metrics_table
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.2, 0.7, 0.1, 0.8, 0.9, 0.4, 0.6])
    probs = np.stack([1 - p1, p1], 1)
    report = assess(y, probs, "binary-class", ["neg", "pos"], positive=0, n_resamples=50)
    m = report["metrics"]
    assert m["positive_class"] == "neg"
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(2 / 3)
    from sklearn.metrics import average_precision_score
    assert m["average_precision"] == pytest.approx(average_precision_score(y == 0, probs[:, 0]))
    low, high = report["intervals"]["sensitivity"]
    assert low <= 2 / 3 <= high
    assert "| sensitivity (of neg) |" in metrics_table(m, report["intervals"])
