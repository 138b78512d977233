import http.server
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from medmamba.data import (MedMNIST, build_transform, csv_manifest_splits, image_folder_splits, medmnist_file,
                           medmnist_info, medmnist_subsets, read_image)
from medmamba.errors import DataError

from .helpers import MEDMNIST, REPO, needs_medmnist


def test_subset_table():
    names = medmnist_subsets()
    assert len(names) == 12 and "chestmnist" in names and "retinamnist" in names
    breast = medmnist_info("breastmnist")
    assert breast.task == "binary-class" and breast.labels == ("malignant", "normal, benign")
    assert breast.filename(28) == "breastmnist.npz" and medmnist_info("pneumoniamnist").filename(64) == \
        "pneumoniamnist_64.npz"
    assert breast.files[28]["md5"] == "750601b1f35ba3300ea97c75c52ff8f6"
    assert medmnist_info("chestmnist").multi_label and medmnist_info("chestmnist").num_classes == 14
    assert medmnist_info("retinamnist").task == "ordinal-regression"
    assert medmnist_info("pathmnist").n_channels == 3
    with pytest.raises(DataError, match="unknown MedMNIST subset 'nope'"):
        medmnist_info("nope")


@needs_medmnist
def test_medmnist_splits_load():
    sizes = {s: len(MedMNIST("breastmnist", s, MEDMNIST)) for s in ("train", "val", "test")}
    assert sizes == {"train": 546, "val": 78, "test": 156}
    ds = MedMNIST("pneumoniamnist", "test", MEDMNIST, transform=build_transform(64, 3, train=False))
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert -1.0 <= x.min() and x.max() <= 1.0


def test_missing_file_offline_says_where(tmp_path):
    with pytest.raises(DataError, match=r"breastmnist_64\.npz not found\. Put the official"):
        medmnist_file("breastmnist", tmp_path, size=64)


class _Server:
    def __init__(self, routes):
        routes = routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status, body = routes.get(self.path, (404, b""))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@needs_medmnist
def test_download_good_corrupt_and_server_error(tmp_path):
    good = (MEDMNIST / "breastmnist.npz").read_bytes()
    server = _Server({"/good": (200, good), "/corrupt": (200, good[:-100] + b"x" * 100), "/error": (500, b"")})
    try:
        for route, match in (("/corrupt", "is corrupt: MD5"), ("/error", "failed")):
            with pytest.raises(DataError, match=match):
                medmnist_file("breastmnist", tmp_path, download_missing=True, url=server.url + route)
            assert list(tmp_path.iterdir()) == []  # nothing partial left behind
        path = medmnist_file("breastmnist", tmp_path, download_missing=True, url=server.url + "/good")
        assert path == tmp_path / "breastmnist.npz" and path.read_bytes() == good
        assert len(MedMNIST("breastmnist", "val", tmp_path)) == 78
    finally:
        server.close()


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_bad_npz_files(tmp_path):
    root = tmp_path
    good = dict(train_images=np.zeros((4, 28, 28), np.uint8), train_labels=np.array([[0], [1], [1], [0]], np.uint8))
    _npz(root / "breastmnist.npz", **good)
    assert len(MedMNIST("breastmnist", "train", root)) == 4
    with pytest.raises(DataError, match="missing keys val_images, val_labels"):
        MedMNIST("breastmnist", "val", root)
    _npz(root / "breastmnist.npz", train_images=good["train_images"], train_labels=np.array([[0], [1], [2], [0]]))
    with pytest.raises(DataError, match="labels out of range 0..1 .*sample 2"):
        MedMNIST("breastmnist", "train", root)
    data = (root / "breastmnist.npz").read_bytes()
    (root / "breastmnist.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable .npz"):
        MedMNIST("breastmnist", "train", root)
    (root / "breastmnist.npz").write_bytes(b"garbage" * 50)
    with pytest.raises(DataError, match="not a readable .npz"):
        MedMNIST("breastmnist", "train", root)


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def test_read_image_grey_colour_16bit_and_exif(tmp_path):
    grey = _png(tmp_path / "g.png", (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4))
    x = read_image(grey, 1)
    assert x.shape == (1, 8, 8) and x.max() == pytest.approx(252 / 255)
    assert read_image(grey, 3).shape == (3, 8, 8)
    deep = np.full((4, 6), 65535, np.uint16)
    deep[0, 0] = 0
    img16 = tmp_path / "d.png"
    Image.fromarray(deep).save(img16)
    x16 = read_image(img16, 1)
    assert x16.shape == (1, 4, 6) and x16.max() == pytest.approx(1.0) and x16.min() == 0.0
    rgb = _png(tmp_path / "c.png", np.zeros((5, 7, 3), np.uint8) + np.array([255, 0, 0], np.uint8))
    assert read_image(rgb, 3)[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): a 5x7 file shows as 7x5
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "r.jpg"
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(rotated, exif=exif)
    assert read_image(rotated, 3).shape == (3, 7, 5)


def test_unreadable_and_bomb_images_are_named(tmp_path, monkeypatch):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        read_image(bad, 1)
    big = _png(tmp_path / "big.png", np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="big.png: refused, image too large"):
        read_image(big, 1)


def test_image_folders_official_layout_and_single_folder_split(tmp_path):
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for cls in ("benign", "malignant"):
            for i in range(n):
                _png(tmp_path / "official" / split / cls / f"{i}.png", np.zeros((8, 8), np.uint8))
    splits, classes = image_folder_splits(tmp_path / "official", channels=1)
    assert classes == ["benign", "malignant"] and {k: len(v) for k, v in splits.items()} == \
        {"train": 6, "val": 2, "test": 4}
    flat = tmp_path / "flat"
    for cls, n in (("a", 20), ("b", 10)):
        for i in range(n):
            _png(flat / cls / f"{i}.png", np.zeros((4, 4), np.uint8))
    s1, _ = image_folder_splits(flat, seed=3)
    assert not list(flat.glob("*.json"))  # nothing is written into the data folder
    assert {k: len(v) for k, v in s1.items()} == {"train": 21, "val": 3, "test": 6}
    assert sum(label for _, label in s1["test"]) == 2  # stratified: 2 of b's 10 in test
    assert image_folder_splits(flat, seed=3)[0] == s1  # the same files and seed give the same split
    (flat / "c").mkdir()
    with pytest.raises(DataError, match="empty class folder"):
        image_folder_splits(flat, seed=4)


def test_csv_manifest(tmp_path):
    for i in range(6):
        _png(tmp_path / "img" / f"{i}.png", np.zeros((4, 4), np.uint8))
    rows = "path,label,split\n" + "\n".join(f"img/{i}.png,{'cat' if i % 2 else 'dog'},{['train', 'val', 'test'][i % 3]}"
                                             for i in range(6))
    (tmp_path / "m.csv").write_text(rows)
    splits, classes, _ = csv_manifest_splits(tmp_path / "m.csv")
    assert classes == ["cat", "dog"] and {k: len(v) for k, v in splits.items()} == {"train": 2, "val": 2, "test": 2}
    (tmp_path / "bad.csv").write_text("file,y\na.png,1\n")
    with pytest.raises(DataError, match="path,label"):
        csv_manifest_splits(tmp_path / "bad.csv")


@needs_medmnist
def test_pooled_manifest_script(tmp_path):
    """benchmarks/pooled_manifest.py: two subsets as one CSV-manifest dataset, one test split left out; a
    second run into the same folder, or a subset whose file is missing, is refused without touching anything."""
    script = [sys.executable, str(REPO / "benchmarks" / "pooled_manifest.py")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = tmp_path / "pool"
    args = ["breastmnist", "pneumoniamnist", "--no-test", "breastmnist", "--data-root", str(MEDMNIST),
            "--output", str(out)]
    subprocess.run([*script, *args], env=env, check=True, capture_output=True)
    splits, classes, _ = csv_manifest_splits(out / "manifest.csv")
    assert classes == ["breastmnist:malignant", "breastmnist:normal, benign", "pneumoniamnist:normal",
                       "pneumoniamnist:pneumonia"]
    breast = {s: MedMNIST("breastmnist", s, MEDMNIST) for s in ("train", "val")}
    pneumonia = {s: MedMNIST("pneumoniamnist", s, MEDMNIST) for s in ("train", "val", "test")}
    assert {k: len(v) for k, v in splits.items()} == {
        "train": len(breast["train"]) + len(pneumonia["train"]), "val": len(breast["val"]) + len(pneumonia["val"]),
        "test": len(pneumonia["test"])}
    first_pneumonia = next(smp for smp in splits["train"] if smp[1] >= 2)
    assert np.array_equal(np.asarray(Image.open(splits["train"][0][0])), breast["train"].images[0])
    assert splits["train"][0][1] == breast["train"].labels[0]
    assert np.array_equal(np.asarray(Image.open(first_pneumonia[0])), pneumonia["train"].images[0])
    assert first_pneumonia[1] == 2 + pneumonia["train"].labels[0]

    before = (out / "manifest.csv").read_bytes()
    again = subprocess.run([*script, *args], env=env, capture_output=True, text=True)
    assert again.returncode != 0 and "already exists" in again.stderr
    assert (out / "manifest.csv").read_bytes() == before
    missing = subprocess.run([*script, "pathmnist", "--data-root", str(tmp_path / "empty"), "--output",
                              str(tmp_path / "p2")], env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "pathmnist.npz not found" in missing.stderr
    stray = subprocess.run([*script, "breastmnist", "--no-test", "pneumoniamnist", "--data-root", str(MEDMNIST),
                            "--output", str(tmp_path / "p3")], env=env, capture_output=True, text=True)
    assert stray.returncode != 0 and "not pooled: pneumoniamnist" in stray.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool"]
