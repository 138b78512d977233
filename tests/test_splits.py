"""Splits without leakage: groups stay in one split, folds cover train+val once, the CSV group column."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from medmamba.config import load_config
from medmamba.data import csv_manifest_splits, group_split, kfold_indices
from medmamba.data.builder import build_data
from medmamba.errors import DataError

from .helpers import MEDMNIST, TINY, needs_medmnist


@pytest.mark.parametrize("draw", range(20))
def test_no_group_in_two_splits_over_random_draws(draw):
    rng = np.random.default_rng(draw)
    n_groups = int(rng.integers(8, 60))
    sizes = rng.integers(1, 6, n_groups)                      # 1-5 images per patient
    groups = np.repeat([f"p{g}" for g in range(n_groups)], sizes)
    labels = np.repeat(rng.integers(0, 3, n_groups), sizes)  # a patient's images share a label
    fractions = rng.dirichlet([7, 1, 2]) * 0.9 + np.array([0.05, 0.05, 0.0])
    fractions = fractions / fractions.sum()
    split = group_split(labels, groups, fractions, seed=draw)
    seen = {name: set(groups[idx]) for name, idx in split.items()}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert sorted(i for idx in split.values() for i in idx) == list(range(len(labels)))
    assert split["train"] and split["val"]


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("k", [2, 5])
def test_every_train_val_sample_is_validation_exactly_once(k, grouped):
    rng = np.random.default_rng(k)
    groups = np.repeat(np.arange(40), 3) if grouped else None
    labels = np.repeat(rng.integers(0, 2, 40), 3)
    folds = kfold_indices(labels, k, seed=1, groups=groups)
    assert len(folds) == k
    counts = np.zeros(len(labels), dtype=int)
    for train, val in folds:
        counts[val] += 1
        assert not set(train) & set(val) and sorted(train + val) == list(range(len(labels)))
        if grouped:
            assert not set(groups[train]) & set(groups[val])
    assert (counts == 1).all()


def write_images(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(folder / f"img{i}.png")


def test_csv_group_column_keeps_patients_together(tmp_path):
    write_images(tmp_path / "img", 60)
    rows = [{"path": f"img/img{i}.png", "label": "sick" if (i // 3) % 2 else "well", "group": f"patient{i // 3}"}
            for i in range(60)]
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "group"])
        w.writeheader()
        w.writerows(rows)
    splits, classes, groups = csv_manifest_splits(tmp_path / "m.csv", seed=3, fractions=(0.6, 0.2, 0.2))
    by_split = {s: {groups[p] for p, _ in v} for s, v in splits.items()}
    assert classes == ["sick", "well"] and set(splits) == {"train", "val", "test"}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["val"] & by_split["test"])
    assert not (by_split["train"] & by_split["val"])
    # a given split column that puts one patient in two splits is refused
    rows[0]["split"], rows[1]["split"] = "train", "test"
    for r in rows[2:]:
        r["split"] = "train"
    with open(tmp_path / "leak.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "group", "split"])
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match="groups in more than one split"):
        csv_manifest_splits(tmp_path / "leak.csv")


def test_fractions_are_configurable_and_checked(tmp_path):
    for cls in ("a", "b"):
        write_images(tmp_path / "flat" / cls, 50, seed=ord(cls))
    cfg = load_config(None, [f"data.folder={tmp_path / 'flat'}", "data.fractions=[0.5, 0.25, 0.25]"])
    data = build_data(cfg)
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [52, 24, 24]  # 12.5 per class rounds to 12
    assert not list((tmp_path / "flat").glob("*.json"))  # nothing is written into the data folder
    again = build_data(cfg)
    assert [ds.samples for ds in again.splits.values()] == [ds.samples for ds in data.splits.values()]
    with pytest.raises(Exception, match="adding up to 1"):
        load_config(None, ["data.fractions=[0.5, 0.5, 0.5]"])


@needs_medmnist
def test_medmnist_folds_pool_train_and_val_and_leave_test_alone():
    base = [f"data.root={MEDMNIST}", "data.folds=4"]
    vals, trains = [], []
    for fold in range(4):
        data = build_data(load_config(None, base + [f"data.fold={fold}"]))
        assert len(data.splits["train"]) + len(data.splits["val"]) == 546 + 78 and len(data.splits["test"]) == 156
        vals.append(len(data.splits["val"]))
        trains.append(data.splits["train"].labels)
    assert sum(vals) == 624
    with pytest.raises(DataError, match="data.fold=4"):
        build_data(load_config(None, base + ["data.fold=4"]))


@needs_medmnist
def test_cv_command_runs_every_fold_and_reports_mean_and_sd(tmp_path, capsys):
    from medmamba.cli import main
    assert main(["cv", "--output", str(tmp_path / "cv"), *TINY, "data.folds=2", "epochs=1",
                 "data.max_samples=24"]) == 0
    result = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert [r["fold"] for r in result["folds"]] == [0, 1]
    aucs = [r["auc"] for r in result["folds"]]
    assert result["summary"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert result["summary"]["auc"]["sd"] == pytest.approx(np.std(aucs, ddof=1))
    assert "mean +- sd" in capsys.readouterr().out
    assert not (tmp_path / "cv" / "fold0" / "eval_test").exists()  # the test split takes no part
