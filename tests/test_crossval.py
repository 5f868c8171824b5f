"""k-fold cross-validation: real fold runs on generated images, out-of-fold predictions, groups, the CLI."""
import io
import json
import zipfile

import pytest

from conftest import image_bytes, COLOURS
from core.config import RunConfig
from core.deploy import export
from core.evaluate.ensemble import EnsembleError, members_of
from core.evaluate.predict import Predictor
from core.experiments import crossval
from core.runs import load_run, read_json, read_jsonl
from test_cli import cli

pytestmark = pytest.mark.integration


def patients(root, per_class=4, images=3):
    """Each patient's images sit in one class: P<class><n>_<slice>.png, so a pattern finds the patient."""
    for c, name in enumerate(("benign", "tumour")):
        folder = root / name
        folder.mkdir(parents=True)
        for p in range(per_class):
            for i in range(images):
                (folder / f"P{c}{p}_slice{i}.png").write_bytes(image_bytes(COLOURS[c], (24, 24), seed=c * 100 + p * 10 + i))
    return root


def cv_config(data, folds=3, **data_settings) -> RunConfig:
    config = RunConfig()
    config.data.source = str(data)
    config.data.folds = folds
    for key, value in data_settings.items():
        setattr(config.data, key, value)
    config.model.backbone = "resnet18"
    config.model.weights = "random"
    config.model.strategy = "linear-probe"
    config.augment.image_size = 32
    config.optim.epochs = 3
    config.optim.batch_size = 8
    config.threads = 1
    return config


def test_cross_validation_pools_each_image_once_and_keeps_groups_together(tmp_path, workspace):
    data = patients(tmp_path / "data")
    out = tmp_path / "cv"
    summary = crossval.cross_validate(cv_config(data, group_pattern=r"(?P<group>P\d+)_"), out)
    assert summary["status"] == "finished" and summary["k"] == 3 and len(summary["folds"]) == 3
    oof = read_jsonl(out / crossval.OOF_FILE)
    paths = [r["path"] for r in oof]
    assert sorted(paths) == sorted(str(p.relative_to(data)) for p in data.rglob("*.png"))  # each image exactly once
    fold_of_patient = {}
    for row in oof:
        patient = row["path"].split("/")[1].split("_")[0]
        assert fold_of_patient.setdefault(patient, row["fold"]) == row["fold"]  # a patient's slices share a fold
        assert len(row["probs"]) == 2 and abs(sum(row["probs"]) - 1) < 1e-4
    assert set(fold_of_patient.values()) == {0, 1, 2}
    for row in summary["folds"]:  # every fold is a normal run folder whose config says which fold it held out
        run = load_run(out / row["run"])
        assert run.config["data"]["fold"] == row["fold"] and run.config["data"]["folds"] == 3
        assert row["images"] == sum(r["fold"] == row["fold"] for r in oof)
    accs = [f["val_acc"] for f in summary["folds"]]
    assert summary["mean"]["val_acc"] == pytest.approx(sum(accs) / 3)
    assert summary["std"]["val_acc"] is not None
    assert summary["groups"]["count"] == 8 and "pattern" in summary["groups"]["source"]
    assert sum(map(sum, summary["oof"]["confusion"])) == len(oof)
    assert read_json(out / crossval.CV_FILE) == summary
    calibration = read_json(out / "calibration.json")  # one temperature from every out-of-fold prediction
    assert calibration["fitted_on"] == "out-of-fold" and calibration["images"] == len(oof)
    assert summary["oof"]["temperature"] == calibration["temperature"]
    assert summary["oof"]["calibrated"]["cross_fitted"] and len(summary["oof"]["calibrated"]["reliability"]) == 10
    (out / "calibration.json").write_text(json.dumps(calibration | {"temperature": 2.5}))
    assert Predictor.load(out / "fold-2").temperature == 2.5  # a fold predicts with its CV's temperature
    with zipfile.ZipFile(io.BytesIO(export.package(out / "fold-2"))) as z:
        assert json.loads(z.read("calibration.json"))["temperature"] == 2.5


def test_a_stopped_cross_validation_resumes_without_training_a_finished_fold_again(tmp_path, workspace):
    data = patients(tmp_path / "data")
    out = tmp_path / "cv"
    import threading

    from core.train.callbacks import Callback, StopTraining

    class StopInFold2(Callback):
        def on_stage(self, index, total, label):
            self.fold = index

        def on_epoch_end(self, state, row, confusion):
            if self.fold == 2:
                raise StopTraining("test stop")

    looped = cv_config(data)
    looped.optim.solver = "loop"  # epochs to stop between (a solved head is one step)
    summary = crossval.cross_validate(looped, out, [StopInFold2()], threading.Event())
    assert summary["status"] == "stopped" and len(summary["folds"]) == 1
    with pytest.raises(EnsembleError, match="fold-2 has not finished"):  # its weights are some epoch's, not a result
        members_of([out])
    first = (out / "fold-1" / "metrics.jsonl").stat().st_mtime_ns
    summary = crossval.cross_validate(looped, out, resume=True)
    assert summary["status"] == "finished" and len(summary["folds"]) == 3
    assert (out / "fold-1" / "metrics.jsonl").stat().st_mtime_ns == first  # fold 1 was not trained again
    assert len(read_jsonl(out / "fold-2" / "metrics.jsonl")) == 3  # fold 2 resumed from its checkpoint


def test_a_failure_leaves_the_cross_validation_failed_not_running(tmp_path, workspace):
    from core.train.callbacks import Callback

    class Crash(Callback):
        def on_epoch_end(self, state, row, confusion):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        crossval.cross_validate(cv_config(patients(tmp_path / "data")), tmp_path / "cv", [Crash()])
    assert read_json(tmp_path / "cv" / crossval.CV_FILE)["status"] == "failed"


def test_cli_cv_writes_the_documented_files(tmp_path, workspace):
    data = patients(tmp_path / "data")
    out = tmp_path / "cv"
    proc = cli("cv", data, "--out", out, "--folds", "2", "--group-pattern", r"(?P<group>P\d+)_", "--backbone",
               "resnet18", "--weights", "random", "--strategy", "linear-probe", "--image-size", "32", "--epochs", "2",
               "--threads", "1", home=workspace)
    assert proc.returncode == 0, proc.stderr
    doc = read_json(out / crossval.CV_FILE)
    assert [f["run"] for f in doc["folds"]] == ["fold-1", "fold-2"]
    for metric in ("val_acc", "val_macro_f1"):
        assert doc["mean"][metric] is not None and doc["std"][metric] is not None
    assert doc["groups"]["source"].startswith("pattern")
    rows = read_jsonl(out / crossval.OOF_FILE)
    assert len(rows) == 24 and {tuple(sorted(r)) for r in rows} == {("fold", "label", "path", "probs")}
    assert "val_acc" in proc.stdout and "±" in proc.stdout
    # The same folder feeds label review, an ensemble, and prediction with it.
    review = cli("review", out, home=workspace)
    assert review.returncode == 0, review.stderr
    header, *rows = (out / "label_issues.csv").read_text().splitlines()
    assert header == "path,given,suggested,score"
    assert "most suspect first" in review.stdout
    ens = tmp_path / "ensemble"
    made = cli("ensemble", out, "--out", ens, home=workspace)
    assert made.returncode == 0, made.stderr
    assert len(read_json(ens / "ensemble.json")["members"]) == 2
    image = next(data.rglob("*.png"))
    predicted = cli("predict", ens, image, home=workspace)
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith(str(image)) and "benign" in predicted.stdout
