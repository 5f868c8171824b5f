"""Exports: the model package's README code, TorchScript and ONNX, each loaded back with plain libraries and
compared with the run's own model on the same images."""
import contextlib
import copy
import io
import json
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import onnxruntime
import pytest
import torch

from conftest import make_dataset
from core.models import backbones
from core.deploy import export
from core.data.augment import eval_transform
from core.config import AugmentConfig
from core.train.engine import fit
from core.deploy.export import package
from core.deploy.export import ExportError, TOLERANCE, onnx, torchscript, verify
from core.data.images import decode_image
from core.evaluate.predict import Predictor
from test_engine import small_config
from test_runs import race

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("backbone, weights, dropout", [("resnet18", "random", 0.3),
                                                         ("efficientnet_lite0", "pretrained", 0.0)])
def test_readme_code_loads_the_package_and_agrees_with_the_app(tmp_path, workspace, backbone, weights, dropout):
    data = make_dataset(tmp_path / "data", {"red": 8, "blue": 8, "green": 8}, size=(48, 40), fmt="JPEG")
    config = small_config(data, epochs=1)
    config.model.backbone, config.model.weights, config.model.dropout = backbone, weights, dropout
    config.augment.image_size = 64
    result = fit(config, tmp_path / "run")
    blob = package(tmp_path / "run")
    folder = tmp_path / "unzipped"
    zipfile.ZipFile(io.BytesIO(blob)).extractall(folder)
    assert {"model.safetensors", "classes.json", "preprocessing.json", "config.json", "metrics.jsonl",
            "README.md"} <= set(os.listdir(folder))
    readme = (folder / "README.md").read_text()
    assert ("random initialisation" in readme) == (weights == "random")
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    classes = ["blue", "green", "red"]
    model = result.model.eval()
    b = backbones.get(backbone)
    tf = eval_transform(AugmentConfig(image_size=64), b.mean, b.std)
    for name in classes:
        photo = data / name / "3.jpeg"
        (folder / "photo.jpg").write_bytes(photo.read_bytes())
        out = io.StringIO()
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            with contextlib.redirect_stdout(out):
                exec(code, {})
        finally:
            os.chdir(cwd)
        with torch.no_grad():
            ours = classes[model(tf(decode_image(photo))[None]).argmax(1).item()]
        predictor = Predictor.load(tmp_path / "run")  # the app's calibrated probability: the README shows the same
        confidence = predictor.probabilities([predictor.tensor(photo)]).max().item()
        assert out.getvalue().split() == [ours, f"{confidence:.1%}"]


# TorchScript and ONNX: a real small run (random weights, 32 px), exported, loaded back with the plain libraries
# (torch.jit.load, onnxruntime) and run on real images of its dataset, preprocessed as the app does.

CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """backbone -> (run folder, data folder); each run trained once for the whole module."""
    root = tmp_path_factory.mktemp("exports")
    data = make_dataset(root / "data", {"red": 6, "blue": 6, "green": 6})
    cache = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTLAB_HOME", str(root / "workspace"))

        def run(backbone: str):
            if backbone not in cache:
                config = small_config(data, epochs=1)
                config.model.backbone = backbone
                fit(config, root / backbone)
                cache[backbone] = root / backbone
            return cache[backbone], data
        yield run


@pytest.fixture(scope="module")
def resnet_blobs(made):
    run, _ = made("resnet18")
    return {"torchscript": torchscript(run), "onnx": onnx(run)}


def real_images(predictor: Predictor, data) -> torch.Tensor:
    """One image per class from the run's dataset, as the app preprocesses them: (3, 3, S, S)."""
    return torch.stack([predictor.tensor(data / name / "1.png") for name in CLASSES])


def load_torchscript(blob: bytes):
    files = {"classes.json": "", "preprocessing.json": "", "export.json": ""}
    with warnings.catch_warnings():  # torch 2.14 marks torch.jit deprecated; loading TorchScript is the point here
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(io.BytesIO(blob), _extra_files=files)
    return (lambda x: module(x)), {k: json.loads(v) for k, v in files.items()}


def load_onnx(blob: bytes):
    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("images", "logits")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 32, 32]  # dynamic batch axis, fixed image
    meta = session.get_modelmeta().custom_metadata_map
    return (lambda x: torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])), \
        {k: json.loads(meta[k]) for k in ("classes", "preprocessing", "export")}


LOADERS = {"torchscript": load_torchscript, "onnx": load_onnx}


def assert_agrees(run_export, predictor: Predictor, images: torch.Tensor) -> None:
    """Batch sizes 1 and 3: the same top-1 classes and logits within TOLERANCE of the run's model."""
    with torch.no_grad():
        for batch in (images[:1], images[1:2], images):
            ours, theirs = predictor.model(batch), run_export(batch)
            assert theirs.shape == ours.shape
            assert torch.equal(theirs.argmax(1), ours.argmax(1))
            assert (theirs - ours).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_resnet18_export_loads_back_and_agrees_with_the_run(made, resnet_blobs, fmt):
    run, data = made("resnet18")
    predictor = Predictor.load(run)
    run_export, meta = LOADERS[fmt](resnet_blobs[fmt])
    assert_agrees(run_export, predictor, real_images(predictor, data))
    # Self-describing: classes in output order, preprocessing as the run folder has it, how it was checked.
    classes_key, pre_key, about_key = ("classes.json", "preprocessing.json", "export.json") if fmt == "torchscript" \
        else ("classes", "preprocessing", "export")
    assert meta[classes_key] == CLASSES
    assert meta[pre_key] == json.loads((run / "preprocessing.json").read_text())
    assert meta[pre_key]["image_size"] == 32
    verified = meta[about_key]["verified"]
    assert verified["on"] == "images of the run's dataset" and verified["max_abs_logit_diff"] <= TOLERANCE
    assert meta[about_key]["format"] == fmt


@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "efficientnet_lite0"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_other_families_export(made, backbone, fmt):
    run, data = made(backbone)
    predictor = Predictor.load(run)
    run_export, meta = LOADERS[fmt](export.build_export(run, fmt))
    assert_agrees(run_export, predictor, real_images(predictor, data))
    assert meta["classes.json" if fmt == "torchscript" else "classes"] == CLASSES


def test_verify_measures_the_difference_and_catches_one_changed_weight(made, resnet_blobs):
    run, data = made("resnet18")
    predictor = Predictor.load(run)
    images = real_images(predictor, data)
    changed = copy.deepcopy(predictor.model)
    with torch.no_grad():
        changed.net.fc.bias[0] += 0.01
    for fmt, blob in resnet_blobs.items():
        run_export = export.runner(fmt, blob)
        assert verify(run_export, predictor.model, images) <= TOLERANCE
        assert verify(run_export, changed, images) == pytest.approx(0.01 / predictor.temperature, abs=1e-4)
    nan = lambda x: torch.full((len(x), 3), float("nan"))  # noqa: E731
    assert verify(nan, predictor.model, images) == float("inf")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exports_divide_by_the_runs_temperature(made, tmp_path, fmt):
    run, data = made("resnet18")
    calibrated = tmp_path / "calibrated"
    shutil.copytree(run, calibrated)
    json_file = calibrated / "calibration.json"
    json_file.write_text(json.dumps(json.loads(json_file.read_text()) | {"temperature": 2.5}))
    predictor = Predictor.load(calibrated)
    images = real_images(predictor, data)
    blob = export.build_export(calibrated, fmt)
    run_export = export.runner(fmt, blob)
    with torch.no_grad():
        assert torch.allclose(run_export(images), predictor.net(images) / 2.5, atol=1e-4)
        assert torch.allclose(run_export(images).softmax(1), predictor.probabilities(images), atol=1e-4)
        assert torch.equal(predictor.probabilities(images).argmax(1), predictor.net(images).argmax(1))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_export_that_differs_from_the_run_is_refused(made, monkeypatch, fmt):
    """The exporter is handed a model with one weight changed: the check after export must refuse the file."""
    run, _ = made("resnet18")

    def changed(model):
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.net.fc.bias[1] -= 0.01
        return model
    if fmt == "torchscript":
        real = torch.jit.trace
        monkeypatch.setattr(torch.jit, "trace", lambda model, *a, **kw: real(changed(model), *a, **kw))
    else:
        real = torch.onnx.export
        monkeypatch.setattr(torch.onnx, "export", lambda model, *a, **kw: real(changed(model), *a, **kw))
    with pytest.raises(ExportError, match="differs from the run's model"):
        export.cached(run, fmt, build=True)
    assert not export.cached(run, fmt).exists()  # nothing a user could download


def test_cached_export_is_built_once_and_dropped_when_the_weights_change(made, tmp_path):
    run, _ = made("resnet18")
    copied = copy_run(run, tmp_path / "run")
    path = export.cached(copied, "torchscript")
    assert path == copied / "exports" / "model.torchscript.pt" and not path.exists()
    assert export.cached(copied, "torchscript", build=True) == path
    assert load_torchscript(path.read_bytes())[1]["classes.json"] == CLASSES
    os.utime(copied / "model.safetensors", (path.stat().st_mtime + 10,) * 2)  # the run trained on
    assert not export.cached(copied, "torchscript").exists()


def test_a_run_whose_images_are_gone_is_checked_on_random_inputs(made, tmp_path):
    run, _ = made("resnet18")
    moved = copy_run(run, tmp_path / "moved")
    config = json.loads((moved / "config.json").read_text())
    config["data"]["source"] = str(tmp_path / "gone")
    config["provenance"]["dataset"]["key"] = "gone"
    (moved / "config.json").write_text(json.dumps(config))
    _, meta = load_torchscript(torchscript(moved))
    assert meta["export.json"]["verified"]["on"].startswith("random inputs")
    assert export.dataset_images(moved) == []
    assert len(export.dataset_images(run, 4)) == 4


def copy_run(run: Path, to: Path) -> Path:
    """The run folder's files (not its exports) in a new place, as a user moving a run would have them."""
    to.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (to / f.name).write_bytes(f.read_bytes())
    return to


def test_two_sessions_building_the_same_export_at_once_both_get_a_whole_file(tmp_path, monkeypatch):
    """Two pages clicking "Build" together: each write lands whole and no temporary file is left behind. The
    build itself is stood in for by fixed bytes (it takes seconds; the write is what is under test here)."""
    blob = os.urandom(4_000_000)
    monkeypatch.setattr(export, "build_export", lambda run_dir, fmt: blob)
    path = tmp_path / "exports" / export.EXPORT_FILES["onnx"]

    def build(i: int) -> None:
        path.unlink(missing_ok=True)
        export.cached(tmp_path, "onnx", build=True)

    assert race(100, build, build) == []
    assert path.read_bytes() == blob and os.listdir(path.parent) == [path.name]


def test_resize_side_follows_timms_floor_convention():
    assert AugmentConfig(image_size=300).resize_side() == 342  # 300 / 0.875 = 342.86; round() would give 343
    assert AugmentConfig(image_size=224).resize_side() == 256
    assert AugmentConfig(image_size=300, resize="squash").resize_side() == 300


def test_the_package_states_the_resize_side_and_its_readme_resizes_to_it(made, tmp_path):
    """A run from before preprocessing.json recorded "resize_side", at a size where floor and round differ: the
    package's preprocessing.json says the number, and the README's code gives exactly the app's input tensor."""
    run, data = made("resnet18")
    old = copy_run(run, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    config["augment"]["image_size"] = 300
    (old / "config.json").write_text(json.dumps(config))
    pre = json.loads((old / "preprocessing.json").read_text())
    pre.pop("resize_side", None)
    (old / "preprocessing.json").write_text(json.dumps(pre | {"image_size": 300}))
    folder = tmp_path / "unzipped"
    zipfile.ZipFile(io.BytesIO(package(old))).extractall(folder)
    assert json.loads((folder / "preprocessing.json").read_text())["resize_side"] == 342
    photo = data / "red" / "1.png"
    (folder / "photo.jpg").write_bytes(photo.read_bytes())
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, namespace)
    finally:
        os.chdir(cwd)
    from PIL import Image

    theirs = namespace["tf"](Image.open(photo).convert("RGB"))
    ours = Predictor.load(old).tensor(photo)
    assert theirs.shape == ours.shape == (3, 300, 300)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
