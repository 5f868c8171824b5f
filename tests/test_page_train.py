"""Model and Train pages through AppTest: choose a strategy, start a real job, watch it, stop it, reload."""
import copy
import io
import json
import time
import zipfile

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT, make_dataset
from core.deploy import export
from core.data.sources import ingest

pytestmark = pytest.mark.integration


@pytest.fixture
def app(workspace, tmp_path):
    st.cache_resource.clear()
    key = ingest(make_dataset(tmp_path / "data", {"red": 10, "blue": 10}), workspace).key

    def open_page(page: str, run: str | None = None) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.query_params["data"] = key
        if run:
            at.query_params["run"] = run
        at.run()
        config = at.session_state["config"]
        config.model.backbone, config.model.weights, config.model.strategy = "resnet18", "random", "full"
        config.augment.image_size, config.optim.batch_size, config.threads = 32, 8, 1
        at.switch_page(page).run()
        assert not at.exception, at.exception
        return at
    return open_page


def poll(at, until, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        at.run()
        assert not at.exception, at.exception
        if until(at):
            return at
        time.sleep(0.3)
    raise AssertionError("timed out")


def registry(at):
    return at.session_state["registry"]


def test_start_watch_and_reload(app, fetch_download):
    at = app("views/train.py")
    at.number_input(key="train-epochs").set_value(2).run()
    next(b for b in at.button if b.label == "Start training").click().run()
    run = at.query_params["run"]
    assert run and registry(at).snapshot(run) is not None
    poll(at, lambda a: not registry(a).snapshot(run).active)
    at.run()  # the poll's last page may have been drawn a moment before the job ended
    snap = registry(at).snapshot(run)
    assert snap.status == "finished" and len(snap.history) == 2
    assert len(at.get("vega_lite_chart")) >= 3  # loss, accuracy, confusion matrix
    package = next(d for d in at.get("download_button") if "package" in d.label)
    files = zipfile.ZipFile(io.BytesIO(fetch_download(package)))
    assert json.loads(files.read("classes.json")) == list(snap.classes)
    assert files.read("model.safetensors") == export.weights_bytes(snap.run_dir)
    # a reload (a new session with the same URL) shows the same job
    again = app("views/train.py", run=run)
    assert again.get("vega_lite_chart") and "finished" in again.get("progress")[0].proto.text


def test_stop_button_stops_the_job(app):
    at = app("views/train.py")
    at.number_input(key="train-epochs").set_value(200).run()
    next(b for b in at.button if b.label == "Start training").click().run()
    run = at.query_params["run"]
    poll(at, lambda a: registry(a).snapshot(run).batch > 0 and any(b.label == "Stop" for b in a.button))
    next(b for b in at.button if b.label == "Stop").click().run()
    poll(at, lambda a: not registry(a).snapshot(run).active, timeout=20)
    assert registry(at).snapshot(run).status == "stopped"


def test_augmentation_preview_follows_the_settings(app):
    at = app("views/train.py")
    still = at.get("image")
    at.slider(key="train-horizontal-flip-probability").set_value(0.5).run()
    at.slider(key="train-rotation-degrees").set_value(30.0).run()
    assert not at.exception and at.session_state["config"].augment.rotation == 30.0
    moving = at.get("image")
    assert (len(still), len(moving)) == (4, 20)  # four training pictures; then each five times, augmented
    assert len({m.proto.imgs[0].url for m in moving}) > 4  # the copies differ (the url names the bytes)


def test_a_failed_job_shows_a_sentence_and_the_page_stays_usable(app, tmp_path):
    at = app("views/train.py")
    broken = copy.deepcopy(at.session_state["config"])
    broken.data.source = str(tmp_path / "gone")  # the data vanished between start and the worker
    run = registry(at).submit(broken)
    at.query_params["run"] = run
    poll(at, lambda a: not registry(a).snapshot(run).active)
    at.run()
    assert registry(at).snapshot(run).status == "failed"
    assert any("does not exist" in e.value and "Traceback" not in e.value for e in at.error)
    at.number_input(key="train-epochs").set_value(1).run()  # still usable: a new run starts and finishes
    next(b for b in at.button if b.label == "Start training").click().run()
    again = at.query_params["run"]
    assert again != run
    poll(at, lambda a: not registry(a).snapshot(again).active)
    assert registry(at).snapshot(again).status == "finished"


def test_a_second_start_waits_in_the_queue_and_says_so(app):
    at = app("views/train.py")
    at.number_input(key="train-epochs").set_value(200).run()
    next(b for b in at.button if b.label == "Start training").click().run()
    first = at.query_params["run"]
    next(b for b in at.button if b.label == "Start training").click().run()
    second = at.query_params["run"]
    assert any("Queued: position 1" in i.value for i in at.info)
    assert registry(at).snapshot(second).status == "queued"
    next(b for b in at.button if b.label == "Stop").click().run()  # cancels the queued one: it never starts
    registry(at).stop(first)
    poll(at, lambda a: not registry(a).snapshot(first).active, timeout=30)
    assert registry(at).snapshot(second).status == "stopped" and registry(at).snapshot(second).started_at is None


def test_a_linear_probe_is_solved_unless_the_loop_is_chosen(app, workspace):
    at = app("views/train.py")
    config = at.session_state["config"]
    config.model.strategy = "linear-probe"
    at.number_input(key="train-epochs").set_value(3)
    at.selectbox(key="train-solver").set_value("loop").run()
    assert at.session_state["config"].optim.solver == "loop"
    at.button[[b.label for b in at.button].index("Start training")].click().run()
    poll(at, lambda a: not a.session_state["registry"].active(None))
    run_dir = max((workspace / "runs").iterdir())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["lr"] is not None for r in rows)  # the loop, as chosen: three epochs


def test_the_speed_settings_reach_the_run(app, workspace):
    at = app("views/train.py")
    at.session_state["config"].model.strategy = "linear-probe"
    at.selectbox(key="train-engine").set_value("channels_last")
    at.checkbox(key="train-channels-last").uncheck()
    at.selectbox(key="train-precision").set_value("bf16").run()
    at.button[[b.label for b in at.button].index("Start training")].click().run()
    poll(at, lambda a: not a.session_state["registry"].active(None))
    written = json.loads((max((workspace / "runs").iterdir()) / "config.json").read_text())
    assert (written["engine"], written["channels_last"], written["precision"]) == ("channels_last", False, "bf16")
    assert written["provenance"]["features"] == {"engine": "channels_last"}


@pytest.mark.distributed
def test_processes_on_this_machine_train_one_run_and_the_cluster_commands_follow_the_settings(app, workspace):
    at = app("views/train.py")
    at.number_input(key="train-epochs").set_value(1)
    at.number_input(key="train-batch-size").set_value(7)
    at.number_input(key="train-nproc").set_value(2).run()
    assert any("split evenly over 2 processes" in e.value for e in at.error)
    assert "Start training" not in [b.label for b in at.button]
    at.number_input(key="train-batch-size").set_value(8)
    at.number_input(key="train-nnodes").set_value(3)
    at.text_input(key="train-master").set_value("gpu-a:29500")
    at.text_input(key="train-cluster-data").set_value("/lab/scans").run()
    commands = at.code[0].value.splitlines()
    assert len(commands) == 3 and all("--nproc 2 --nnodes 3" in c and "--master gpu-a:29500" in c for c in commands)
    assert all(c.startswith("python -m core train /lab/scans --out") for c in commands)
    assert "#SBATCH --nodes=3" in at.code[1].value and "kind: PyTorchJob" in at.code[2].value
    at.button[[b.label for b in at.button].index("Start training")].click().run()
    run = at.query_params["run"]
    done = poll(at, lambda a: not registry(a).snapshot(run).active, timeout=180)
    snap = registry(done).snapshot(run)
    assert snap.status == "finished", snap.error
    written = json.loads((workspace / "runs" / run / "config.json").read_text())
    assert written["distributed"]["nproc"] == 2 and written["distributed"]["nnodes"] == 1
    assert written["provenance"]["processes"] == 2
