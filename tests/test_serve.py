"""The web page in a real browser (Playwright driving Debian's chromium) and the HTTP API under load.

The server is `medmamba serve` in its own process on 127.0.0.1, stopped by the tests; nothing else is
contacted. Without gradio, playwright or /usr/bin/chromium these tests are skipped with the reason
(.ci/run installs all three).
"""
import concurrent.futures
import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmamba.cli import main
from medmamba.training.trainer import train

from .helpers import MEDMNIST, REPO, needs_medmnist, tiny_cfg


pytest.importorskip("gradio")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = needs_medmnist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    data = np.load(MEDMNIST / "breastmnist.npz")
    for i in range(4):
        Image.fromarray(data["test_images"][i]).save(folder / f"case{i}.png")
    (folder / "garbage.png").write_bytes(b"this is not an image")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = tmp_path_factory.mktemp("serve") / "run"
    train(tiny_cfg("epochs=1", "bootstrap=100"), run, progress=False)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "medmamba", "serve", str(run), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read())
            time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError("server did not start within 120 s")
    yield {"url": url, "run": run, "proc": proc}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def table_rows(page) -> list[list[str]]:
    """The predictions table as shown: Gradio's data grid, cell by (row, column)."""
    page.wait_for_selector("#results [role=gridcell][data-row]", timeout=30000)
    grid = {}
    for cell in page.locator("#results [role=gridcell][data-row]").all():
        grid.setdefault(int(cell.get_attribute("data-row")), {})[int(cell.get_attribute("data-col"))] = \
            cell.inner_text().strip()
    return [[row[c] for c in sorted(row)] for _, row in sorted(grid.items())]


def predict_csv(run, files, tmp_path) -> list[dict]:
    out = tmp_path / "predict.csv"
    assert main(["predict", str(run), *map(str, files), "--output", str(out), "--overwrite"]) in (0, 1)
    return list(csv.DictReader(open(out)))


def test_page_in_a_real_browser(server, images, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip("no chromium: apt-get install chromium")
    good = sorted(images.glob("case*.png"))[:3]
    expected = {Path(r["path"]).name: r for r in predict_csv(server["run"], good, tmp_path)}
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(server["url"])
        page.wait_for_selector("#predict")
        assert "medmamba_t" in page.inner_text("#card") and "Test split" in page.inner_text("#card")
        page.locator("#upload input[type=file]").set_input_files([*map(str, good), str(images / "garbage.png")])
        page.wait_for_timeout(1000)
        page.click("#predict")
        page.wait_for_selector("#overlay img", timeout=60000)
        page.wait_for_function("document.querySelector('#message').innerText.includes('not read')", timeout=30000)
        # the table shows predict's probabilities and classes
        shown = {cells[0]: cells for cells in table_rows(page)}
        assert set(shown) == set(expected)
        for name, cells in shown.items():
            want = expected[name]
            assert abs(float(cells[1]) - float(want["prob_malignant"])) <= 1e-4
            assert abs(float(cells[2]) - float(want["prob_normal, benign"])) <= 1e-4
            assert cells[3] == want["predicted"]
            assert cells[4] == want["set"] and abs(float(cells[5]) - float(want["ood_score"])) <= 1e-3 * max(
                1.0, abs(float(want["ood_score"])))
            assert cells[6] == want["ood"]
        # the garbage upload is one clear message; the overlay of the first image appears
        message = page.inner_text("#message")
        assert "garbage.png" in message and "not a readable image" in message and str(images) not in message
        assert page.locator("#overlay img").get_attribute("src")
        first = expected[sorted(expected)[0]]
        assert page.locator("#predicted textarea").input_value() == first["predicted"]
        # the prediction set and the out-of-distribution badge of the image shown
        assert page.locator("#set textarea").input_value().startswith(first["set"].replace("|", " | ") + ":")
        badge = page.inner_text("#ood")
        assert ("Out of distribution" in badge) == (first["ood"] == "True") and "score" in badge
        # the CSV download equals predict's CSV (paths shown as the uploaded files' names)
        href = page.locator("#csv a").first.get_attribute("href")
        downloaded = list(csv.DictReader(io.StringIO(page.request.get(href).text())))
        assert [{**r, "path": Path(r["path"]).name} for r in downloaded] == \
            [{**expected[n], "path": n} for n in sorted(expected)]
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        # a good upload after the garbage one still works
        page.locator("#upload button[aria-label='Clear']").first.click()
        page.locator("#upload input[type=file]").set_input_files([str(images / "case3.png")])
        page.wait_for_timeout(1000)
        page.click("#predict")
        page.wait_for_function("document.querySelector('#message').innerText.includes('1 image(s) predicted')",
                               timeout=60000)
        assert [cells[0] for cells in table_rows(page)] == ["case3.png"]
        assert "1 image(s) predicted." in page.inner_text("#message")
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_api_under_a_burst_of_50_concurrent_requests(server, images, tmp_path):
    from gradio_client import Client, handle_file
    image = images / "case0.png"
    want = predict_csv(server["run"], [image], tmp_path)[0]
    client = Client(server["url"], verbose=False)
    client.predict(handle_file(str(image)), api_name="/predict")  # warm-up, not counted
    before = rss_mb(server["proc"].pid)
    start = time.time()

    def one(_):
        t0 = time.time()
        answer = client.predict(handle_file(str(image)), api_name="/predict")
        return answer, time.time() - t0
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        done = list(pool.map(one, range(50), timeout=60))
    answers, latencies = [a for a, _ in done], [t for _, t in done]
    after = rss_mb(server["proc"].pid)
    assert len(answers) == 50 and time.time() - start < 60
    for answer in answers:
        assert answer["predicted"] == want["predicted"]
        assert abs(answer["probabilities"]["malignant"] - float(want["prob_malignant"])) <= 1e-4
    assert after - before < 300, (before, after)
    print(f"\n50 concurrent requests, 0 failures, latency p50 {np.percentile(latencies, 50):.2f} s, p95 "
          f"{np.percentile(latencies, 95):.2f} s, all in {time.time() - start:.1f} s; server RSS {before:.0f} -> "
          f"{after:.0f} MB")
    # a bad file through the API is an error for that request only; the server goes on serving
    with pytest.raises(Exception, match="not a readable image"):
        client.predict(handle_file(str(images / "garbage.png")), api_name="/predict")
    # so is an upload over the size limit (20 MB by default), refused before it is read
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (21 * 1024 * 1024))
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), api_name="/predict")
    assert client.predict(handle_file(str(image)), api_name="/predict")["predicted"] == want["predicted"]
    assert server["proc"].poll() is None


def test_serve_refuses_paths_that_were_not_uploaded(tmp_path):
    from medmamba.errors import MedMambaError
    from medmamba.deploy.serve import Service
    service = Service([], tmp_path / "uploads")
    (tmp_path / "uploads" / "x").mkdir(parents=True)
    (tmp_path / "uploads" / "x" / "a.png").write_bytes(b"")
    assert service.uploaded(tmp_path / "uploads" / "x" / "a.png").name == "a.png"
    for outside in ("/etc/passwd", tmp_path / "uploads" / ".." / "secret.png"):
        with pytest.raises(MedMambaError, match="not an uploaded file"):
            service.uploaded(outside)


def test_several_models_a_selector_and_their_ensemble(tmp_path, images):
    import torch

    from medmamba import create_model
    from medmamba.artifacts.checkpoint import save_pretrained
    from medmamba.deploy.serve import ENSEMBLE, Service, load_models
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("medmamba_t", num_classes=2, in_chans=1, depths=[1, 1], dims=[8, 16]).eval()
        card = {"model": "medmamba_t", "model_args": {"depths": [1, 1], "dims": [8, 16]}, "num_classes": 2,
                "in_chans": 1, "classes": ["malignant", "normal, benign"], "task": "binary-class", "img_size": 28}
        save_pretrained(model, card, tmp_path / f"m{seed}")
        runs.append(tmp_path / f"m{seed}")
    uploads = tmp_path / "uploads"
    (uploads / "a").mkdir(parents=True)
    files = [shutil.copy(images / f"case{i}.png", uploads / "a") for i in range(2)]
    service = Service(load_models(runs), uploads)
    assert service.choices == ["m0", "m1", ENSEMBLE]
    each = [service.predict(files, name).probabilities for name in ("m0", "m1")]
    assert not np.allclose(each[0], each[1])
    np.testing.assert_allclose(service.predict(files, ENSEMBLE).probabilities, (each[0] + each[1]) / 2, rtol=1e-6)


def test_map_of_the_predicted_class_follows_the_cards_threshold(tmp_path, images):
    import json

    import torch

    from medmamba import create_model
    from medmamba.artifacts.checkpoint import save_pretrained
    from medmamba.deploy.serve import Service, load_models
    torch.manual_seed(0)
    model = create_model("medmamba_t", num_classes=2, in_chans=1, depths=[1, 1], dims=[8, 16]).eval()
    card = {"model": "medmamba_t", "model_args": {"depths": [1, 1], "dims": [8, 16]}, "num_classes": 2,
            "in_chans": 1, "classes": ["malignant", "normal, benign"], "task": "binary-class", "img_size": 28}
    save_pretrained(model, card, tmp_path / "m")
    uploads = tmp_path / "uploads"
    (uploads / "a").mkdir(parents=True)
    image = shutil.copy(images / "case0.png", uploads / "a")
    service = Service(load_models([tmp_path / "m"]), uploads)
    p_malignant = float(service.predict([image]).probabilities[0, 0])
    maps = {}
    for threshold, expected in ((0.0, "malignant"), (1.01, "normal, benign")):  # always / never malignant
        (tmp_path / "m" / "model.json").write_text(json.dumps({**card, "threshold": threshold, "positive_class": 0}))
        service = Service(load_models([tmp_path / "m"]), uploads)
        assert service.predict([image]).predicted() == [expected]
        maps[expected] = service.activation_map(image, None, "predicted", 0.5)
        np.testing.assert_array_equal(maps[expected], service.activation_map(image, None, expected, 0.5))
    assert 0 < p_malignant < 1 and not np.array_equal(maps["malignant"], maps["normal, benign"])
