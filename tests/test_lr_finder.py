"""The lr range test on real torch and generated images: a suggestion, exact restoration, stopping."""
import json
import math
import threading

import pytest
import torch
from torch import nn

from conftest import make_dataset
from core.data.augment import eval_transform
from core.config import AugmentConfig, ModelConfig
from core.data.loaders import ImageDataset, make_loader
from core.models import backbones, strategies
from core.train.lr_finder import LRFindResult, find_lr
from core.data.validation import Sample

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")


@pytest.fixture
def loader(tmp_path):
    root = make_dataset(tmp_path / "data", {"red": 10, "blue": 10, "green": 10}, size=(16, 16))
    classes = sorted(p.name for p in root.iterdir())
    samples = [Sample(f"{name}/{f.name}", label, "train")
               for label, name in enumerate(classes) for f in sorted((root / name).iterdir())]
    tf = eval_transform(AugmentConfig(image_size=16), (0.5,) * 3, (0.5,) * 3)
    return make_loader(ImageDataset(root, samples, tf, 16), batch_size=8, train=True,
                       generator=torch.Generator().manual_seed(0))


def small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(  # BatchNorm so running stats (buffers) must be restored too
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def snapshot(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_learnable_problem_gets_a_finite_suggestion_in_range(loader):
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    result = find_lr(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, start_lr=1e-5, end_lr=10.0,
                     num_steps=100)
    assert isinstance(result, LRFindResult)
    assert result.suggestion is not None, result.reason
    assert math.isfinite(result.suggestion) and 1e-5 <= result.suggestion <= 10.0
    assert "steepest descent" in result.reason.lower()
    assert len(result.lrs) == len(result.losses) > 10
    assert all(math.isfinite(x) for x in result.losses)
    assert result.lrs[0] == 1e-5 and all(a < b for a, b in zip(result.lrs, result.lrs[1:]))
    assert min(result.losses) < result.losses[0]  # it learned something on the way
    assert json.loads(json.dumps(result.to_dict()))["suggestion"] == result.suggestion


def test_model_optimizer_and_mode_are_restored_exactly(loader):
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    images, targets = next(iter(loader))  # one real step first, so momentum buffers exist to be restored
    nn.CrossEntropyLoss()(model(images), targets).backward()
    optimizer.step()
    model.eval()
    grads = [p.grad.clone() for p in model.parameters()]
    model_before, opt_before = snapshot(model.state_dict()), snapshot(optimizer.state_dict())
    modes = []

    find_lr(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, start_lr=1e-4, end_lr=1.0, num_steps=30,
            on_step=lambda i, n: modes.append(model.training))

    assert modes and not any(modes)  # swept in the mode the caller set ...
    assert not model.training  # ... and handed back in it
    assert_same(model.state_dict(), model_before)
    assert_same(optimizer.state_dict(), opt_before)
    assert [g["lr"] for g in optimizer.param_groups] == [0.05]
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)


def test_the_sweep_keeps_the_modes_fit_trains_in(loader):
    """A frozen group's batch norm must not learn the sweep's batch statistics: the sweep measures fit's training."""
    b = backbones.get("resnet18")
    torch.manual_seed(0)
    model = backbones.build_model(b, 3)
    c = ModelConfig(strategy="partial", freeze_groups=2)  # stem and stage 1 frozen
    plan = strategies.trainable_groups(c, len(b.groups))
    strategies.apply_freeze(model, b, plan)
    strategies.set_train_mode(model, b, plan, train_frozen_bn=False)
    modes = {n: m.training for n, m in model.named_modules()}
    assert not modes["bn1"] and not modes["layer1.0.bn1"] and modes["layer2.0.bn1"]
    frozen = {n: snapshot(m.state_dict()) for n, m in (("bn1", model.bn1), ("layer1.0.bn1", model.layer1[0].bn1))}
    trained = snapshot(model.layer2[0].bn1.running_mean)
    optimizer = torch.optim.AdamW(strategies.param_groups(model, b, c, 1e-3, 1e-4))
    during = []

    def on_step(i, n):
        for name, state in frozen.items():
            assert_same(model.get_submodule(name).state_dict(), state)
        during.append({n: m.training for n, m in model.named_modules()} == modes)

    find_lr(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, start_lr=1e-5, end_lr=1.0, num_steps=5,
            on_step=on_step)
    assert during == [True] * 5
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert torch.equal(model.layer2[0].bn1.running_mean, trained)  # the trainable group's statistics put back


def test_modes_changed_during_the_sweep_are_put_back(loader):
    model = small_cnn()
    model[1].eval()  # a mix, as set_train_mode leaves it
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    find_lr(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, num_steps=3, on_step=lambda i, n: model.train())
    assert [m.training for m in model] == [True, False, True, True, True, True] and model.training


def test_restored_even_when_a_step_raises(loader):
    model = small_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model_before, opt_before = snapshot(model.state_dict()), snapshot(optimizer.state_dict())

    def boom(i, n):
        if i == 5:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        find_lr(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, num_steps=50, on_step=boom)
    assert model.training
    assert_same(model.state_dict(), model_before)
    assert_same(optimizer.state_dict(), opt_before)


def test_param_groups_keep_their_ratio(loader):
    model = small_cnn()
    body, head = list(model[:-1].parameters()), list(model[-1].parameters())
    optimizer = torch.optim.SGD([{"params": head, "lr": 1e-3}, {"params": body, "lr": 1e-4}], lr=1e-3)
    seen = []
    result = find_lr(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, start_lr=1e-6, end_lr=1.0,
                     num_steps=20, on_step=lambda i, n: seen.append([g["lr"] for g in optimizer.param_groups]))
    assert len(seen) == len(result.lrs) == 20  # 20 steps over a 3-batch loader: it cycles
    assert seen[0] == [pytest.approx(1e-6), pytest.approx(1e-7)]
    assert seen[-1] == [pytest.approx(1.0), pytest.approx(0.1)]
    for (head_lr, body_lr), lr in zip(seen, result.lrs):
        assert head_lr == pytest.approx(lr) and head_lr / body_lr == pytest.approx(10.0)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-4]


def test_stops_early_when_the_loss_diverges(loader):
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    result = find_lr(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, start_lr=1e-4, end_lr=1e8,
                     num_steps=200)
    assert len(result.lrs) < 200
    assert all(math.isfinite(x) for x in result.losses)
    assert "diverged" in result.reason or "non-finite" in result.reason


def test_stop_event_returns_early(loader):
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stop = threading.Event()
    progress = []

    def on_step(i, n):
        progress.append((i, n))
        if i == 7:
            stop.set()

    result = find_lr(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, num_steps=100, stop_event=stop,
                     on_step=on_step)
    assert progress == [(i, 100) for i in range(1, 8)]
    assert len(result.lrs) == 7
    assert "stopped on request" in result.reason


def test_too_few_steps_gives_no_suggestion(loader):
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = find_lr(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, num_steps=3)
    assert result.suggestion is None
    assert len(result.lrs) == 3 and "too few" in result.reason


class RisingLoss(nn.Module):
    """A loss that only ever goes up, slowly enough never to count as divergence."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, logits, targets):
        self.calls += 1
        return logits.sum() * 0 + 1.0 + 0.01 * self.calls


def test_a_loss_that_never_decreases_gives_no_suggestion(loader):
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = find_lr(model, RisingLoss(), optimizer, loader, CPU, num_steps=30)
    assert result.suggestion is None
    assert len(result.lrs) == 30 and "never decreased" in result.reason


@pytest.mark.parametrize("kwargs", [{"start_lr": 0.0}, {"start_lr": 1.0, "end_lr": 0.1}, {"num_steps": 0}])
def test_bad_arguments_are_refused(loader, kwargs):
    model = small_cnn()
    with pytest.raises(ValueError):
        find_lr(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), loader, CPU,
                **kwargs)
