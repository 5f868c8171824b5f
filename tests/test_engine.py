"""Real training on small generated images: the run folder, stopping, divergence, weights sources."""
import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_dataset
from core import backbones
from core.callbacks import Callback
from core.config import RunConfig
from core.engine import TrainingDiverged, fit
from core.runs import read_jsonl
from core.weights import WeightsError, read_state_file, resolve, torchvision_cache_file


def small_config(data, **optim) -> RunConfig:
    config = RunConfig()
    config.data.source = str(data)
    config.data.val_ratio = 0.25
    config.model.backbone = "resnet18"
    config.model.weights = "random"
    config.augment.image_size = 32
    config.optim.epochs = 2
    config.optim.batch_size = 8
    config.threads = 1
    for key, value in optim.items():
        setattr(config.optim, key, value)
    return config


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "data", {"red": 12, "blue": 12, "green": 12})


def test_fit_writes_a_complete_run_folder(data, workspace, tmp_path):
    run = tmp_path / "run"
    result = fit(small_config(data, epochs=3), run)
    assert result.status == "finished"
    for name in ("config.json", "classes.json", "metrics.jsonl", "confusion_matrix.json", "model.safetensors",
                 "preprocessing.json", "status.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "classes.json").read_text()) == ["blue", "green", "red"]
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row in rows:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
            assert isinstance(row[key], float) and row[key] == row[key], key
    cm = json.loads((run / "confusion_matrix.json").read_text())
    assert cm["epoch"] == result.best_epoch
    assert [sum(r) for r in cm["matrix"]] == [3, 3, 3]  # rows = true class: 25% of 12 per class
    assert result.best["val_acc"] == max(r["val_acc"] for r in rows)
    # The colours are easy: three epochs learn them far above chance (1/3).
    assert result.best["val_acc"] >= 0.8
    # The saved weights are the best epoch's and load into the architecture.
    model = backbones.build_model(backbones.get("resnet18"), 3)
    model.load_state_dict(load_file(str(run / "model.safetensors")))
    provenance = json.loads((run / "config.json").read_text())["provenance"]
    assert provenance["weights"]["source"] == "random"
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


def test_same_config_same_numbers(data, workspace, tmp_path):
    a = fit(small_config(data), tmp_path / "a")
    config = RunConfig.from_json((tmp_path / "a" / "config.json").read_text())
    b = fit(config, tmp_path / "b")
    for ra, rb in zip(a.history, b.history):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
        assert ra["val_acc"] == rb["val_acc"]


class StopAfter(Callback):
    def __init__(self, event, epoch, batch):
        self.event, self.epoch, self.batch = event, epoch, batch
        self.batches_seen = []

    def on_batch_end(self, state):
        self.batches_seen.append((state.epoch, state.batch))
        if (state.epoch, state.batch) == (self.epoch, self.batch):
            self.event.set()


def test_stop_takes_effect_within_one_batch_and_keeps_best_weights(data, workspace, tmp_path):
    stop = threading.Event()
    spy = StopAfter(stop, epoch=2, batch=1)
    result = fit(small_config(data, epochs=5), tmp_path / "run", [spy], stop)
    assert result.status == "stopped"
    assert spy.batches_seen[-1] == (2, 1)  # no batch ran after the request
    assert result.best_epoch == 1
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "stopped"


def test_divergence_stops_with_advice(data, workspace, tmp_path):
    with pytest.raises(TrainingDiverged, match="lower learning rate"):
        fit(small_config(data, optimizer="sgd", lr=1e12, epochs=2), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


def test_pretrained_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    backbone = backbones.get("mobilenet_v3_small")
    state, info = resolve(backbone, "pretrained")
    assert state is None and info.source == "random" and "not on this machine" in info.note
    # A checkpoint where torchvision's own download would put it (the test makes it: no network here).
    reference = backbone.build().state_dict()
    cached = torchvision_cache_file(backbone)
    cached.parent.mkdir(parents=True)
    torch.save(reference, cached)
    state, info = resolve(backbone, "pretrained")
    assert info.source == "torchvision-cache" and info.file == str(cached) and len(info.sha256) == 64
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    model = backbones.build_model(backbone, 2, state=state)
    assert torch.equal(model.features[0][0].weight, reference["features.0.0.weight"])


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": Evil()}, path)
    with pytest.raises(WeightsError, match="safely"):
        read_state_file(path)
