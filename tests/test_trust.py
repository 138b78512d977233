"""Predictions people can trust: conformal prediction sets keep their coverage guarantee, selective
prediction's risk-coverage curve and AURC, and both in reports."""
import numpy as np
import pytest

from medmamba.errors import MedMambaError
from medmamba.evaluation.conformal import METHODS, calibrate_sets, class_scores, set_names, set_summary
from medmamba.evaluation.selective import risk_coverage, selective_summary


def noisy_classifier(n, classes=4, seed=0, sharpness=2.0):
    """Probabilities of a reasonable but imperfect classifier on n images, with their true labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += sharpness
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, labels


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_split_conformal_keeps_its_guarantee_over_random_splits(method, coverage):
    """Marginal coverage: over random calibration/test splits the mean coverage is at least the target (and,
    for lac, not much above it: the guarantee is tight); from split to split it varies as the theory says
    (a Beta law of sd about sqrt(c (1 - c) / n) for n calibration images), not more."""
    probs, labels = noisy_classifier(3000, seed=1)
    rng = np.random.default_rng(2)
    seen = []
    for _ in range(200):
        order = rng.permutation(len(labels))
        cal, test = order[:300], order[300:]
        sets = calibrate_sets(probs[cal], labels[cal], coverage, method)
        members = sets.predict(probs[test])
        seen.append(members[np.arange(len(test)), labels[test]].mean())
    seen = np.array(seen)
    assert seen.mean() >= coverage - 0.005, (method, seen.mean())
    if method == "lac":
        assert seen.mean() <= coverage + 0.02
    assert seen.std() < 1.5 * np.sqrt(coverage * (1 - coverage) / 300) + 0.01


def test_scores_by_hand():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    np.testing.assert_allclose(class_scores(probs, "lac"), [[0.4, 0.7, 0.9], [0.8, 0.5, 0.7]])
    # aps: the mass ranked above a class plus its own probability
    np.testing.assert_allclose(class_scores(probs, "aps"), [[0.6, 0.9, 1.0], [1.0, 0.5, 0.8]])
    # raps adds lam for every rank past k_reg
    np.testing.assert_allclose(class_scores(probs, "raps", k_reg=1, lam=0.1), [[0.6, 1.0, 1.2], [1.2, 0.5, 0.9]])
    with pytest.raises(MedMambaError, match="one of lac, aps, raps"):
        class_scores(probs, "naive")


def test_threshold_is_the_finite_sample_quantile_and_sets_read_as_names():
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    labels = np.array([0, 0, 0, 1])
    sets = calibrate_sets(probs, labels, 0.6, "lac")
    # lac scores of the true classes: 0.1, 0.3, 0.6, 0.2; ceil(5 * 0.6) / 4 = 0.75 -> the 3rd smallest, 0.3
    assert sets.threshold == pytest.approx(0.3) and sets.n_calibration == 4
    members = sets.predict(np.array([[0.75, 0.25], [0.5, 0.5], [0.72, 0.28]]))
    assert set_names(members, ["benign", "malignant"]) == ["benign", "", "benign"]
    # too few calibration images for the target: every class is in every set
    assert calibrate_sets(probs, labels, 0.9, "lac").predict(probs).all()
    # aps never leaves a set empty: the most probable class is always in
    aps = calibrate_sets(probs, labels, 0.6, "aps")
    assert aps.predict(np.array([[0.99, 0.01], [0.5, 0.5]])).sum(1).min() >= 1
    with pytest.raises(MedMambaError, match="coverage 1.5"):
        calibrate_sets(probs, labels, 1.5)


def test_set_summary_counts_undecided_and_empty_sets():
    members = np.array([[True, False], [True, True], [False, False], [False, True]])
    sets = calibrate_sets(np.array([[0.9, 0.1]] * 10), np.zeros(10, int), 0.8, "lac")
    out = set_summary(members, [0, 1, 0, 0], sets, n_resamples=200)
    assert out["empirical_coverage"] == 0.5 and out["mean_set_size"] == 1.0
    assert (out["single"], out["undecided"], out["empty"]) == (0.5, 0.25, 0.25)
    low, high = out["coverage_interval"]
    assert 0 <= low <= 0.5 <= high <= 1 and out["method"] == "lac" and out["coverage"] == 0.8


def test_risk_coverage_by_hand():
    # confidences 0.9, 0.8, 0.7, 0.6: right, wrong, right, wrong
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    labels = np.array([0, 0, 0, 0])
    coverage, risk = risk_coverage(labels, probs)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 0.5, 1 / 3, 0.5])
    s = selective_summary(labels, probs, referred=0.25)
    assert s["aurc"] == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4) and s["kept"] == 3
    assert s["accuracy_kept"] == pytest.approx(2 / 3) and s["accuracy_all"] == 0.5


def test_confident_mistakes_raise_aurc():
    probs, labels = noisy_classifier(500, classes=2, seed=3)
    good = selective_summary(labels, probs)
    flipped = probs.copy()
    confident = probs.max(1) > np.quantile(probs.max(1), 0.8)
    flipped[confident] = flipped[confident][:, ::-1]  # the most confident answers become the wrong ones
    bad = selective_summary(labels, flipped)
    assert bad["aurc"] > good["aurc"] + 0.1
    assert good["accuracy_kept"] > good["accuracy_all"]


def test_report_has_sets_and_selective_prediction(tmp_path):
    from medmamba.evaluation.reports import assess, summary_text, write_report
    probs, labels = noisy_classifier(400, classes=3, seed=4)
    sets = calibrate_sets(probs[:200], labels[:200], 0.9, "aps")
    report = assess(labels[200:], probs[200:], "multi-class", ["a", "b", "c"], n_resamples=100, conformal=sets)
    assert report["conformal"]["empirical_coverage"] >= 0.8 and report["selective"]["n"] == 200
    text = summary_text(report)
    assert "Prediction sets (aps, calibrated on the validation split for 90% coverage)" in text
    assert "Selective prediction: referring the least confident 10% to a person" in text
    paths = write_report(tmp_path / "r", report, labels[200:], probs[200:], ["a", "b", "c"], "t")
    assert paths["risk_coverage"].stat().st_size > 1000 and "## Prediction sets" in paths["md"].read_text()


def features_of(n, far=False, seed=0, dim=16):
    """Features as a network gives them: most of their variation in a few directions (other directions for
    'far' images), the two classes apart along one of them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    feats = 0.05 * rng.normal(size=(n, dim)).astype(np.float32)
    used = slice(3, 6) if far else slice(0, 3)
    feats[:, used] += rng.normal(size=(n, 3)) + 2
    feats[:, 0] += 3 * labels
    logits = np.stack([-feats[:, 0], feats[:, 0]], 1)
    return feats, logits, labels


@pytest.mark.parametrize("method", ["stages", "mahalanobis", "knn"])
def test_ood_detector_threshold_flags_and_reloads(tmp_path, method):
    from medmamba.evaluation.ood import OODDetector, fit_detector, separation

    def as_used(f):  # stages reads one array per stage: here two, the halves of the features
        return (np.split(f[0], 2, axis=1), *f[1:]) if method == "stages" else f
    train, val, test = (as_used(features_of(n, seed=s)) for n, s in ((400, 1), (200, 2), (200, 3)))
    far = as_used(features_of(200, far=True, seed=4))
    detector = fit_detector(method, train, val[:2], tpr=0.95, k=10)
    val_scores = detector.scores(*val[:2])
    assert np.mean(~detector.flags(val_scores)) == pytest.approx(0.95, abs=0.01)  # 95% of validation passes
    s_in, s_out = detector.scores(*test[:2]), detector.scores(*far[:2])
    check = separation(s_in, s_out)
    assert check["auroc"] > 0.95 and check["fpr_at_95_tpr"] < 0.1 and detector.flags(s_out).mean() > 0.9
    assert 0.85 < 1 - detector.flags(s_in).mean() <= 1.0
    detector.save_state(tmp_path / "ood.safetensors")
    again = OODDetector.from_card(detector.card_entry(), tmp_path / "ood.safetensors")
    np.testing.assert_allclose(again.scores(*far[:2]), s_out, rtol=1e-5)
    with pytest.raises(MedMambaError, match="needs what was fitted on the training images"):
        OODDetector.from_card(detector.card_entry(), tmp_path / "missing.safetensors")


def test_ood_separation_by_hand():
    from medmamba.evaluation.ood import separation
    out = separation(np.arange(20.0), np.array([25.0, 30.0, 5.0, 19.5]))
    # 95% of in-distribution scores are <= 19 (the "higher" 95th percentile of 0..19): 1 of 4 others passes
    assert out["fpr_at_95_tpr"] == 0.25 * 1 and out["n_in"] == 20
    assert out["auroc"] == pytest.approx((20 + 20 + 5.5 + 20) / (20 * 4))  # a tie counts half


def test_overlay_shows_an_image_that_uses_a_sliver_of_its_range():
    import torch

    from medmamba.evaluation.cam import display_window, overlay
    rng = np.random.default_rng(0)
    dim = torch.from_numpy(rng.integers(0, 3, (1, 40, 40)) / 255.0).float()  # a JPEG using values 0-2 of 255
    shown = overlay(dim, torch.zeros(40, 40), alpha=0.0, min_size=40)
    assert shown.max() - shown.min() >= 250  # black to white on screen, not black over black
    assert torch.equal(display_window(torch.full((1, 8, 8), 0.3)), torch.full((1, 8, 8), 0.3))
    full = torch.linspace(0, 1, 10001).reshape(1, 1, -1)
    assert torch.allclose(display_window(full, 0, 100), full)


def write_folder(root, n=12, dim_share=0.0, seed=0):
    """An image folder of two classes; ``dim_share`` of the images use values 0-2 of 255 only."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c, cls in enumerate(("benign", "malignant")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            top = 3 if i < dim_share * n else 256
            pixels = rng.integers(0, top, (20, 20)).astype(np.uint8)
            pixels[5:10, 5:10] = min(255, 40 * c + 100) if top == 256 else 2 * c
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


def test_data_look_counts_sizes_slivers_duplicates_and_unreadable_files(tmp_path, capsys):
    from medmamba.cli import main
    from medmamba.config import load_config
    from medmamba.data.builder import build_data
    from medmamba.data.look import look_at
    write_folder(tmp_path / "scans", dim_share=0.5)
    (tmp_path / "scans" / "benign" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cfg = load_config(None, [f"data.folder={tmp_path / 'scans'}", "data.channels=1"])
    look = look_at(build_data(cfg, augment=False))
    assert sum(sum(c.values()) for c in look.counts.values()) == 25 and look.sizes == {(20, 20): 24}
    assert look.unreadable == [(str(tmp_path / "scans" / "benign" / "broken.png"), look.unreadable[0][1])]
    assert "not a readable image" in look.unreadable[0][1]
    assert look.narrow_share == pytest.approx(0.5) and any("data.normalize=image" in w for w in look.warnings())
    assert main(["data", f"data.folder={tmp_path / 'scans'}", "data.channels=1"]) == 0
    out = capsys.readouterr().out
    assert "| benign |" in out and "unreadable files: 1" in out and "broken.png" in out
    # the same pixels in two splits are named
    import shutil
    shutil.copy(tmp_path / "scans" / "benign" / "0.png", tmp_path / "scans" / "benign" / "copy.png")
    look = look_at(build_data(cfg, augment=False))
    if look.duplicates:  # the copy landed in another split than its original
        assert any("0.png" in i for group in look.duplicates for _, i in group)
    split_of = {p: s for s, ds in build_data(cfg, augment=False).splits.items() for p, _ in ds.samples}
    one, two = str(tmp_path / "scans" / "benign" / "0.png"), str(tmp_path / "scans" / "benign" / "copy.png")
    assert bool(look.duplicates) == (split_of[one] != split_of[two])


def test_per_image_normalisation_stretches_dim_images_for_the_model():
    import torch

    from medmamba.data.transforms import build_transform
    dim = torch.randint(0, 3, (1, 16, 16), dtype=torch.uint8)
    plain = build_transform(16, 1, False, mean=0.5, std=0.5)(dim)
    stretched = build_transform(16, 1, False, mean=0.5, std=0.5, normalize="image")(dim)
    assert plain.max() - plain.min() < 0.05 and stretched.max() - stretched.min() > 1.9


@pytest.mark.skipif(not __import__("importlib").util.find_spec("pytorch_ood"), reason="pytorch-ood not installed")
def test_unreadable_file_is_left_out_before_training_or_refused(tmp_path):
    import json

    from medmamba import evaluate, train
    from medmamba.config import load_config
    write_folder(tmp_path / "scans", n=16)
    broken = tmp_path / "scans" / "malignant" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    base = [f"data.folder={tmp_path / 'scans'}", "data.channels=1", "data.img_size=16", "epochs=1", "batch_size=8",
            "model_args={depths: [1, 1], dims: [8, 16]}", "bootstrap=0", "tensorboard=false", "ood=knn"]
    with pytest.raises(MedMambaError, match="1 unreadable file.*data.unreadable=refuse.*broken.png"):
        train(load_config(None, base + ["data.unreadable=refuse"]), tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()  # refused before anything was written
    result = train(load_config(None, base), tmp_path / "run", progress=False)
    assert any("1 unreadable file(s) left out" in w and "broken.png" in w for w in result["assessment"]["warnings"])
    record = json.loads((tmp_path / "run" / "split.json").read_text())
    assert record["left_out"] == [str(broken)] and not any("broken" in i for s in record["splits"].values() for i in s)
    again = evaluate(tmp_path / "run", "test", write=False)  # reads the data again, the file still broken
    assert again.metrics["n"] == result["test"]["n"]


def test_subgroup_figures_with_intervals_and_the_largest_gap():
    from medmamba.evaluation.subgroups import subgroup_metrics, subgroups_text
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 200)
    sex = np.where(np.arange(200) % 2 == 0, "F", "M")
    p1 = np.where(labels == 1, 0.8, 0.2)
    p1 = np.where(sex == "M", 1 - p1, p1)  # right for every F, wrong for every M
    p1[:3] = 0.5
    probs = np.stack([1 - p1, p1], 1)
    out = subgroup_metrics(labels, probs, "binary-class", {"sex": sex, "site": ["a"] * 197 + ["b"] * 3},
                           n_resamples=100)
    f, m = out["sex"]["groups"]["F"], out["sex"]["groups"]["M"]
    assert f["n"] == m["n"] == 100 and f["accuracy"] > 0.95 and m["accuracy"] < 0.05
    assert out["sex"]["largest_gap"]["lowest"] == "M" and out["sex"]["largest_gap"]["difference"] > 0.9
    lo, hi = f["intervals"]["accuracy"]
    assert lo <= f["accuracy"] <= hi
    assert "accuracy" not in out["site"]["groups"]["b"] and out["site"]["largest_gap"] is None  # 3 images: listed
    assert "Largest gap:" in subgroups_text(out) and "| F | 100 |" in subgroups_text(out)


def test_subgroups_need_a_csv_column_and_are_checked_before_training(tmp_path):
    from medmamba import train
    from medmamba.config import load_config
    write_folder(tmp_path / "img", n=10)
    rows = ["path,label,sex"] + [f"img/{c}/{i}.png,{c},{'FM'[i % 2]}" for c in ("benign", "malignant")
                                 for i in range(10)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    base = [f"data.csv={tmp_path / 'm.csv'}", "data.channels=1", "data.img_size=16", "epochs=1", "batch_size=8",
            "model_args={depths: [1, 1], dims: [8, 16]}", "bootstrap=20", "tensorboard=false", "ood=null",
            "data.fractions=[0.5, 0.2, 0.3]"]
    with pytest.raises(MedMambaError, match="no column scanner for subgroups"):
        train(load_config(None, base + ["subgroups=[scanner]"]), tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()
    result = train(load_config(None, base + ["subgroups=[sex]"]), tmp_path / "run", progress=False)
    groups = result["assessment"]["subgroups"]["sex"]["groups"]
    assert set(groups) == {"F", "M"} and sum(g["n"] for g in groups.values()) == result["test"]["n"]
    assert "## Subgroups" in (tmp_path / "run" / "eval_test" / "report.md").read_text()
