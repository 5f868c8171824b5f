"""Results, Predict and Runs pages through AppTest, over real runs on disk (what a server restart leaves behind)."""
import csv
import io
import json
import time
import zipfile

import onnxruntime
import pytest
import torch
import streamlit as st
from safetensors.torch import load
from streamlit.testing.v1 import AppTest

from conftest import ROOT, image_bytes, make_dataset
from core.evaluate import heldout
from core.evaluate.metrics import most_confused
from core.deploy import export
from core import runs
from core.train.engine import fit
from test_cli import cli
from test_engine import small_config

pytestmark = pytest.mark.integration

FINISHED, BARELY, CUT = "20260101-000000-aaaaaa", "20260102-000000-bbbbbb", "20260103-000000-cccccc"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Written once by the real engine: a trained run with a test split, a barely trained one (lr 1e-7: it
    makes mistakes to look at), and one cut off mid-training (the server died before it could say so)."""
    home = tmp_path_factory.mktemp("home")
    data = make_dataset(home / "data", {"red": 8, "blue": 8, "green": 8})
    config = small_config(data, epochs=2)
    config.data.test_ratio = 0.25
    fit(config, home / "workspace" / "runs" / FINISHED)
    fit(small_config(data, epochs=1, lr=1e-7), home / "workspace" / "runs" / BARELY)
    fit(small_config(data, epochs=1), home / "workspace" / "runs" / CUT)
    runs.write_status(home / "workspace" / "runs" / CUT, "running")
    return home


@pytest.fixture
def home(trained, monkeypatch):
    monkeypatch.setenv("FTLAB_HOME", str(trained / "workspace"))
    return trained


def open_page(page, run=None):
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    if run:
        at.query_params["run"] = run
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def metrics(at):
    return {m.label: m.value for m in at.metric}


def run_dir(home, run_id):
    return home / "workspace" / "runs" / run_id


def test_results_summary_and_per_class_table_come_from_the_run(home, fetch_download):
    at = open_page("views/results.py", run=FINISHED)
    assert at.selectbox(key="results-run").value == FINISHED
    run = runs.load_run(run_dir(home, FINISHED))
    results, _ = heldout.read(run.run_dir)
    shown = metrics(at)
    assert shown["Best epoch"] == f"{run.best_epoch} of 2"
    assert shown["Validation accuracy"] == f"{run.best['val_acc']:.1%}"
    assert shown["Test accuracy"] == f"{results['test']['acc']:.1%}"
    assert any("random weights" in w.value for w in at.warning)  # the tests train from random init
    table = at.dataframe[0].value
    assert set(table["class"]) == {"red", "blue", "green"} and list(table["F1"]) == sorted(table["F1"])
    f1 = dict(zip(run.classes, results["val"]["per_class"]["f1"]))
    assert all(abs(f1[c] - v) < 1e-9 for c, v in zip(table["class"], table["F1"]))
    at.radio(key="results-split").set_value("test").run()
    assert at.dataframe[0].value["support"].sum() == results["test"]["images"]
    buttons = {b.label: b for b in at.get("download_button")}
    weights = fetch_download(buttons["Download weights (model.safetensors)"])
    assert load(weights).keys() == load(export.weights_bytes(run.run_dir)).keys()
    package = zipfile.ZipFile(io.BytesIO(fetch_download(buttons["Download the model package (zip)"])))
    assert {"model.safetensors", "classes.json", "preprocessing.json", "README.md"} <= set(package.namelist())
    card = fetch_download(buttons["Download the model card (Markdown)"]).decode()
    assert "## Known weaknesses" in card and f"{results['val']['acc']:.1%}" in card


def test_confusion_cells_mistakes_saliency_and_calibration(home):
    at = open_page("views/results.py", run=BARELY)
    results, predictions = heldout.read(run_dir(home, BARELY))
    matrix = results["val"]["confusion"]
    counts = at.get("vega_lite_chart")[0].proto.spec
    at.toggle(key="results-normalise").set_value(True).run()
    assert "share" in at.get("vega_lite_chart")[0].proto.spec and at.get("vega_lite_chart")[0].proto.spec != counts
    for true, pred in ((0, 0), (1, 0), (2, 1)):
        at.selectbox(key="results-cell-true").set_value(true).run()
        at.selectbox(key="results-cell-pred").set_value(pred).run()
        assert any(c.value.startswith(f"{matrix[true][pred]} image") and " predicted as " in c.value
                   for c in at.caption)
    wrong = heldout.mistakes(predictions)
    assert wrong and sum(matrix[i][j] for i in range(3) for j in range(3) if i != j) == len(wrong)
    assert any(f"{len(wrong)} misclassified" in c.value for c in at.caption)
    assert [w["confidence"] for w in wrong] == sorted((w["confidence"] for w in wrong), reverse=True)
    captions = [c for img in at.get("image") for c in img.proto.imgs if "(" in c.caption]
    assert captions  # the gallery: true → predicted (confidence)
    assert any(c.caption == "where the evidence was (red: most)" for img in at.get("image") for c in img.proto.imgs)
    shown = results["calibration"]["reported_on"]  # no test split here: val, where the temperature was fitted
    assert shown == "val" and any("the 'after' figure is optimistic" in c.value for c in at.caption)
    assert metrics(at)["Calibration error (ECE) as trained"] == f"{results[shown]['ece']:.3f}"
    assert metrics(at)["After temperature scaling"] == f"{results[shown]['calibrated']['ece']:.3f}"


def test_a_run_without_evaluation_can_be_evaluated_and_gets_the_same_numbers(home, tmp_path):
    """The page's recomputation decodes each image itself; training evaluated through its loaders: same result."""
    run = run_dir(home, FINISHED)
    before, rows_before = heldout.read(run)
    for name in ("results.json", "predictions.jsonl"):
        (tmp_path / name).write_bytes((run / name).read_bytes())
        (run / name).unlink()
    try:
        at = open_page("views/results.py", run=FINISHED)
        next(b for b in at.button if b.key == "results-evaluate").click().run()
        assert not at.exception
        after, rows_after = heldout.read(run)
        assert after["val"]["confusion"] == before["val"]["confusion"]
        assert all(abs(a - b) < 1e-4 for ra, rb in zip(rows_after, rows_before) for a, b in zip(ra["probs"], rb["probs"]))
    finally:
        for name in ("results.json", "predictions.jsonl"):
            (run / name).write_bytes((tmp_path / name).read_bytes())


def test_results_compares_runs_and_switches_run(home):
    at = open_page("views/results.py")
    assert at.selectbox(key="results-run").value == CUT  # newest first
    at.selectbox(key="results-run").set_value(FINISHED).run()
    assert at.query_params["run"] == FINISHED  # the URL follows the choice
    charts_before = len(at.get("vega_lite_chart"))
    at.multiselect(key="results-compare").set_value([BARELY]).run()
    assert not at.exception and len(at.get("vega_lite_chart")) == charts_before + 1


def test_many_classes_list_the_most_confused_pairs_and_a_picked_pair_opens_its_images(workspace, tmp_path):
    """24 classes of 16 px images, one epoch from random weights: five colours over 24 classes, so it confuses."""
    data = make_dataset(tmp_path / "data", {f"species {i:02d}": 6 for i in range(24)}, size=(16, 16))
    config = small_config(data, epochs=1)
    config.augment.image_size = 16
    fit(config, workspace / "runs" / "20260104-000000-many01")
    run = runs.load_run(workspace / "runs" / "20260104-000000-many01")
    results, predictions = heldout.read(run.run_dir)
    pairs = most_confused(results["val"]["confusion"], run.classes)
    assert len(pairs) > 1

    at = open_page("views/results.py", run=run.id)
    table = at.dataframe(key="results-pairs").value
    assert list(zip(table["true"], table["predicted"], table["count"])) == [
        (p["true"], p["predicted"], p["count"]) for p in pairs]
    matrix = next(json.loads(c.proto.spec) for c in at.get("vega_lite_chart") if "true class" in c.proto.spec)
    assert matrix["height"] <= 600  # on screen, not 24 x 28 px tall

    opened = (at.selectbox(key="results-cell-true").value, at.selectbox(key="results-cell-pred").value)
    row = next(i for i, p in enumerate(pairs) if (run.classes.index(p["true"]), run.classes.index(p["predicted"])) != opened)
    true, pred = run.classes.index(pairs[row]["true"]), run.classes.index(pairs[row]["predicted"])
    at.session_state["results-pairs"] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    at.run()
    assert not at.exception, at.exception
    assert (at.selectbox(key="results-cell-true").value, at.selectbox(key="results-cell-pred").value) == (true, pred)
    count = pairs[row]["count"]
    assert any(c.value.startswith(f"{count} image{'' if count == 1 else 's'} of {run.classes[true]} predicted as "
                                  f"{run.classes[pred]}") for c in at.caption)
    behind = heldout.cell(predictions, true, pred)
    shown = [c.caption for img in at.get("image") for c in img.proto.imgs if c.caption.endswith("%") and "(" not in c.caption]
    assert shown == [f"{r['confidence']:.0%}" for r in behind[:12]] and len(behind) == count

    at.selectbox(key="results-cell-true").set_value(true).run()  # the pick does not hold the pickers: move on
    at.selectbox(key="results-cell-pred").set_value(true).run()
    assert (at.selectbox(key="results-cell-true").value, at.selectbox(key="results-cell-pred").value) == (true, true)


def test_results_page_with_no_runs_says_so(workspace):
    at = open_page("views/results.py")
    assert any("No runs yet" in i.value for i in at.info)


def test_predict_page_matches_the_cli(home, tmp_path, fetch_download):
    images = {f"{name}.png": image_bytes(colour, seed=7) for name, colour in
              (("reddish", (220, 40, 40)), ("bluish", (40, 60, 220)), ("greenish", (40, 200, 60)))}
    at = open_page("views/predict.py", run=FINISHED)
    at.file_uploader(key="predict-files").set_value(
        [(n, b, "image/png") for n, b in images.items()] + [("notes.png", b"not a picture", "image/png")]).run()
    assert not at.exception and any("notes.png was skipped" in w.value for w in at.warning)
    assert list(at.dataframe[0].value["file"]) == list(images)
    page_csv = fetch_download(next(d for d in at.get("download_button") if d.label.startswith("Download the pred")))
    classified = at.session_state["predict-cache"]
    at.slider(key="predict-k").set_value(1).run()
    assert at.session_state["predict-cache"] is classified  # fewer classes shown: the model did not run again
    assert at.dataframe[0].value["next"].eq("").all()

    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "cli.csv"
    assert cli("predict", run_dir(home, FINISHED), *(tmp_path / n for n in images), "--csv", out,
               home=home / "workspace").returncode == 0
    page_rows = list(csv.reader(io.StringIO(page_csv.decode())))
    cli_rows = list(csv.reader(io.StringIO(out.read_text())))
    assert page_rows[0] == cli_rows[0] and page_rows[0][:3] == ["file", "top1", "confidence"]
    assert [r[1:] for r in page_rows[1:]] == [r[1:] for r in cli_rows[1:]]  # identical numbers


def test_runs_page_filters_and_marks_the_cut_off_run(home):
    at = open_page("views/runs.py")
    table = at.dataframe(key="runs-table").value
    assert list(table["run"]) == [CUT, BARELY, FINISHED]
    status = dict(zip(table["run"], table["status"]))
    assert status[FINISHED] == "finished" and status[CUT] == "interrupted"
    at.multiselect(key="runs-status").set_value(["interrupted"]).run()
    assert list(at.dataframe(key="runs-table").value["run"]) == [CUT]
    at.multiselect(key="runs-status").set_value([]).run()
    at.text_input(key="runs-search").set_value("bbbb").run()
    assert list(at.dataframe(key="runs-table").value["run"]) == [BARELY]


def select(at, rows):
    at.session_state["runs-table"] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    at.run()
    assert not at.exception, at.exception


def test_runs_page_compares_and_repeats(home):
    at = open_page("views/runs.py")
    select(at, [1, 2])
    assert len(at.get("vega_lite_chart")) == 1
    select(at, [2])  # FINISHED
    next(b for b in at.button if b.key == "runs-repeat").click().run()
    assert not at.exception
    config = at.session_state["config"]
    assert config.data.test_ratio == 0.25 and config.model.backbone == "resnet18"  # its settings, prefilled
    assert any(n.value == "Train" for n in at.title)


def test_runs_page_deletes_after_confirmation(workspace, tmp_path):
    data = make_dataset(tmp_path / "data", {"red": 6, "blue": 6})
    for name in ("20260101-000000-keep01", "20260102-000000-gone01"):
        fit(small_config(data, epochs=1), workspace / "runs" / name)
    at = open_page("views/runs.py")
    select(at, [0])
    at.toggle(key="runs-delete-armed").set_value(True).run()
    assert (workspace / "runs" / "20260102-000000-gone01").is_dir()  # armed, not yet confirmed
    next(b for b in at.button if b.key == "runs-delete").click().run()
    assert not at.exception and not (workspace / "runs" / "20260102-000000-gone01").exists()
    assert list(at.dataframe(key="runs-table").value["run"]) == ["20260101-000000-keep01"]
    assert not any(b.key == "runs-delete" for b in at.button)  # the selection did not fall onto the other run


def test_runs_page_resumes_a_cut_off_run(workspace, tmp_path):
    data = make_dataset(tmp_path / "data", {"red": 6, "blue": 6})
    cut = workspace / "runs" / "20260101-000000-cut001"
    fit(small_config(data, epochs=1), cut)
    config = runs.read_json(cut / "config.json")
    config["optim"]["epochs"] = 2  # it had been asked for two; the server died after the first
    runs.write_json(cut / "config.json", config)
    runs.write_status(cut, "running", best_epoch=1)
    at = open_page("views/runs.py")
    select(at, [0])
    next(b for b in at.button if b.key == "runs-resume").click().run()
    assert not at.exception and at.query_params["run"] == cut.name
    registry = at.session_state["registry"]
    deadline = time.time() + 60
    while registry.snapshot(cut.name).active and time.time() < deadline:
        time.sleep(0.2)
    assert runs.read_json(cut / "status.json")["status"] == "finished"
    assert len(runs.read_jsonl(cut / "metrics.jsonl")) == 2


def test_results_builds_checked_torchscript_and_onnx_downloads(home, fetch_download):
    from core.evaluate.predict import Predictor

    at = open_page("views/results.py", run=BARELY)
    for fmt in ("torchscript", "onnx"):
        next(b for b in at.button if b.key == f"build-{fmt}").click().run()
        assert not at.exception and not at.error
    buttons = {b.label: b for b in at.get("download_button")}
    predictor = Predictor.load(run_dir(home, BARELY))
    results, rows = heldout.read(predictor.run_dir)
    images = torch.stack([predictor.tensor(f"{results['data_dir']}/{r['path']}") for r in rows[:4]])
    with torch.no_grad():
        expected = predictor.model(images)
    scripted = torch.jit.load(io.BytesIO(fetch_download(buttons["Download TorchScript (model.torchscript.pt)"])))
    assert torch.allclose(scripted(images), expected, atol=1e-4)
    session = onnxruntime.InferenceSession(fetch_download(buttons["Download ONNX (model.onnx)"]))
    assert torch.allclose(torch.from_numpy(session.run(None, {"images": images.numpy()})[0]), expected, atol=1e-4)


def test_predict_page_says_when_a_runs_weights_are_damaged(home, workspace):
    damaged = workspace / "runs" / "20260105-000000-broken"
    damaged.mkdir(parents=True)
    for name in ("config.json", "classes.json", "status.json", "metrics.jsonl"):
        (damaged / name).write_bytes((run_dir(home, FINISHED) / name).read_bytes())
    (damaged / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    at = open_page("views/predict.py", run=damaged.name)
    assert not at.exception
    assert any("cannot be loaded" in e.value and "Pick another run" in e.value for e in at.error)
