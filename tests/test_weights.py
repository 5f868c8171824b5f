"""Weight sources: the hub cache, a download, a checked file, a run's own weights; nothing but tensors."""
import functools
import http.server
import threading

import pytest
import torch
from safetensors.torch import save_file

from core.models import backbones
from core.models import weights
from core.models.weights import WeightsError, match_state, resolve

pytestmark = pytest.mark.unit

B = backbones.get("resnet18")


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture
def imagenet_file(tmp_path):
    """A complete resnet18 checkpoint, as torchvision ships one (made here: there is no network)."""
    torch.manual_seed(1)
    path = tmp_path / "resnet18-test.pth"
    torch.save(B.build().state_dict(), path)
    return path


def test_offline_without_cache_trains_random_and_says_how_to_go_on(monkeypatch):
    monkeypatch.setattr(weights, "network_available", lambda url: False)
    state, info = resolve(B, "pretrained")
    assert state is None and info.source == "random" and not info.pretrained
    assert "cannot be reached" in info.note and "import a weights file" in info.note


def test_a_matching_file_loads_and_is_recorded(imagenet_file):
    state, info = resolve(B, str(imagenet_file))
    assert info.source == "file" and info.sha256 == weights.sha256_file(imagenet_file)
    model = backbones.build_model(B, 4, dropout=0.1, state=state)
    reference = torch.load(imagenet_file, weights_only=True)
    assert torch.equal(model.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])
    assert model.fc[1].out_features == 4  # the ImageNet head was replaced, not loaded


def test_safetensors_and_wrapper_prefixes_are_accepted(tmp_path, imagenet_file):
    state = torch.load(imagenet_file, weights_only=True)
    path = tmp_path / "w.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(path))
    loaded, info = resolve(B, str(path))
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])


def test_a_mismatched_file_is_refused_with_the_names_that_differ(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(backbones.get("resnet34").build().state_dict(), path)
    with pytest.raises(WeightsError) as err:
        resolve(B, str(path))
    text = str(err.value)
    assert "does not fit resnet18" in text and "unexpected" in text and "layer1.2" in text
    state = B.build().state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    del state["bn1.bias"]
    with pytest.raises(WeightsError, match=r"missing: bn1.bias.*conv1.weight \(file \[64, 1, 7, 7\]"):
        match_state(B, state)


def test_install_puts_a_file_where_pretrained_finds_it(imagenet_file):
    target = weights.install(B, imagenet_file)
    assert target == weights.torchvision_cache_file(B)
    state, info = resolve(B, "pretrained")
    assert info.source == "torchvision-cache" and info.file == str(target)
    assert torch.equal(state["conv1.weight"], torch.load(imagenet_file, weights_only=True)["conv1.weight"])


def test_a_headless_file_cannot_be_installed(tmp_path, imagenet_file):
    state = torch.load(imagenet_file, weights_only=True)
    del state["fc.weight"], state["fc.bias"]
    path = tmp_path / "headless.pth"
    torch.save(state, path)
    assert resolve(B, str(path))[1].source == "file"  # fine for fine-tuning
    with pytest.raises(WeightsError, match="complete checkpoint"):
        weights.install(B, path)


def test_continue_from_a_run_folder_keeps_its_head(tmp_path):
    torch.manual_seed(3)
    run = tmp_path / "run"
    run.mkdir()
    trained = backbones.build_model(B, 3, dropout=0.2)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(run / "model.safetensors"))
    state, info = resolve(B, str(run))
    model = backbones.build_model(B, 3, dropout=0.2, state=state)
    assert info.file == str(run / "model.safetensors")
    assert torch.equal(model.fc[1].weight, trained.fc[1].weight)


def test_download_fetches_into_the_cache_and_checks_the_hash(tmp_path, imagenet_file):
    """A loopback server stands in for the weights server."""
    served = tmp_path / "served"
    served.mkdir()
    digest = weights.sha256_file(imagenet_file)
    good = served / f"resnet18-{digest[:8]}.pth"
    good.write_bytes(imagenet_file.read_bytes())
    bad = served / "resnet18-00000000.pth"
    bad.write_bytes(imagenet_file.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert weights.network_available(base + "/x")
        target = tmp_path / "cache" / good.name
        weights.download_file(f"{base}/{good.name}", target)
        assert weights.sha256_file(target) == digest
        with pytest.raises(RuntimeError, match="(?i)hash"):
            weights.download_file(f"{base}/{bad.name}", tmp_path / "cache" / bad.name)
    finally:
        server.shutdown()
    assert not weights.network_available("http://127.0.0.1:9/")


class Payload:
    """What a booby-trapped checkpoint carries: loading it with plain pickle would run a command."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_file_carrying_code_is_refused_in_the_apps_own_words(tmp_path, imagenet_file, capsys):
    state = torch.load(imagenet_file, weights_only=True)
    path = tmp_path / "trapped.pth"
    torch.save({**state, "extra": Payload()}, path)
    with pytest.raises(WeightsError) as err:
        resolve(B, str(path))
    text = str(err.value)
    assert text.startswith("trapped.pth contains Python code") and "refused" in text
    assert "torch.save(model.state_dict()" in text and ".safetensors" in text
    for internal in ("weights_only", "Unsupported global", "GLOBAL", "pytorch.org", "\n"):
        assert internal not in text
    assert "must never run" not in capsys.readouterr().out
