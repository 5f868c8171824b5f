"""Real training on small generated images: the run folder, stopping, divergence, weights sources."""
import json
import math
import os
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, make_dataset
from core.models import backbones
from core.train.callbacks import Callback
from core.config import RunConfig
from core.train.engine import TrainingDiverged, fit
from core.runs import read_jsonl
from core.models.weights import WeightsError, read_state_file, resolve, torchvision_cache_file

pytestmark = pytest.mark.integration


# A test of mechanics (a queue, a stop, a kill, a resume, the same numbers twice) needs a real fit, not a learning
# one: mobilenet_v3_small fits in about a third of resnet18's time, but does not learn the colours in a few epochs.
MECHANICS = "mobilenet_v3_small"


def small_config(data, backbone: str = "resnet18", **optim) -> RunConfig:
    """resnet18 from random weights on 32 px images: a few epochs learn the colours far above chance."""
    config = RunConfig()
    config.data.source = str(data)
    config.data.val_ratio = 0.25
    config.model.backbone = backbone
    config.model.weights = "random"
    config.model.strategy = "full"
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
    with pytest.raises(WeightsError, match="contains Python code"):
        read_state_file(path)


def test_resume_after_an_interruption_equals_an_uninterrupted_run(data, workspace, tmp_path):
    config = small_config(data, MECHANICS, epochs=3, schedule="cosine", warmup_epochs=0.5)
    config.model.dropout = 0.2
    config.augment.color_jitter = 0.3
    whole = fit(config, tmp_path / "whole")
    stop = threading.Event()
    cut = fit(config, tmp_path / "cut", [StopAfter(stop, epoch=2, batch=2)], stop)
    assert cut.status == "stopped" and len(cut.history) == 1
    # killed mid-epoch 2: the resumed run redoes epoch 2 from the epoch-1 checkpoint, through the CLI
    out = subprocess.run([sys.executable, "-m", "core", "train", "--resume", str(tmp_path / "cut"), "--quiet"],
                         cwd=ROOT, env=os.environ | {"FTLAB_HOME": str(workspace)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    resumed = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for a, b in zip(whole.history, resumed):
        for key in ("train_loss", "val_loss", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-8), key
        assert a["val_acc"] == b["val_acc"]
    final_whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    final_cut = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.allclose(final_whole[k].float(), final_cut[k].float(), atol=1e-5) for k in final_whole)


def test_early_stopping_stops_after_patience(data, workspace, tmp_path):
    config = small_config(data, epochs=6, optimizer="sgd", lr=0.0)  # nothing can improve
    config.early_stop.patience = 2
    result = fit(config, tmp_path / "run")
    assert len(result.history) == 3 and result.best_epoch == 1
    assert "Early stopping" in result.message
    assert json.loads((tmp_path / "run" / "status.json").read_text())["message"] == result.message


class Snapshots(Callback):
    def __init__(self):
        self.states = {}

    def on_epoch_end(self, state, row, confusion):
        self.states[state.epoch] = {k: v.clone() for k, v in self.model.state_dict().items()}


def test_the_best_epoch_is_restored_at_the_end(data, workspace, tmp_path, monkeypatch):
    import core.train.engine as engine
    snaps = Snapshots()
    real_build = engine.backbones.build_model

    def spy(*args, **kwargs):
        snaps.model = real_build(*args, **kwargs)
        return snaps.model
    monkeypatch.setattr(engine.backbones, "build_model", spy)
    config = small_config(data, epochs=4, lr=0.05)
    config.early_stop.monitor = "val_loss"
    result = fit(config, tmp_path / "run", [snaps])
    best = min(result.history, key=lambda r: r["val_loss"])["epoch"]
    assert result.best_epoch == best
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, snaps.states[best][k]) and torch.equal(saved[k], v)


def test_every_regulariser_at_once_trains_finite(data, workspace, tmp_path):
    config = small_config(data, epochs=2, clip_grad=1.0, schedule="onecycle")
    r = config.regularize
    r.l1, r.label_smoothing, r.mixup, r.cutmix, r.class_weighting = 1e-5, 0.1, 0.4, 1.0, "loss"
    config.model.dropout = 0.3
    result = fit(config, tmp_path / "run")
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    per_class = result.best["val_per_class"]
    assert set(per_class) == {"precision", "recall", "f1", "support"} and per_class["support"] == [3, 3, 3]
    assert 0 <= result.best["val_top2"] <= 1  # top-k only for k < classes
    assert "val_top3" not in result.best


def test_class_weighting_balances_loss_and_batches(tmp_path, workspace):
    from core.train.engine import _criterion, _loaders
    from core.data.validation import load_dataset
    imbalanced = make_dataset(tmp_path / "imb", {"many": 40, "few": 8})
    config = small_config(imbalanced)
    config.data.val_ratio = 0.0
    dataset = load_dataset(str(imbalanced), workspace, config.data)
    config.regularize.class_weighting = "loss"
    weight = _criterion(config, dataset, torch.device("cpu")).weight
    few, many = dataset.classes.index("few"), dataset.classes.index("many")
    assert weight[few] / weight[many] == pytest.approx(5.0)
    config.regularize.class_weighting = "sampler"
    loader = _loaders(config, dataset, backbones.get("resnet18"), torch.device("cpu"))["train"]
    loader.generator.manual_seed(0)
    labels = torch.cat([t for _, t in loader])
    assert 0.35 < (labels == few).float().mean() < 0.65  # 8 of 48 images, yet about half the draws


class Recorder(Callback):
    def __init__(self):
        self.messages = []

    def on_message(self, text, level="info"):
        self.messages.append((level, text))


def test_auto_strategy_trains_everything_when_the_weights_are_random(data, workspace, tmp_path):
    config = small_config(data, epochs=1)
    config.model.strategy = "auto"
    seen = Recorder()
    result = fit(config, tmp_path / "run", [seen])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["strategy"] == "full" and "random" in saved["provenance"]["strategy"]
    assert any(level == "warning" and "full fine-tuning" in text for level, text in seen.messages)
    assert all(p.requires_grad for p in result.model.parameters())
    explicit = small_config(data, epochs=1)
    explicit.model.strategy = "linear-probe"  # chosen on purpose: kept, with a warning
    seen = Recorder()
    fit(explicit, tmp_path / "probe", [seen])
    assert json.loads((tmp_path / "probe" / "config.json").read_text())["model"]["strategy"] == "linear-probe"
    assert any(level == "warning" and "expect low accuracy" in text for level, text in seen.messages)


def test_checkpoint_holds_no_second_copy_of_the_best_weights(data, workspace, tmp_path):
    result = fit(small_config(data, epochs=2), tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert "best_model" not in ckpt and set(ckpt) >= {"model", "optimizer", "epoch", "best_epoch"}
    best = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(torch.equal(best[k], v) for k, v in result.model.state_dict().items())


def test_a_failure_after_the_last_epoch_is_recorded_as_failed(data, workspace, tmp_path, monkeypatch):
    from core.evaluate import heldout

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(heldout, "after_fit", broken)
    with pytest.raises(RuntimeError):
        fit(small_config(data, epochs=1), tmp_path / "run")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "disk full" in status["message"]


def test_stop_while_features_are_computed_is_a_stop_not_a_failure(data, workspace, tmp_path):
    stop = threading.Event()

    class StopInFeatures(Callback):
        def on_batch_end(self, state):
            if state.phase == "features":
                stop.set()
    config = small_config(data, epochs=2)
    config.model.strategy = "linear-probe"
    result = fit(config, tmp_path / "run", [StopInFeatures()], stop)
    assert result.status == "stopped" and result.history == []
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "stopped"


def test_the_head_starts_the_same_whatever_ran_before_in_the_process(tmp_path, data, workspace):
    """A search retrains its best trial as a run, in another process: a head initialised from a random state that
    depends on what ran before (the first read of a weights file builds a model, which draws random numbers)
    would give another result."""
    from core.models import weights

    config = small_config(data, epochs=1, solver="loop")
    config.model.backbone, config.model.weights, config.model.strategy = "efficientnet_lite0", "pretrained", "linear-probe"
    config.augment.image_size = 224
    weights._MEMO.clear()  # as in a fresh process
    first = fit(config, tmp_path / "first")
    second = fit(config, tmp_path / "second")  # the weights file is read from memory now
    assert first.weights.source == "packaged"
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]
