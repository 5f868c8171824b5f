"""AugmentConfig -> transforms.v2: shapes, normalisation per backbone, every switch doing its job."""
import pytest
import torch

from core.data.augment import denormalize, eval_transform, train_transform
from core.config import AugmentConfig

pytestmark = pytest.mark.unit

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def photo(h=48, w=80, dtype=torch.uint8):
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    return img if dtype == torch.uint8 else img.float() / 255


@pytest.mark.parametrize("resize", ["crop", "squash", "pad"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_eval_gives_a_normalised_square_for_8_and_high_bit_inputs(resize, dtype):
    aug = AugmentConfig(image_size=32, resize=resize)
    out = eval_transform(aug, MEAN, STD)(photo(dtype=dtype))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert -1.001 <= out.min() and out.max() <= 1.001  # (x - 0.5) / 0.5 of [0, 1]


def test_uint8_and_float_inputs_of_the_same_picture_agree():
    aug = AugmentConfig(image_size=32, resize="squash")
    tf = eval_transform(aug, MEAN, STD)
    a, b = tf(photo()), tf(photo(dtype=torch.float32))
    assert (a - b).abs().max() < 0.05


def test_pad_keeps_the_whole_frame_and_pads_black():
    aug = AugmentConfig(image_size=40, resize="pad")
    white = torch.full((3, 20, 40), 255, dtype=torch.uint8)
    out = eval_transform(aug, (0, 0, 0), (1, 1, 1))(white)
    assert out[:, 20, :].min() == 1.0  # the picture, full width
    assert out[:, 0, :].max() == 0.0 and out[:, -1, :].max() == 0.0  # letterbox bars


def test_eval_is_deterministic_and_train_is_random():
    aug = AugmentConfig(image_size=32, crop_scale_min=0.3, hflip=0.5, rotation=20, color_jitter=0.4)
    img = photo()
    ev = eval_transform(aug, MEAN, STD)
    assert torch.equal(ev(img), ev(img))
    tr = train_transform(aug, MEAN, STD)
    torch.manual_seed(0)
    outs = [tr(img) for _ in range(4)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_no_augmentation_means_train_equals_eval():
    aug = AugmentConfig(image_size=32, crop_scale_min=1.0, hflip=0.0)
    assert not aug.is_random()
    img = photo()
    assert torch.equal(train_transform(aug, MEAN, STD)(img), eval_transform(aug, MEAN, STD)(img))


@pytest.mark.parametrize("field, check", [
    ("hflip", lambda i, o: torch.equal(o, i.flip(-1))),
    ("vflip", lambda i, o: torch.equal(o, i.flip(-2))),
    ("grayscale", lambda i, o: torch.allclose(o[0], o[1]) and torch.allclose(o[1], o[2])),
])
def test_probability_one_switches_apply(field, check):
    aug = AugmentConfig(image_size=32, resize="squash", crop_scale_min=1.0, **({"hflip": 0.0} | {field: 1.0}))
    base = eval_transform(aug, (0, 0, 0), (1, 1, 1))
    img = photo(32, 32)
    assert check(base(img), train_transform(aug, (0, 0, 0), (1, 1, 1))(img))


def test_erasing_blanks_a_patch():
    aug = AugmentConfig(image_size=32, crop_scale_min=1.0, hflip=0.0, erasing=1.0)
    out = train_transform(aug, MEAN, STD)(photo(32, 32))
    ref = eval_transform(aug, MEAN, STD)(photo(32, 32))
    assert (out != ref).any()


def test_denormalize_inverts_normalisation():
    aug = AugmentConfig(image_size=32, resize="squash")
    img = photo(32, 32)
    out = denormalize(eval_transform(aug, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(img),
                      (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert torch.allclose(out, img.float() / 255, atol=1e-5)


def test_unknown_resize_mode_is_refused():
    with pytest.raises(ValueError, match="resize"):
        eval_transform(AugmentConfig(resize="stretchy"), MEAN, STD)
