"""Every registered backbone: builds, its layer groups cover every parameter once, and a new head fits."""
import pytest
import torch

from core.models import backbones

pytestmark = pytest.mark.unit

NAMES = list(backbones.REGISTRY)


def test_the_registry_has_the_promised_backbones():
    for name in ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
                 "efficientnet_b2", "convnext_tiny", "regnet_y_800mf", "densenet121", "vit_b_16", "swin_t"):
        assert name in backbones.REGISTRY


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.integration
def test_backbone_groups_head_and_forward(name):
    torch.manual_seed(0)
    b = backbones.get(name)
    model = backbones.build_model(b, num_classes=3, dropout=0.2).eval()
    assert b.groups[0][0] == "stem" and b.groups[-1][0] == "head"
    # each parameter in exactly one group
    for pname, _ in model.named_parameters():
        owners = [g for g, prefixes in b.groups if backbones.in_group(pname, prefixes)]
        assert len(owners) == 1, (pname, owners)
    sizes = backbones.group_sizes(b, model)
    assert sum(sizes) == sum(p.numel() for p in model.parameters()) and all(s > 0 for s in sizes)
    # the new head is where the registry says, sized to the dataset, behind dropout
    head = model.get_submodule(b.head)
    assert isinstance(head[0], torch.nn.Dropout) and head[1].out_features == 3
    size = b.input_size if b.fixed_size else 64
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    meta = b.metadata()
    assert 50 < meta["imagenet_top1"] < 90 and meta["file_mb"] > 1
    assert len(b.mean) == len(b.std) == 3 and b.input_size >= 224


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="resnet18"):
        backbones.get("resnet9000")
