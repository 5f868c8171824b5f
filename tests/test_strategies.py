"""Fine-tuning strategies: exactly which parameters train, at which rate and decay, and what batch norm does.

Expectations are written out by hand (group names per strategy and epoch) and turned into parameter names
through the registry's prefixes, so a wrong freeze plan, a parameter in the wrong optimizer group or a frozen
batch norm that keeps updating its statistics all fail here.
"""
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torchvision.ops import StochasticDepth

from conftest import make_dataset
from core.models import backbones
from core.models import strategies
from core.train.callbacks import Callback
from core.config import ModelConfig, RunConfig
from core.train.engine import fit

pytestmark = pytest.mark.unit

BASE_LR = 1e-2
WD = 1e-4
OTHER = "efficientnet_b0"  # 9 groups, so nothing below may assume resnet's 6


_MODELS: dict[str, nn.Module] = {}


def model_for(name: str) -> tuple[backbones.Backbone, nn.Module]:
    """One shared model per backbone for the read-only checks (apply_freeze sets every flag each time)."""
    b = backbones.get(name)
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = backbones.build_model(b, 3)
    return b, _MODELS[name]


def cfg(strategy: str, **kw) -> ModelConfig:
    return ModelConfig(strategy=strategy, **kw)


def group_names(b: backbones.Backbone) -> list[str]:
    return [g for g, _ in b.groups]


def params_in(b: backbones.Backbone, model: nn.Module, groups) -> set[str]:
    """Parameter names whose prefixes belong to the named groups, by the registry's prefixes."""
    prefixes = [p for g, ps in b.groups if g in groups for p in ps]
    return {n for n, _ in model.named_parameters() if backbones.in_group(n, tuple(prefixes))}


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def freeze(b, model, c: ModelConfig, epoch: int = 1) -> list[bool]:
    plan = strategies.trainable_groups(c, len(b.groups), epoch)
    strategies.apply_freeze(model, b, plan)
    return plan


# --- which groups train: written out for resnet18, derived from the group list for the other backbone -------

R = ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "head"]
RESNET_PLANS = [
    # (strategy, config kwargs, epoch, groups that train)
    ("full", {}, 1, R),
    ("full", {}, 7, R),
    ("linear-probe", {}, 1, ["head"]),
    ("linear-probe", {}, 9, ["head"]),
    ("partial", {"freeze_groups": 2}, 1, ["stage 2", "stage 3", "stage 4", "head"]),
    ("partial", {"freeze_groups": 3}, 1, ["stage 3", "stage 4", "head"]),
    ("partial", {"freeze_groups": 0}, 1, R),
    ("partial", {"freeze_groups": 5}, 1, ["head"]),
    ("partial", {"freeze_groups": 99}, 1, ["head"]),  # out of range: the head still trains
    ("layerwise", {"lr_decay": 0.5}, 1, R),
    ("gradual", {"unfreeze_every": 2}, 1, ["head"]),
    ("gradual", {"unfreeze_every": 2}, 2, ["head"]),
    ("gradual", {"unfreeze_every": 2}, 3, ["stage 4", "head"]),
    ("gradual", {"unfreeze_every": 2}, 4, ["stage 4", "head"]),
    ("gradual", {"unfreeze_every": 2}, 5, ["stage 3", "stage 4", "head"]),
    ("gradual", {"unfreeze_every": 2}, 6, ["stage 3", "stage 4", "head"]),
    ("gradual", {"unfreeze_every": 2}, 7, ["stage 2", "stage 3", "stage 4", "head"]),
    ("gradual", {"unfreeze_every": 2}, 9, ["stage 1", "stage 2", "stage 3", "stage 4", "head"]),
    ("gradual", {"unfreeze_every": 2}, 10, ["stage 1", "stage 2", "stage 3", "stage 4", "head"]),
    ("gradual", {"unfreeze_every": 2}, 11, R),
    ("gradual", {"unfreeze_every": 2}, 12, R),
    ("gradual", {"unfreeze_every": 2}, 30, R),
    ("gradual", {"unfreeze_every": 1}, 2, ["stage 4", "head"]),
]


def other_plans():
    g = group_names(backbones.get(OTHER))
    n = len(g)
    plans = [("full", {}, 1, g), ("linear-probe", {}, 1, g[-1:]), ("partial", {"freeze_groups": 2}, 1, g[2:]),
             ("partial", {"freeze_groups": 99}, 1, g[-1:]), ("layerwise", {"lr_decay": 0.5}, 1, g)]
    for epoch in range(1, 2 * n + 3):
        plans.append(("gradual", {"unfreeze_every": 2}, epoch, g[n - min(1 + (epoch - 1) // 2, n):]))
    return plans


CASES = [("resnet18",) + p for p in RESNET_PLANS] + [(OTHER,) + p for p in other_plans()]


@pytest.mark.parametrize("name,strategy,kw,epoch,expected", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-e{c[3]}" for c in CASES])
def test_exactly_the_planned_parameters_train(name, strategy, kw, epoch, expected):
    b, model = model_for(name)
    plan = freeze(b, model, cfg(strategy, **kw), epoch)
    assert plan == [g in expected for g in group_names(b)]
    assert plan[-1], "the head always trains"
    want = params_in(b, model, expected)
    assert want  # the expectation is not vacuous
    assert trainable_names(model) == want
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == params_in(b, model, set(group_names(b)) - set(expected))


def test_named_parameters_by_hand():
    b, model = model_for("resnet18")
    freeze(b, model, cfg("linear-probe"))
    t = trainable_names(model)
    assert {"fc.weight", "fc.bias"} == t
    for name in ("conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight", "layer4.1.bn2.bias"):
        assert name not in t

    freeze(b, model, cfg("partial", freeze_groups=3))
    t = trainable_names(model)
    for name in ("conv1.weight", "bn1.bias", "layer1.1.conv2.weight", "layer2.0.conv1.weight",
                 "layer2.0.downsample.0.weight"):
        assert name not in t, name
    for name in ("layer3.0.conv1.weight", "layer3.0.downsample.1.bias", "layer4.1.bn2.weight", "fc.weight"):
        assert name in t, name

    freeze(b, model, cfg("gradual", unfreeze_every=2), epoch=3)
    t = trainable_names(model)
    assert "layer4.0.conv1.weight" in t and "fc.bias" in t
    assert "layer3.1.conv2.weight" not in t

    e, effnet = model_for(OTHER)
    freeze(e, effnet, cfg("linear-probe"))
    assert trainable_names(effnet) == {"classifier.1.weight", "classifier.1.bias"}
    freeze(e, effnet, cfg("partial", freeze_groups=8))  # everything but the head
    assert "features.8.0.weight" not in trainable_names(effnet)
    freeze(e, effnet, cfg("partial", freeze_groups=7))  # stage 7 = features.7 and features.8 trains
    assert {"features.7.0.block.0.0.weight", "features.8.0.weight", "features.8.1.bias"} <= trainable_names(effnet)
    assert "features.6.0.block.0.0.weight" not in trainable_names(effnet)


# --- optimizer groups -------------------------------------------------------------------------------------

STRATEGY_CONFIGS = [("full", {}), ("linear-probe", {}), ("partial", {"freeze_groups": 2}),
                    ("partial", {"freeze_groups": 99}), ("layerwise", {"lr_decay": 0.5}),
                    ("gradual", {"unfreeze_every": 2})]
GRID = [(n, s, kw) for n in ("resnet18", OTHER) for s, kw in STRATEGY_CONFIGS]


def expected_lrs(b, strategy: str) -> dict[str, float]:
    names = group_names(b)
    if strategy != "layerwise":
        return dict.fromkeys(names, BASE_LR)
    # head at the base rate, each group further from the head halved once more
    return {g: BASE_LR * 0.5 ** (len(names) - 1 - i) for i, g in enumerate(names)}


@pytest.mark.parametrize("name,strategy,kw", GRID, ids=[f"{n}-{s}-{kw}" for n, s, kw in GRID])
def test_param_groups_rates_and_decay(name, strategy, kw):
    b, model = model_for(name)
    c = cfg(strategy, **kw)
    groups = strategies.param_groups(model, b, c, base_lr=BASE_LR, weight_decay=WD)
    # every parameter, frozen ones included, sits in exactly one optimizer group
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    torch.optim.AdamW(groups, lr=BASE_LR)  # and the optimizer accepts the groups as they are

    by_id = {id(p): n for n, p in model.named_parameters()}
    lrs = expected_lrs(b, strategy)
    planned = strategies.group_lrs(c, BASE_LR, len(b.groups))
    assert planned == [lrs[g] for g in group_names(b)]
    for g in groups:
        assert g["name"] == b.groups[g["group"]][0]
        assert g["lr"] == lrs[g["name"]] == planned[g["group"]]
        assert g["params"]
        for p in g["params"]:
            pname = by_id[id(p)]
            assert backbones.group_of(b, pname) == g["group"], pname
            assert g["weight_decay"] == (0.0 if p.ndim <= 1 else WD), pname
    # both kinds occur: norm weights and biases without decay, convs and linears with it
    assert {g["weight_decay"] for g in groups} == {0.0, WD}
    head_groups = [g for g in groups if g["name"] == "head"]
    assert {g["weight_decay"] for g in head_groups} == {0.0, WD}


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t"])
def test_position_embeddings_and_class_token_get_no_weight_decay(name):
    """As torchvision's training reference: decay would pull these tables towards zero, as with norms and biases."""
    b, model = model_for(name)
    groups = strategies.param_groups(model, b, cfg("full"), base_lr=BASE_LR, weight_decay=WD)
    by_id = {id(p): n for n, p in model.named_parameters()}
    decay = {by_id[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert decay.keys() == set(by_id.values())
    if name == "vit_b_16":
        exempt = {"class_token", "encoder.pos_embedding"}
    else:
        exempt = {n for n in decay if n.endswith(".relative_position_bias_table")}
        assert len(exempt) == 2 + 2 + 6 + 2  # one table per swin_t block
    assert all(model.get_parameter(n).ndim > 1 for n in exempt)  # the ndim rule alone would decay them
    for n, wd in decay.items():
        p = model.get_parameter(n)
        assert wd == (0.0 if n in exempt or p.ndim <= 1 else WD), n
    assert decay["head.weight" if name == "swin_t" else "heads.head.weight"] == WD


def test_layerwise_rates_by_hand():
    b, model = model_for("resnet18")
    groups = strategies.param_groups(model, b, cfg("layerwise", lr_decay=0.5), BASE_LR, WD)
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates == {"head": 1e-2, "stage 4": 5e-3, "stage 3": 2.5e-3, "stage 2": 1.25e-3, "stage 1": 6.25e-4,
                     "stem": 1e-2 * 0.5 ** 5}
    named = {id(p): n for n, p in model.named_parameters()}
    where = {named[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert where["fc.weight"] == (1e-2, WD) and where["fc.bias"] == (1e-2, 0.0)
    assert where["conv1.weight"] == (3.125e-4, WD) and where["bn1.weight"] == (3.125e-4, 0.0)
    assert where["layer4.0.downsample.1.weight"] == (5e-3, 0.0)
    assert where["layer2.1.conv2.weight"] == (1.25e-3, WD)

    e, effnet = model_for(OTHER)
    rates = {g["name"]: g["lr"] for g in strategies.param_groups(effnet, e, cfg("layerwise", lr_decay=0.5),
                                                                  BASE_LR, WD)}
    assert rates["head"] == 1e-2 and rates["stage 7"] == 5e-3 and rates["stem"] == 1e-2 * 0.5 ** 8


# --- batch norm in frozen groups --------------------------------------------------------------------------

def batch_norms(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def frozen_modules(b, model, plan) -> set[str]:
    """Names of the modules inside a frozen layer group (containers spanning several groups are in none)."""
    return {n for n, _ in model.named_modules()
            if any(backbones.in_group(n, prefixes) and not t for (_, prefixes), t in zip(b.groups, plan))}


@pytest.mark.parametrize("name", ["resnet18", OTHER, "convnext_tiny", "swin_t"])
def test_set_train_mode_puts_frozen_groups_wholly_in_eval(name):
    b, model = model_for(name)
    plan = freeze(b, model, cfg("partial", freeze_groups=3))
    frozen = frozen_modules(b, model, plan)
    model.eval()  # set_train_mode must switch everything else back on
    strategies.set_train_mode(model, b, plan, train_frozen_bn=False)
    modes = {n: m.training for n, m in model.named_modules()}
    assert frozen and frozen != set(modes)
    assert {n for n, t in modes.items() if not t} == frozen
    bns = {n for n, m in batch_norms(model)}
    if bns:
        assert bns & frozen and bns - frozen
    if name == "resnet18":
        assert not model.bn1.training and not model.layer1[0].bn1.training and not model.layer2[0].relu.training
        assert model.layer3[0].bn1.training and model.layer4[1].bn2.training
    else:  # stochastic depth in frozen stages is off, in trainable ones on
        depth = {n for n, m in model.named_modules() if isinstance(m, StochasticDepth)}
        assert depth & frozen and depth - frozen
    dropouts = {n for n, m in model.named_modules() if isinstance(m, nn.Dropout)}
    assert all(modes[n] == (n not in frozen) for n in dropouts)

    # train_frozen_bn: frozen batch norm follows the data again; the rest of a frozen group stays in eval
    model.eval()
    strategies.set_train_mode(model, b, plan, train_frozen_bn=True)
    assert {n for n, m in model.named_modules() if not m.training} == frozen - bns

    # all groups trainable: plain train mode
    strategies.set_train_mode(model, b, freeze(b, model, cfg("full")), train_frozen_bn=False)
    assert all(m.training for m in model.modules())


def test_frozen_features_are_the_same_in_every_training_step():
    """A frozen efficientnet body with stochastic depth on would feed the head a different feature every step."""
    b = backbones.get(OTHER)
    torch.manual_seed(0)
    model = backbones.build_model(b, 3)
    x = torch.randn(8, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        inference = model.features(x)
    strategies.set_train_mode(model, b, freeze(b, model, cfg("linear-probe")), train_frozen_bn=False)
    with torch.no_grad():
        first, second = model.features(x), model.features(x)
    assert torch.equal(first, inference) and torch.equal(second, inference)
    assert model.classifier[0].training  # the head's own dropout still regularises the head


def test_frozen_batch_norm_keeps_its_running_statistics():
    b = backbones.get("resnet18")
    torch.manual_seed(0)
    model = backbones.build_model(b, 3)
    plan = freeze(b, model, cfg("partial", freeze_groups=2))
    strategies.set_train_mode(model, b, plan, train_frozen_bn=False)
    watched = {"bn1": model.bn1, "layer1.0.bn1": model.layer1[0].bn1, "layer2.0.bn1": model.layer2[0].bn1,
               "layer4.1.bn2": model.layer4[1].bn2}
    before = {k: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
              for k, m in watched.items()}
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32) * 3 + 1)
    for k in ("bn1", "layer1.0.bn1"):  # stem and stage 1: frozen
        m = watched[k]
        assert torch.equal(m.running_mean, before[k][0]) and torch.equal(m.running_var, before[k][1]), k
        assert torch.equal(m.num_batches_tracked, before[k][2]), k
    for k in ("layer2.0.bn1", "layer4.1.bn2"):  # trainable
        m = watched[k]
        assert not torch.equal(m.running_mean, before[k][0]), k
        assert not torch.equal(m.running_var, before[k][1]), k
        assert int(m.num_batches_tracked) == int(before[k][2]) + 1, k

    # train_frozen_bn: the frozen stem's statistics follow the data too
    strategies.set_train_mode(model, b, plan, train_frozen_bn=True)
    stem_mean = model.bn1.running_mean.clone()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert not torch.equal(model.bn1.running_mean, stem_mean)


# --- describe ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,strategy,kw", GRID, ids=[f"{n}-{s}-{kw}" for n, s, kw in GRID])
@pytest.mark.parametrize("epoch", [1, 3])
def test_describe_matches_the_freeze(name, strategy, kw, epoch):
    b, model = model_for(name)
    c = cfg(strategy, **kw)
    rows = strategies.describe(model, b, c, BASE_LR, epoch)
    plan = freeze(b, model, c, epoch)
    assert [r["group"] for r in rows] == group_names(b)
    assert [r["trainable"] for r in rows] == plan
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in model.parameters())
    assert sum(r["trainable_params"] for r in rows) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    lrs = expected_lrs(b, strategy)
    for r, (g, prefixes) in zip(rows, b.groups):
        size = sum(p.numel() for n, p in model.named_parameters() if backbones.in_group(n, prefixes))
        assert r["params"] == size > 0
        assert r["trainable_params"] == (size if r["trainable"] else 0)
        assert r["lr"] == (lrs[g] if r["trainable"] else 0.0)


def test_describe_by_hand():
    b, model = model_for("resnet18")
    rows = strategies.describe(model, b, cfg("linear-probe"), BASE_LR)
    assert [(r["group"], r["trainable"], r["lr"]) for r in rows] == [
        ("stem", False, 0.0), ("stage 1", False, 0.0), ("stage 2", False, 0.0), ("stage 3", False, 0.0),
        ("stage 4", False, 0.0), ("head", True, BASE_LR)]
    assert rows[-1]["trainable_params"] == 512 * 3 + 3


# --- unknown strategy -------------------------------------------------------------------------------------

def test_unknown_strategy_names_the_choices():
    b, model = model_for("resnet18")
    c = cfg("fine-tune-everything")
    with pytest.raises(ValueError) as err:
        strategies.trainable_groups(c, len(b.groups))
    for choice in strategies.STRATEGIES:
        assert choice in str(err.value)
    assert "fine-tune-everything" in str(err.value)
    assert set(strategies.STRATEGIES) == {"auto", "full", "linear-probe", "partial", "layerwise", "gradual"}
    with pytest.raises(ValueError, match="linear-probe"):
        strategies.describe(model, b, c, BASE_LR)


# --- through engine.fit -----------------------------------------------------------------------------------

def tiny_config(data, strategy: str, epochs: int, **model) -> RunConfig:
    config = RunConfig()
    config.data.source = str(data)
    config.data.val_ratio = 0.25
    config.model.backbone = "resnet18"
    config.model.weights = "random"
    config.model.strategy = strategy
    for key, value in model.items():
        setattr(config.model, key, value)
    config.augment.image_size = 32
    config.optim.epochs = epochs
    config.optim.batch_size = 8
    config.threads = 1
    return config


@pytest.fixture
def built(monkeypatch):
    """The model fit builds, and its state right after building (new head included)."""
    seen: dict = {}
    original = backbones.build_model

    def capture(*args, **kwargs):
        model = original(*args, **kwargs)
        seen["model"] = model
        seen["initial"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return model

    monkeypatch.setattr(backbones, "build_model", capture)
    return seen


class RecordFreeze(Callback):
    def __init__(self, built, backbone):
        self.built, self.b = built, backbone
        self.epochs: dict[int, list[str]] = {}
        self.start_groups: list[dict] = []
        self.messages: list[str] = []
        self.bn_modes: dict[int, dict[str, bool]] = {}

    def on_fit_start(self, state, info):
        self.start_groups = info["groups"]

    def on_epoch_start(self, state):
        model = self.built["model"]
        flags: dict[str, set[bool]] = {}
        for n, p in model.named_parameters():
            flags.setdefault(self.b.groups[backbones.group_of(self.b, n)][0], set()).add(p.requires_grad)
        assert all(len(v) == 1 for v in flags.values()), flags  # a group trains whole or not at all
        self.epochs[state.epoch] = [g for g, _ in self.b.groups if flags[g] == {True}]
        self.bn_modes[state.epoch] = {"bn1": model.bn1.training, "layer3.0.bn1": model.layer3[0].bn1.training,
                                      "layer4.0.bn1": model.layer4[0].bn1.training}

    def on_message(self, text, level="info"):
        self.messages.append(text)


@pytest.mark.integration
def test_fit_unfreezes_one_group_per_epoch(tmp_path, workspace, built):
    data = make_dataset(tmp_path / "data", {"red": 8, "blue": 8})
    b = backbones.get("resnet18")
    rec = RecordFreeze(built, b)
    result = fit(tiny_config(data, "gradual", 3, unfreeze_every=1), tmp_path / "run", [rec])
    assert result.status == "finished"
    assert rec.epochs == {1: ["head"], 2: ["stage 4", "head"], 3: ["stage 3", "stage 4", "head"]}
    assert [(r["group"], r["trainable"]) for r in rec.start_groups] == [(g, g == "head") for g in R]
    assert "Epoch 2: unfroze stage 4." in rec.messages and "Epoch 3: unfroze stage 3." in rec.messages
    assert rec.bn_modes[1] == {"bn1": False, "layer3.0.bn1": False, "layer4.0.bn1": False}
    assert rec.bn_modes[2] == {"bn1": False, "layer3.0.bn1": False, "layer4.0.bn1": True}
    assert rec.bn_modes[3] == {"bn1": False, "layer3.0.bn1": True, "layer4.0.bn1": True}
    # stem, stage 1 and stage 2 never trained: weights and batch-norm statistics untouched
    final = result.model.state_dict()
    never = ("conv1.", "bn1.", "layer1.", "layer2.")
    checked = [k for k in final if k.startswith(never)]
    assert checked
    for k in checked:
        assert torch.equal(final[k], built["initial"][k]), k
    assert not torch.equal(final["fc.weight"], built["initial"]["fc.weight"])


def init_file(tmp_path) -> tuple:
    """A random resnet18 state with its 1000-class head and non-trivial batch-norm statistics."""
    torch.manual_seed(1)
    model = backbones.get("resnet18").build()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(7)
    path = tmp_path / "init.pth"
    torch.save(model.state_dict(), path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.integration
def test_linear_probe_leaves_the_backbone_bitwise_unchanged(tmp_path, workspace):
    data = make_dataset(tmp_path / "data", {"red": 8, "blue": 8})
    path, init = init_file(tmp_path)
    config = tiny_config(data, "linear-probe", 3)
    config.model.weights = str(path)
    run = tmp_path / "run"
    result = fit(config, run)
    assert result.status == "finished" and result.weights.source == "file"
    saved = load_file(str(run / "model.safetensors"))
    assert set(saved) == set(init)
    body = [k for k in init if not k.startswith("fc.")]
    assert any(k.endswith("running_mean") for k in body) and any(k.endswith("running_var") for k in body)
    for k in body:
        assert saved[k].dtype == init[k].dtype and torch.equal(saved[k], init[k]), k
    assert saved["fc.weight"].shape == (2, 512)


@pytest.mark.integration
def test_linear_probe_with_train_frozen_bn_updates_statistics_only(tmp_path, workspace):
    data = make_dataset(tmp_path / "data", {"red": 8, "blue": 8})
    path, init = init_file(tmp_path)
    config = tiny_config(data, "linear-probe", 1, train_frozen_bn=True)
    config.model.weights = str(path)
    fit(config, tmp_path / "run")
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    # weights stay frozen, but the batch-norm statistics now follow the data
    assert torch.equal(saved["conv1.weight"], init["conv1.weight"])
    assert torch.equal(saved["layer1.0.bn1.weight"], init["layer1.0.bn1.weight"])
    assert not torch.equal(saved["layer1.0.bn1.running_mean"], init["layer1.0.bn1.running_mean"])
    assert int(saved["bn1.num_batches_tracked"]) > 7
