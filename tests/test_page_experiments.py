"""Search, Cross-validate and Ensembles pages through AppTest: real jobs in worker processes, real folders on disk."""
import copy
import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from core.config import workspace_root
from core.data.validation import load_dataset
from core.experiments import crossval, search
from core.runs import read_json
from test_crossval import cv_config, patients
from test_search import base_config

pytestmark = pytest.mark.integration

CV_ID, SEARCH_ID = "20260101-000000-cv0000", "20260101-000000-se0000"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A workspace as a restarted server finds it: an ingested dataset, a finished cross-validation and search."""
    home = tmp_path_factory.mktemp("experiments")
    data = patients(home / "scans")
    mp = pytest.MonkeyPatch()
    mp.setenv("FTLAB_HOME", str(home / "workspace"))
    dataset = load_dataset(str(data), workspace_root())
    config = cv_config(dataset.data_dir, folds=2, group_pattern=r"(?P<group>P\d+)_")
    crossval.cross_validate(config, workspace_root() / "cv" / CV_ID)
    options = search.SearchConfig(space={"optim.lr": {"low": 1e-4, "high": 0.1, "log": True}}, sampler="random",
                                  pruner="none", trials=4)
    search.create(base_config(dataset.data_dir), options, workspace_root() / "searches" / SEARCH_ID)
    search.run(workspace_root() / "searches" / SEARCH_ID)
    yield home, dataset.key, config
    mp.undo()


@pytest.fixture
def workspace_env(home, monkeypatch):
    monkeypatch.setenv("FTLAB_HOME", str(home[0] / "workspace"))
    return home


def open_page(page: str, config=None, **params) -> AppTest:
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    for name, value in params.items():
        at.query_params[name] = value
    if config is not None:
        at.session_state["config"] = copy.deepcopy(config)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def wait_for(at: AppTest, job_id: str, timeout: float = 240) -> None:
    registry = at.session_state["registry"]
    deadline = time.time() + timeout
    while time.time() < deadline and registry.snapshot(job_id).active:
        time.sleep(0.5)
    snap = registry.snapshot(job_id)
    assert snap.status == "finished", (snap.status, snap.error, snap.messages[-3:])
    at.run()
    assert not at.exception, at.exception


def newest(folder) -> str:
    """The job a click just started (ids begin with their start time)."""
    return max(p.name for p in folder.iterdir())


def texts(at) -> str:
    return "\n".join(e.value for e in (*at.markdown, *at.caption, *at.info, *at.warning, *at.error))


@pytest.mark.parametrize("page,param", [("views/search.py", "search"), ("views/crossval.py", "cv"),
                                        ("views/ensembles.py", "ensemble")])
def test_a_link_to_something_missing_says_so(workspace_env, page, param):
    at = open_page(page, **{param: "../../etc"})
    assert any("There is no" in w.value for w in at.warning)


def test_a_finished_search_shows_its_trials_and_trains_the_best_as_a_run(workspace_env):
    at = open_page("views/search.py", search=SEARCH_ID)
    doc = read_json(workspace_root() / "searches" / SEARCH_ID / search.SEARCH_FILE)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Best val_acc"] == f"{doc['best_value']:.4f}" and metrics["Trials finished"] == "4 of 4"
    table = at.dataframe[0].value
    assert list(table["trial"]) == [0, 1, 2, 3] and "optim.lr" in table.columns
    assert len(at.get("vega_lite_chart")) >= 2  # history and parallel coordinates
    at.button(key="search-best").click().run()
    run_id = read_json(workspace_root() / "searches" / SEARCH_ID / search.SEARCH_FILE)["best_run"]
    assert (workspace_root() / "runs" / run_id).is_dir()
    wait_for(at, run_id)
    trained = read_json(workspace_root() / "runs" / run_id / "status.json")
    assert trained["status"] == "finished"


def test_a_new_search_starts_from_the_current_config_and_runs_in_a_worker(workspace_env):
    _, key, config = workspace_env
    at = open_page("views/search.py", config=base_config(""), data=key)
    at.number_input(key="search-trials").set_value(3)
    at.selectbox(key="search-pruner").set_value("none")
    at.button[[b.label for b in at.button].index("Start the search")].click().run()
    assert not at.error, [e.value for e in at.error]
    search_id = newest(workspace_root() / "searches")
    assert search_id != SEARCH_ID
    wait_for(at, search_id)
    doc = read_json(workspace_root() / "searches" / search_id / search.SEARCH_FILE)
    assert doc["trials"] == 3 and doc["status"] == "finished"
    assert set(doc["best_params"]) == {"optim.lr", "optim.weight_decay", "model.dropout", "optim.epochs"}
    assert len(at.dataframe[0].value) == 3


def test_cross_validation_results_show_every_fold_and_the_pooled_predictions(workspace_env):
    at = open_page("views/crossval.py", cv=CV_ID)
    doc = read_json(workspace_root() / "cv" / CV_ID / crossval.CV_FILE)
    folds = at.dataframe[0].value
    assert list(folds["fold"]) == [1, 2]
    assert list(folds["accuracy"]) == [f["val_acc"] for f in doc["folds"]]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Mean accuracy"] == f"{doc['mean']['val_acc']:.3f}"
    assert metrics["Calibration error (ECE) as trained"] == f"{doc['oof']['ece']:.3f}"  # out of fold, before and after
    assert metrics["After temperature scaling"] == f"{doc['oof']['calibrated']['ece']:.3f}"
    assert "groups: pattern" in texts(at) or any("groups: pattern" in h.value for h in at.subheader)
    links = [p.proto.page for p in at.get("page_link")]
    assert any("review" in link for link in links) and any("ensembles" in link for link in links)


def test_a_new_cross_validation_keeps_patients_together_and_can_be_followed(workspace_env):
    _, key, config = workspace_env
    at = open_page("views/crossval.py", config=cv_config("", folds=2), data=key)
    at.radio(key="cv-groups").set_value("pattern").run()
    assert "8 groups" in texts(at)
    at.number_input(key="cv-folds").set_value(2).run()
    at.button[[b.label for b in at.button].index("Start the cross-validation")].click().run()
    cv_id = newest(workspace_root() / "cv")
    assert cv_id != CV_ID
    wait_for(at, cv_id)
    doc = read_json(workspace_root() / "cv" / cv_id / crossval.CV_FILE)
    assert doc["k"] == 2 and len(doc["folds"]) == 2 and doc["groups"]["count"] == 8
    assert list(at.dataframe[0].value["fold"]) == [1, 2]


def test_an_ensemble_of_the_fold_models_is_scored_beside_its_members_and_exported(workspace_env):
    at = open_page("views/ensembles.py", cv=CV_ID)
    at.button(key="ens-build").click().run()
    ens_id = newest(workspace_root() / "ensembles")
    wait_for(at, ens_id, timeout=300)
    folder = workspace_root() / "ensembles" / ens_id
    assert {p.name for p in (folder / "exports").iterdir()} >= {"model.torchscript.pt", "model.onnx"}
    labels = [b.label for b in at.get("download_button")]
    assert any("torchscript" in label for label in labels) and any("onnx" in label for label in labels)
    results = read_json(folder / "results.json")
    assert results.get("note")  # fold models share no held-out image without a test split: said, not hidden
    assert any("cannot be scored" in w.value for w in at.warning)
