"""The frozen-backbone fast path: same model as the plain loop, features cached and reused."""
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_dataset
from core.train.callbacks import Callback
from core.train.engine import fit
from test_engine import small_config

pytestmark = pytest.mark.unit


class Messages(Callback):
    def __init__(self):
        self.texts = []

    def on_message(self, text, level="info"):
        self.texts.append(text)


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "data", {"red": 12, "blue": 12, "green": 12})


def probe_config(data, **kw):
    config = small_config(data, **({"epochs": 3, "lr": 0.01} | kw))
    config.model.strategy = "linear-probe"
    config.augment.crop_scale_min, config.augment.hflip = 1.0, 0.0  # no random augmentation
    return config


def feature_files(workspace):
    return sorted((workspace / "features").glob("*.pt"))


@pytest.mark.integration
def test_cache_is_written_then_reused_and_keyed_by_image_size(data, workspace, tmp_path):
    first, second = Messages(), Messages()
    fit(probe_config(data), tmp_path / "a", [first])
    assert any("features computed once" in t for t in first.texts)
    files = feature_files(workspace)
    assert len(files) == 1
    inode = files[0].stat().st_ino  # written again would be a new file (written aside, then renamed)
    fit(probe_config(data, epochs=2), tmp_path / "b", [second])  # another run, same data and backbone
    assert any("cached features" in t for t in second.texts)
    assert feature_files(workspace) == files and files[0].stat().st_ino == inode
    bigger = probe_config(data)
    bigger.augment.image_size = 48
    fit(bigger, tmp_path / "c")
    assert len(feature_files(workspace)) == 2  # a new size is a new cache entry


@pytest.mark.integration
def test_fast_path_matches_the_plain_loop(data, workspace, tmp_path):
    """The epoch loop on cached features against the loop on images (the head solver has no image-path twin)."""
    fast_config = probe_config(data)
    fast_config.optim.solver = "loop"
    fast = fit(fast_config, tmp_path / "fast")
    plain_config = probe_config(data)
    plain_config.feature_cache = False
    plain = fit(plain_config, tmp_path / "plain")
    # Same init, same head, same batches: the two paths compute the same thing, up to float noise.
    for a, b in zip(fast.history, plain.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_acc"] == b["val_acc"]
    fw, pw = load_file(str(tmp_path / "fast" / "model.safetensors")), load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert all(torch.allclose(fw[k].float(), pw[k].float(), atol=1e-4) for k in fw)


def test_random_augmentation_falls_back_and_says_why(data, workspace, tmp_path):
    messages = Messages()
    config = probe_config(data, epochs=1)
    config.augment.hflip = 0.5
    fit(config, tmp_path / "run", [messages])
    assert any("fast path off" in t and "augmentation" in t for t in messages.texts)
    assert not feature_files(workspace)


def test_the_cache_keeps_to_its_budget_deleting_what_was_used_least_recently(tmp_path, monkeypatch):
    import os

    from core.train import features

    monkeypatch.setenv("FTLAB_FEATURE_CACHE_MB", "2.5")
    folder = tmp_path / "features"
    block = torch.zeros(256, 1024)  # 1 MB of features
    for i, name in enumerate("abc"):
        features.write_cache(folder / f"{name}.pt", [f"{name}/{k}.png" for k in range(256)], block)
        os.utime(folder / f"{name}.pt", (1000 + i, 1000 + i))  # written a second apart
    assert sorted(f.name for f in folder.iterdir()) == ["b.pt", "c.pt"]  # a, the oldest, went when c came
    assert features.read_cache(folder / "b.pt", ["b/0.png"]) is not None  # b is used now, c is not
    features.write_cache(folder / "d.pt", ["d/0.png"], block)
    assert sorted(f.name for f in folder.iterdir()) == ["b.pt", "d.pt"]  # c, unused longest, went; b stayed
