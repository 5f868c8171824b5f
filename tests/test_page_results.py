"""Results and Runs pages through AppTest, over real runs on disk (what a server restart leaves behind)."""
import io
import zipfile

import pytest
import streamlit as st
from safetensors.torch import load
from streamlit.testing.v1 import AppTest

from conftest import ROOT, make_dataset
from core import export, runs
from core.engine import fit
from test_engine import small_config


@pytest.fixture
def trained(workspace, tmp_path):
    """Two finished runs and one cut off mid-training, written by the real engine into the workspace."""
    data = make_dataset(tmp_path / "data", {"red": 8, "blue": 8})
    ids = []
    for name, epochs in (("20260101-000000-aaaaaa", 2), ("20260102-000000-bbbbbb", 1)):
        fit(small_config(data, epochs=epochs), workspace / "runs" / name)
        ids.append(name)
    cut = workspace / "runs" / "20260103-000000-cccccc"
    fit(small_config(data, epochs=1), cut)
    runs.write_status(cut, "running")  # the server died before the run could say it ended
    return ids + [cut.name]


def open_page(page, run=None):
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    if run:
        at.query_params["run"] = run
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_results_page_shows_the_run_from_disk(trained, workspace, fetch_download):
    at = open_page("pages/results.py", run=trained[0])
    assert at.selectbox(key="results-run").value == trained[0]
    metrics = {m.label: m.value for m in at.metric}
    run = runs.load_run(workspace / "runs" / trained[0])
    assert metrics["Best epoch"] == f"{run.best_epoch} of 2"
    assert metrics["Validation accuracy"] == f"{run.best['val_acc']:.1%}"
    assert len(at.get("vega_lite_chart")) == 3  # loss, accuracy, confusion matrix
    table = at.dataframe[0].value
    assert list(table["class"]) and set(table["class"]) == {"red", "blue"}
    assert list(table["f1"]) == sorted(table["f1"])  # worst class first
    assert any("random weights" in w.value for w in at.warning)  # the tests train from random init
    buttons = {b.label: b for b in at.get("download_button")}
    weights = fetch_download(buttons["Download weights (model.safetensors)"])
    assert load(weights).keys() == load(export.weights_bytes(run.run_dir)).keys()
    package = zipfile.ZipFile(io.BytesIO(fetch_download(buttons["Download the model package (zip)"])))
    assert {"model.safetensors", "classes.json", "preprocessing.json", "README.md"} <= set(package.namelist())


def test_results_page_switches_runs(trained):
    at = open_page("pages/results.py")
    assert at.selectbox(key="results-run").value == trained[-1]  # newest first
    at.selectbox(key="results-run").set_value(trained[1]).run()
    assert not at.exception and at.query_params["run"] == trained[1]  # the URL follows the choice
    assert {m.label: m.value for m in at.metric}["Best epoch"] == "1 of 1"


def test_results_page_with_no_runs_says_so(workspace):
    at = open_page("pages/results.py")
    assert any("No runs yet" in i.value for i in at.info)


def test_runs_page_lists_every_run_and_marks_the_cut_off_one(trained):
    at = open_page("pages/runs.py")
    table = at.dataframe[0].value
    assert list(table["run"]) == sorted(trained, reverse=True)
    status = dict(zip(table["run"], table["status"]))
    assert status[trained[0]] == "finished" and status[trained[2]] == "interrupted"
    assert list(table.set_index("run").loc[trained, "epochs"]) == [2, 1, 1]
