"""End to end in a real headless Chromium against `streamlit run`: upload a folder, train, watch, reload, stop,
download the package and check that plain torch code loads it and predicts what the app's own model does.

Screenshots of every page land in test-artifacts/e2e/ (the path is printed) for a reviewer to look at.
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from playwright.sync_api import expect

from conftest import make_dataset, still_running
from e2e_helpers import RERUN_TIMEOUT_MS, SHOTS, nav, page, server, settle, shot  # noqa: F401 (page and server are fixtures)

pytestmark = pytest.mark.e2e


def test_upload_train_watch_reload_stop_download(server, page, tmp_path, capsys):
    url, home = server
    data = make_dataset(tmp_path / "upload" / "fruit", {"apple": 8, "plum": 8}, size=(64, 48))

    page.goto(url)
    page.get_by_role("heading", name="Fine-Tune Lab").wait_for(timeout=RERUN_TIMEOUT_MS)
    shot(page, "1-home")

    nav(page, "Data")
    page.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files(str(data))
    page.get_by_role("button", name="Use this folder").click()
    page.get_by_text("Thumbnails").wait_for(timeout=RERUN_TIMEOUT_MS)
    settle(page)
    expect(page.locator('[data-testid="stMetric"]').filter(has_text="Images")).to_contain_text("16")
    expect(page.locator('[data-testid="stMetric"]').filter(has_text="Classes")).to_contain_text("2")
    expect(page.locator('[data-testid="stSidebar"]')).to_contain_text(re.search(r"data=(\w+)", page.url).group(1))
    assert "data=" in page.url
    shot(page, "2-data")

    nav(page, "Model")
    page.get_by_text("Full fine-tuning (every layer trains)").click()  # a run slow enough to watch and stop
    settle(page)
    shot(page, "3-model")

    nav(page, "Train")
    assert "data=" in page.url  # the dataset followed the page switch
    epochs = page.get_by_role("spinbutton", name="Epochs")
    epochs.fill("40")
    epochs.press("Enter")
    settle(page)
    shot(page, "4-train-settings")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"run="), timeout=RERUN_TIMEOUT_MS)
    run_id = re.search(r"run=([\w-]+)", page.url).group(1)

    # live: progress moves, curves are drawn, the confusion matrix appears after an epoch and follows the epochs
    caption = page.get_by_text(re.compile(r"Validation confusion matrix, epoch \d+"))
    caption.wait_for(timeout=180_000)
    first = int(re.search(r"epoch (\d+)", caption.inner_text()).group(1))
    page.wait_for_function(
        "n => [...document.querySelectorAll('p')].some(p => (m = p.innerText.match(/confusion matrix, epoch (\\d+)/))"
        " && +m[1] > n)", arg=first, timeout=120_000)
    assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 3  # loss, accuracy, confusion
    expect(page.locator('[data-testid="stProgress"]').last).to_contain_text(re.compile(r"running .* left"))
    shot(page, "5-train-live")

    # a reload (a new session from the same URL) shows the same live job
    page.reload()
    page.get_by_text(re.compile(r"Validation confusion matrix, epoch \d+")).wait_for(timeout=RERUN_TIMEOUT_MS)
    assert run_id in page.url
    expect(page.locator('[data-testid="stProgress"]').last).to_contain_text("running")
    expect(page.locator('[data-testid="stSidebar"]')).to_contain_text("full")  # the new session took the run's settings

    page.get_by_role("button", name="Stop").click()
    # Stopped means the worker wrote its last files and ended; the page then draws the downloads once, in the
    # rerun that also stops the polling (a button from a polling rerun was revoked under the click).
    run_dir = home / "workspace" / "runs" / run_id
    expect(page.locator('[data-testid="stProgress"]').last).to_contain_text("stopped", timeout=RERUN_TIMEOUT_MS)
    page.get_by_text("Download the model package (zip)").wait_for(timeout=RERUN_TIMEOUT_MS)
    settle(page)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "stopped"
    shot(page, "6-train-stopped")

    with page.expect_download(timeout=RERUN_TIMEOUT_MS) as download:
        page.get_by_role("button", name="Download the model package (zip)").click()
    package = tmp_path / "package.zip"
    download.value.save_as(package)

    nav(page, "Results")
    page.get_by_role("tab", name="Confusion matrix").click()
    matrix = page.locator('[data-testid="stVegaLiteChart"]').filter(has_text="predicted class")
    expect(matrix.first).to_be_visible()
    expect(page.get_by_text(re.compile(r"\d+ images? of \w+ predicted as \w+"))).to_be_visible()
    gallery = page.locator('[data-testid="stTabs"] [data-testid="stImage"]')
    expect(gallery.first).to_be_visible()  # the images behind the chosen cell
    shot(page, "7-results-confusion")
    page.get_by_role("tab", name="Mistakes").click()
    expect(page.get_by_text(re.compile(r"misclassified|No held-out image is misclassified")).first).to_be_visible()
    shot(page, "7-results-mistakes")

    nav(page, "Predict")
    page.get_by_role("tab", name="Images").click()
    page.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files(
        [str(p) for p in sorted(data.rglob("*.png"))[:2]])
    table = page.locator('[data-testid="stDataFrame"]').first
    expect(table).to_be_visible(timeout=RERUN_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Download the predictions (CSV)")).to_be_visible()
    expect(page.locator('[data-testid="stProgress"]').filter(has_text=re.compile(r"(apple|plum) \d+\.\d%")).first
           ).to_be_visible()
    shot(page, "7-predict")
    nav(page, "Runs")
    expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
    shot(page, "8-runs")  # the table is a canvas: its rows and actions are tested through AppTest

    images = sorted(data.rglob("*.png"))[::3]
    theirs, ours = plain_torch_predictions(package, images), app_predictions(run_dir, images)
    assert theirs.argmax(1).tolist() == ours.argmax(1).tolist() and torch.allclose(theirs, ours, atol=1e-4)
    with capsys.disabled():
        print(f"\nscreenshots: {SHOTS}")


def plain_torch_predictions(package: Path, images: list[Path]) -> torch.Tensor:
    """What a user's own script gets, following the package's README with no code from this app."""
    import timm
    from safetensors.torch import load
    from torchvision.transforms import v2

    z = zipfile.ZipFile(package)
    classes, pre = json.loads(z.read("classes.json")), json.loads(z.read("preprocessing.json"))
    temperature = json.loads(z.read("calibration.json"))["temperature"]  # the README divides the logits by it
    assert 'timm.create_model("tf_efficientnet_lite0", num_classes=len(classes))' in z.read("README.md").decode()
    model = timm.create_model("tf_efficientnet_lite0", num_classes=len(classes))
    model.load_state_dict(load(z.read("model.safetensors")))
    model.eval()
    tf = v2.Compose([v2.ToImage(), v2.Resize(pre["resize_side"]),
                     v2.CenterCrop(pre["image_size"]), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(pre["mean"], pre["std"])])
    with torch.no_grad():
        return torch.cat([(model(tf(Image.open(p).convert("RGB"))[None]) / temperature).softmax(1) for p in images])


def app_predictions(run_dir: Path, images: list[Path]) -> torch.Tensor:
    """The app's own model and preprocessing (what its Predict page uses), from the run folder the server wrote."""
    from core.evaluate.predict import Predictor

    predictor = Predictor.load(run_dir)
    return predictor.probabilities([predictor.tensor(p) for p in images])


def test_a_run_on_two_processes_is_followed_and_stopped_in_the_browser(server, page, tmp_path):
    """Processes on this machine from the Train page: the job runs under torchrun, the page follows it like any
    other, and Stop ends torchrun and both of its workers."""
    from core.processes import descendants

    url, home = server
    data = make_dataset(tmp_path / "upload" / "leaves", {"oak": 8, "ash": 8}, size=(64, 48))
    page.goto(url)
    nav(page, "Data")
    page.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files(str(data))
    page.get_by_role("button", name="Use this folder").click()
    page.get_by_text("Thumbnails").wait_for(timeout=RERUN_TIMEOUT_MS)
    nav(page, "Model")
    page.get_by_text("Full fine-tuning (every layer trains)").click()
    settle(page)
    nav(page, "Train")
    epochs = page.get_by_role("spinbutton", name="Epochs")
    epochs.fill("40")
    epochs.press("Enter")
    settle(page)
    page.get_by_text("Several processes and machines").click()
    processes = page.get_by_role("spinbutton", name="Processes on this machine")
    processes.fill("2")
    processes.press("Enter")
    settle(page)
    expect(page.locator('[data-testid="stCode"]').first).to_contain_text("--nproc 2")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"run="), timeout=RERUN_TIMEOUT_MS)
    run_id = re.search(r"run=([\w-]+)", page.url).group(1)
    page.get_by_text(re.compile(r"Validation confusion matrix, epoch \d+")).wait_for(timeout=180_000)
    expect(page.locator('[data-testid="stProgress"]').last).to_contain_text("2 processes")
    shot(page, "9-train-two-processes")
    run_dir = home / "workspace" / "runs" / run_id
    torchrun = json.loads((run_dir / "worker.json").read_text())["pid"]
    tree = [torchrun, *descendants(torchrun)]
    assert len(tree) >= 3  # torchrun and its two workers
    page.get_by_role("button", name="Stop").click()
    expect(page.locator('[data-testid="stProgress"]').last).to_contain_text("stopped", timeout=RERUN_TIMEOUT_MS)
    assert still_running(tree) == []  # stopped is shown once torchrun ended; its workers are reaped by then or soon
    assert json.loads((run_dir / "status.json").read_text())["status"] == "stopped"
    assert json.loads((run_dir / "config.json").read_text())["provenance"]["processes"] == 2
