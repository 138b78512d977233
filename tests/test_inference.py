"""Using a trained model: saved weights + JSON config, image files of every kind, `medmamba predict`."""
import csv
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from medmamba import create_model, load_model
from medmamba.artifacts.checkpoint import save_pretrained
from medmamba.cli import main
from medmamba.data import read_image
from medmamba.errors import CheckpointError, DataError
from medmamba.deploy.inference import Predictor

TINY_ARGS = {"depths": [1, 1], "dims": [8, 16]}
CLASSES = ["benign, typical", "malignant", "other"]


def saved_model(folder, in_chans=1, task="multi-class", mean=0.3, std=0.2, img_size=32, seed=0):
    torch.manual_seed(seed)
    model = create_model("medmamba_t", num_classes=len(CLASSES), in_chans=in_chans, **TINY_ARGS).eval()
    config = {"model": "medmamba_t", "model_args": TINY_ARGS, "num_classes": len(CLASSES), "in_chans": in_chans,
              "classes": CLASSES, "task": task, "img_size": img_size, "mean": mean, "std": std}
    weights, _ = save_pretrained(model, config, folder)
    return model, weights


def test_create_model_reads_the_json_config(tmp_path):
    model, weights = saved_model(tmp_path / "export")
    assert weights.name == "model.safetensors" and (tmp_path / "export" / "model.json").is_file()
    # class count, channels and the variant's overrides all come from model.json
    loaded = create_model("medmamba_t", pretrained=weights)
    assert (loaded.num_classes, loaded.in_chans, loaded.dims) == (3, 1, [8, 16])
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model(x))
    for path in (weights, tmp_path / "export"):  # the file or its folder
        torch.testing.assert_close(load_model(path)(x), model(x))
    assert load_model(weights).model_card.classes == CLASSES
    with pytest.raises(ValueError, match="holds medmamba_t weights, not medmamba_s"):
        create_model("medmamba_s", pretrained=weights)


def test_named_weights_file_gets_a_config_of_the_same_stem(tmp_path):
    model, weights = saved_model(tmp_path / "breast_v2.safetensors")
    assert weights == tmp_path / "breast_v2.safetensors" and (tmp_path / "breast_v2.json").is_file()
    assert load_model(weights).num_classes == 3
    with pytest.raises(CheckpointError, match="exists; pass --overwrite"):
        save_pretrained(model, {"model": "medmamba_t"}, weights)


def test_weights_without_config_are_a_clear_error(tmp_path):
    from safetensors.torch import save_file
    save_file(create_model("medmamba_t", **TINY_ARGS).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="no model.json"):
        load_model(tmp_path / "w.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        load_model(tmp_path / "empty")


def write_images(folder):
    """One image per format the predictor reads; returns path -> (H, W) or (H, W, 3) array in [0, 1]."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    colour = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    deep = rng.integers(0, 65536, (36, 36), dtype=np.uint16)
    Image.fromarray(grey).save(folder / "grey.png")
    Image.fromarray(colour).save(folder / "colour.png")
    Image.fromarray(deep).save(folder / "deep16.tif")
    Image.fromarray(grey).save(folder / "photo.jpg", quality=100)
    (folder / "sub").mkdir()
    Image.fromarray(grey[:20]).save(folder / "sub" / "nested.png")
    return {folder / "grey.png": grey / 255.0, folder / "colour.png": np.asarray(Image.fromarray(colour).convert("L")) / 255.0,  # ITU-R 601 luma
            folder / "deep16.tif": deep / 65535.0, folder / "sub" / "nested.png": grey[:20] / 255.0}


def expected_probs(model, array, mean=0.3, std=0.2, size=32):
    x = torch.tensor(array, dtype=torch.float32)[None]
    x = TF.resize(x, [size, size], antialias=True)
    with torch.no_grad():
        return model(((x - mean) / std)[None]).softmax(-1)[0].numpy()


def test_predict_cli_csv_failures_and_exit_code(tmp_path, capsys):
    model, _ = saved_model(tmp_path / "model")
    images = write_images(tmp_path / "images")
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "pred.csv"
    rc = main(["predict", str(tmp_path / "model"), str(tmp_path / "images"), str(tmp_path / "missing_*.png"),
               "--output", str(out), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert rc == 1  # some inputs failed
    assert "skipped" in captured.err and "broken.png" in captured.err and "missing_*.png" in captured.err
    assert "images/s" in captured.out and "5 images predicted, 2 skipped" in captured.out
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path"] + [f"prob_{c}" for c in CLASSES] + ["predicted"]
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == 5 and str(tmp_path / "images" / "photo.jpg") in by_path
    for path, array in images.items():
        row = by_path[str(path)]
        probs = np.array([float(row[f"prob_{c}"]) for c in CLASSES])
        # the saved preprocessing (size 32, mean 0.3, std 0.2, grey) is applied, not the defaults
        np.testing.assert_allclose(probs, expected_probs(model, array), atol=1e-4)
        assert row["predicted"] == CLASSES[int(probs.argmax())]

    # a clean run exits 0; the existing CSV is not replaced without --overwrite
    before = out.read_bytes()
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "images" / "grey.png"), "--output", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "images" / "[gc]*.png"), "--output", str(out),
                 "--overwrite"]) == 0
    assert len(out.read_text().splitlines()) == 1 + 2


def test_predict_nothing_found_is_one_clear_error(tmp_path, capsys):
    saved_model(tmp_path / "model")
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "none"), "--output", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no images to predict") and len(err.splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


def test_multi_label_uses_sigmoid_and_lists_every_label(tmp_path):
    saved_model(tmp_path / "model", task="multi-label, binary-class")
    write_images(tmp_path / "images")
    predictor = Predictor.from_checkpoint(tmp_path / "model")
    result = predictor.predict_files([tmp_path / "images" / "grey.png"])
    assert result.multi_label and not np.isclose(result.probabilities.sum(), 1.0)
    expected = ";".join(c for c, p in zip(CLASSES, result.probabilities[0]) if p >= 0.5)
    assert result.predicted() == [expected]


def test_model_trained_with_tta_predicts_with_it(tmp_path):
    model, _ = saved_model(tmp_path / "plain")
    saved_model(tmp_path / "tta")
    config = (tmp_path / "tta" / "model.json")
    config.write_text(json.dumps({**json.loads(config.read_text()), "tta": True}))
    x = torch.randn(3, 1, 32, 32)
    plain = Predictor.from_checkpoint(tmp_path / "plain", device="cpu")
    tta = Predictor.from_checkpoint(tmp_path / "tta", device="cpu")
    assert tta.tta and not plain.tta
    with torch.no_grad():
        mirrored = model(x.flip(-1)).softmax(-1).numpy()
    np.testing.assert_allclose(tta.predict_batch(x), (plain.predict_batch(x) + mirrored) / 2, rtol=1e-5, atol=1e-7)
    assert np.abs(tta.predict_batch(x) - plain.predict_batch(x)).max() > 1e-4


needs_pydicom = pytest.mark.skipif(importlib.util.find_spec("pydicom") is None, reason="pydicom is not installed")


def write_dicom(path, pixels, photometric="MONOCHROME2", slope=None, intercept=None, center=None, width=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


@needs_pydicom
def test_dicom_rescale_window_and_monochrome1(tmp_path):
    stored = np.arange(0, 2400, 10, dtype=np.uint16).reshape(12, 20)
    hu = stored * 2.0 - 1024.0                      # RescaleSlope 2, RescaleIntercept -1024
    windowed = np.clip((hu - 39.5) / 399.0 + 0.5, 0, 1)   # WindowCenter 40, WindowWidth 400 (PS3.3 C.11.2.1.2)
    write_dicom(tmp_path / "ct.dcm", stored, slope=2, intercept=-1024, center=40, width=400)
    np.testing.assert_allclose(read_image(tmp_path / "ct.dcm", 1)[0].numpy(), windowed, atol=1e-6)

    # MONOCHROME1 shows low values white; without a window the full range is used; no suffix needed
    write_dicom(tmp_path / "xray_no_suffix", stored, photometric="MONOCHROME1")
    np.testing.assert_allclose(read_image(tmp_path / "xray_no_suffix", 1)[0].numpy(),
                               1.0 - stored / stored.max(), atol=1e-6)
    assert read_image(tmp_path / "ct.dcm", 3).shape == (3, 12, 20)

    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\1\2\3")
    with pytest.raises(DataError, match="bad.dcm: not a readable DICOM"):
        read_image(tmp_path / "bad.dcm", 1)


@needs_pydicom
def test_predict_reads_dicom(tmp_path):
    model, _ = saved_model(tmp_path / "model")
    stored = (np.arange(36 * 36).reshape(36, 36) % 700).astype(np.uint16)
    write_dicom(tmp_path / "scan.dcm", stored, photometric="MONOCHROME1", center=300, width=500)
    result = Predictor.from_checkpoint(tmp_path / "model").predict_files([tmp_path])
    assert result.paths == [str(tmp_path / "scan.dcm")] and not result.failures
    shown = 1.0 - np.clip((stored - 299.5) / 499.0 + 0.5, 0, 1)
    np.testing.assert_allclose(result.probabilities[0], expected_probs(model, shown), atol=1e-4)


def test_binary_operating_point_from_the_card_decides_the_predicted_class():
    from medmamba.deploy.inference import PredictionResult
    probs = np.array([[0.7, 0.3], [0.9, 0.1], [0.4, 0.6]])
    plain = PredictionResult(["a", "b", "c"], probs, ["malignant", "benign"], False)
    assert plain.predicted() == ["malignant", "malignant", "benign"]
    # threshold 0.2 on p(malignant), chosen for sensitivity: only clearly benign images are called benign
    low = PredictionResult(["a", "b", "c"], probs, ["malignant", "benign"], False, threshold=0.2, positive=0)
    assert low.predicted() == ["malignant", "malignant", "malignant"]
    high = PredictionResult(["a", "b", "c"], probs, ["malignant", "benign"], False, threshold=0.8, positive=0)
    assert high.predicted() == ["benign", "malignant", "benign"]
