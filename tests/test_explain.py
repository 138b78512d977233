"""Class activation maps: on a model whose evidence is known to lie in one corner, the map must peak there."""
import numpy as np
import pytest
import torch
from PIL import Image

from medmamba import create_model
from medmamba.artifacts.checkpoint import save_pretrained
from medmamba.cli import main
from medmamba.evaluation.cam import class_activation_map, overlay

SIZE, CORNER = 32, 10


def corner_images(n, generator):
    """Noise with four bright squares in every image: class 1 has one of them inside the top-left corner,
    class 0 has all four elsewhere. Brightness and count are equal, so only the corner tells the classes apart."""
    x = torch.rand(n, 1, SIZE, SIZE, generator=generator) * 0.3
    y = torch.randint(0, 2, (n,), generator=generator)
    for i in range(n):
        for k in range(4):
            if k == 0 and y[i]:
                r, c = torch.randint(0, CORNER - 6 + 1, (2,), generator=generator).tolist()
            else:
                r, c = torch.randint(0, SIZE - 6 + 1, (2,), generator=generator).tolist()
                if r < CORNER + 2 and c < CORNER + 2:
                    r += CORNER + 2
            x[i, 0, r:r + 6, c:c + 6] = 1.0
    return (x - 0.5) / 0.5, y


@pytest.fixture(scope="module")
def corner_model():
    # Seed 1: a model on which classic Grad-CAM misses the corner in most images (see medmamba/explain.py).
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    model = create_model("medmamba_t", num_classes=2, in_chans=1, depths=[1, 1], dims=[16, 32], drop_path_rate=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(100):
        x, y = corner_images(32, g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = corner_images(64, g)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.95, f"the corner task was not learnt (held-out accuracy {accuracy:.2f})"
    return model, x, y


def test_map_peaks_in_the_evidence_corner(corner_model):
    model, x, y = corner_model
    positives = x[y == 1]
    cam = class_activation_map(model, positives, target=1)  # defaults: HiResCAM, the last stage
    assert cam.maps.shape == (len(positives), SIZE, SIZE) and (cam.targets == 1).all()
    half = SIZE // 2
    peaks = cam.maps.flatten(1).argmax(1)
    in_corner = ((peaks // SIZE < half) & (peaks % SIZE < half)).float().mean().item()
    assert in_corner >= 0.9, f"only {in_corner:.0%} of the maps peak in the top-left quadrant"
    assert cam.maps[:, :half, :half].mean() > 2 * cam.maps[:, half:, :].mean()


def test_gradcam_and_hirescam_formulas(corner_model):
    """Both from one gradient G and map A of the last stage's last block input, computed here by hand."""
    model, x, _ = corner_model
    x = x[:4].clone()
    captured = {}
    hook = model.layers[-1].blocks[-1].register_forward_pre_hook(lambda m, i: captured.setdefault("a", i[0]))
    logits = model(x.requires_grad_(True))
    hook.remove()
    a = captured["a"]
    g, = torch.autograd.grad(logits[:, 0].sum(), a)
    for method, weights in (("hirescam", g), ("gradcam", g.mean((1, 2), keepdim=True))):
        expected = torch.relu((weights * a).sum(-1)).detach()
        expected = torch.nn.functional.interpolate(expected[:, None], size=(SIZE, SIZE), mode="bilinear")[:, 0]
        expected = expected / expected.flatten(1).amax(1)[:, None, None]
        got = class_activation_map(model, x.detach(), target=0, method=method).maps
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_maps_for_every_variant_size_and_stage():
    for name in ("medmamba_t", "medmamba_s", "medmamba_b"):
        model = create_model(name, num_classes=4, in_chans=3).eval()
        x = torch.randn(2, 3, 72, 40)
        for stage in range(4):
            cam = class_activation_map(model, x, stage=stage)
            assert cam.maps.shape == (2, 72, 40) and torch.isfinite(cam.maps).all()
            assert cam.maps.min() >= 0 and cam.maps.amax((1, 2)).allclose(torch.ones(2))
        with pytest.raises(ValueError, match="stage 4 does not exist"):
            class_activation_map(model, x, stage=4)
    # the model is left as it was: no hooks, no gradients
    assert not model.layers[3].blocks[-1]._forward_pre_hooks and all(p.grad is None for p in model.parameters())


def test_overlay_is_rgb_and_enlarges_small_images():
    rgb = overlay(torch.rand(1, 28, 28), torch.rand(7, 7))
    assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
    assert overlay(torch.rand(3, 300, 400), torch.rand(9, 9)).shape == (300, 400, 3)


def test_explain_cli_writes_overlays(corner_model, tmp_path, capsys):
    model, x, y = corner_model
    config = {"model": "medmamba_t", "model_args": {"depths": [1, 1], "dims": [16, 32]}, "num_classes": 2,
              "in_chans": 1, "classes": ["clear", "corner"], "task": "binary-class", "img_size": SIZE,
              "mean": 0.5, "std": 0.5}
    save_pretrained(model, config, tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(((x[i, 0] * 0.5 + 0.5).numpy() * 255).astype(np.uint8)).save(images / f"img{i}.png")
    (images / "junk.png").write_text("not an image")
    out = tmp_path / "cams"
    rc = main(["explain", str(tmp_path / "model"), str(images), "--output", str(out), "--target", "corner"])
    assert rc == 1 and "junk.png" in capsys.readouterr().err
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"img{i}_hirescam.png" for i in range(3)]
    assert Image.open(out / pngs[0]).size == (256, 256)
    rows = (out / "maps.csv").read_text().splitlines()
    assert rows[0] == "path,map_png,class,probability" and len(rows) == 4 and ",corner," in rows[1]
    assert main(["explain", str(tmp_path / "model"), str(images / "img0.png"), "--output", str(out),
                 "--target", "nope"]) == 2
    assert "neither a class name nor an index" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "model"), str(images / "img0.png"), "--output", str(tmp_path / "o2"),
                 "--stage", "2"]) == 2
    assert "the model has stages 0..1" in capsys.readouterr().err
