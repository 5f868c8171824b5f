"""Grad-CAM: a map for every convolutional backbone, a plain refusal for the others, and the map points where the
evidence is."""
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from core.models import backbones
from core.evaluate import saliency

pytestmark = pytest.mark.unit

NAMES = list(backbones.REGISTRY)


def opposite_classes(name: str) -> tuple[backbones.Backbone, torch.nn.Module]:
    """Random weights, and a head whose class 1 is exactly class 0 negated: whatever speaks for one speaks
    against the other, so at least one of the two has a map that is not all zero."""
    torch.manual_seed(0)
    b = backbones.get(name)
    model = backbones.build_model(b, num_classes=2)
    head = model.get_submodule(b.head)
    with torch.no_grad():
        head.weight[1] = -head.weight[0]
        head.bias.zero_()
    return b, model


@pytest.mark.parametrize("name", NAMES)
def test_every_backbone_gives_a_map_or_says_plainly_why_not(name):
    b = backbones.get(name)
    if not saliency.supported(b):
        model = backbones.build_model(b, num_classes=2)
        with pytest.raises(saliency.SaliencyError) as err:
            saliency.grad_cam(model, b, torch.randn(3, b.input_size, b.input_size))
        message = str(err.value)
        assert message.startswith(f"Grad-CAM is not available for {name}:") and "transformer" in message
        assert "resnet18" in message  # what to choose instead
        assert name in ("vit_b_16", "swin_t")  # the message calls every unsupported backbone a transformer
        return
    b, model = opposite_classes(name)
    layer = model.get_submodule(b.cam_layer)
    hooks = len(layer._forward_hooks)
    cams = [saliency.grad_cam(model, b, torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1)), t)
            for t in (0, 1)]
    for cam in cams:
        assert cam.shape == (64, 64) and cam.dtype == torch.float32
        assert torch.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    assert max(float(cam.max()) for cam in cams) == 1.0
    assert len(layer._forward_hooks) == hooks


@pytest.mark.parametrize("row, col", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_the_map_lies_on_the_patch_the_class_score_comes_from(row, col):
    # resnet18 at initialisation is free of biases (its convolutions have none; eval-mode batch norm is the
    # identity), so a background at the normalised mean (0) gives zero activations: all of layer4's activation,
    # and so all evidence for a class scoring the mean activation, comes from the one bright patch.
    b, model = opposite_classes("resnet18")
    with torch.no_grad():
        model.fc.weight[0] = 1 / model.fc.in_features
        model.fc.weight[1] = -model.fc.weight[0]
    x = torch.zeros(3, 256, 256)
    x[:, 128 * row + 48:128 * row + 80, 128 * col + 48:128 * col + 80] = 2.0
    cam = saliency.grad_cam(model, b, x)
    assert cam[128 * row:128 * row + 128, 128 * col:128 * col + 128].sum() > 0.5 * cam.sum()
    assert torch.equal(cam, saliency.grad_cam(model, b, x, target=0))  # the predicted class by default
    against = saliency.grad_cam(model, b, x, target=1)  # nothing speaks for it: a zero map, not NaN
    assert torch.equal(against, torch.zeros(256, 256))


def test_a_frozen_model_in_training_mode_gets_the_same_map_and_stays_as_it_was():
    b, model = opposite_classes("resnet18")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    expected = saliency.grad_cam(model.eval(), b, x)
    assert all(p.grad is None for p in model.parameters())  # no stray gradients for a later optimiser step
    model.train()
    model.layer1.eval()  # a frozen group's batch norm, kept in eval mode while the rest trains
    model.requires_grad_(False)
    modes = {name: m.training for name, m in model.named_modules()}
    with torch.no_grad():  # as prediction code runs
        cam = saliency.grad_cam(model, b, x)
    assert torch.allclose(cam, expected, atol=1e-6)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_a_failure_midway_still_removes_the_hook_and_restores_the_mode():
    b, model = opposite_classes("resnet18")
    model.train()
    with pytest.raises(ValueError, match="the model has 2 classes"):
        saliency.grad_cam(model, b, torch.randn(3, 64, 64), target=5)
    assert len(model.layer4._forward_hooks) == 0 and model.training and model.layer4.training


def test_overlay_colours_the_hot_half_warm_and_keeps_the_picture_size():
    grey = Image.new("L", (40, 30), 128)  # any mode, any size: the map is resized to the picture
    cam = torch.zeros(64, 64)
    cam[:, :32] = 1.0  # evidence on the left half only
    out = saliency.overlay(grey, cam)
    assert out.mode == "RGB" and out.size == (40, 30)
    pixels = np.asarray(out, dtype=np.int32)
    left, right = pixels[:, :15], pixels[:, 25:]
    assert left[..., 0].min() > right[..., 0].max()  # red where the evidence is
    assert right[..., 2].min() > left[..., 2].max()  # blue where there is none
    assert not np.array_equal(pixels, np.asarray(grey.convert("RGB")))


@pytest.mark.integration
def test_grad_cam_and_predictions_on_the_same_model_at_once_both_come_out_right():
    """The server shares one model per run: one session's Grad-CAM while another predicts with that same model
    object must change neither result."""
    b, model = opposite_classes("resnet18")
    model.eval()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected_probs = model(images).softmax(1)
    expected_cam = saliency.grad_cam(model, b, images[0], 1)
    cams, probs, errors = [], [], []
    start = threading.Barrier(2)

    def explain():
        start.wait()
        for _ in range(30):
            try:
                cams.append(saliency.grad_cam(model, b, images[0], 1))
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    def predict():
        start.wait()
        for _ in range(60):
            with torch.no_grad():
                probs.append(model(images).softmax(1))

    threads = [threading.Thread(target=explain), threading.Thread(target=predict)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(cams) == 30 and len(probs) == 60
    for cam in cams:
        torch.testing.assert_close(cam, expected_cam, atol=1e-6, rtol=0)
    for p in probs:
        torch.testing.assert_close(p, expected_probs, atol=1e-6, rtol=0)
    assert len(model.layer4._forward_hooks) == 0 and not model.training
