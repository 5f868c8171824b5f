"""What leaves the app: weights a plain library model loads, packaged with everything needed to use them.

The head may sit behind a Dropout during training (`fc.1.weight`); at inference dropout does nothing, so the
exported state names the head as the library's own constructor does (`fc.weight`): `resnet18(num_classes=N)`
or `timm.create_model(..., num_classes=N)` then loads it with no code from this app.

TorchScript and ONNX files (separate downloads, not in the package) hold the whole model: each is loaded back and
compared with the run's model on real images of the run's dataset before it is returned (`verify`).
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file, save
from torch import nn

from core.models import backbones
from core import runs
from core.accounts.projects import home_of
from core.config import RunConfig
from core.data.images import ImageError, Source

PACKAGE_FILES = ("classes.json", "config.json", "metrics.jsonl", "confusion_matrix.json")
# + preprocessing.json and calibration.json, which every package has


def plain_state(state: dict[str, torch.Tensor], backbone: backbones.Backbone) -> dict[str, torch.Tensor]:
    """`<head>.1.*` (Dropout, Linear) -> `<head>.*`: the keys a library model with num_classes has."""
    wrapped = f"{backbone.head}.1."
    return {(backbone.head + "." + k[len(wrapped):] if k.startswith(wrapped) else k): v for k, v in state.items()}


def constructor(backbone: backbones.Backbone) -> tuple[str, str]:
    """(import line, expression building the bare model) for the README's plain code."""
    if backbone.hf_repo:
        arch = backbone.hf_repo.split("/")[-1].split(".")[0]
        return "import timm", f'timm.create_model("{arch}", num_classes=len(classes))'
    return "import torchvision", f"torchvision.models.{backbone.name}(num_classes=len(classes))"


def readme(run_dir: Path) -> str:
    config = runs.read_json(run_dir / "config.json", {})
    backbone = backbones.get(config["model"]["backbone"])
    imports, build = constructor(backbone)
    weights = config.get("provenance", {}).get("weights", {}).get("source")
    warning = ("\n**Trained from random initialisation, not from pretrained weights: expect lower accuracy.**\n"
               if weights == "random" else "")
    return f"""# Fine-Tune Lab model: {backbone.name}
{warning}
Files: `model.safetensors` (weights), `classes.json` (output order), `preprocessing.json` (input size, resize,
`resize_side`: the shorter side before the centre crop, mean, std), `config.json` (the full training config),
`metrics.jsonl`, `confusion_matrix.json`.

```python
import json, torch
{imports}
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms import v2
classes, pre = json.load(open("classes.json")), json.load(open("preprocessing.json"))
model = {build}
model.load_state_dict(load_file("model.safetensors")); model.eval()
tf = v2.Compose([v2.ToImage(), v2.Resize(pre["resize_side"]), v2.CenterCrop(pre["image_size"]), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre["mean"], pre["std"])])
temperature = json.load(open("calibration.json"))["temperature"]  # 1.0: no validation split, or none needed
probs = (model(tf(Image.open("photo.jpg").convert("RGB"))[None]) / temperature).softmax(1)[0]
print(classes[probs.argmax().item()], f"{{probs.max().item():.1%}}")
```

Dividing the logits by `temperature` (temperature scaling, fitted on held-out predictions: `fitted_on` in
`calibration.json` says which; 1.0 when they showed the model already calibrated) gives the calibrated
probabilities the app shows; it never changes which class wins. The TorchScript and ONNX exports already divide.

That snippet is for the default `crop` resize; `preprocessing.json` says which one this model used
(`squash`: `v2.Resize((size, size))`; `pad`: fit the longer side, then pad to a square with black).
"""


def preprocessing(run_dir: Path) -> dict[str, Any]:
    """preprocessing.json, with "resize_side" (the shorter side before the centre crop) computed as the app does
    for runs written before it was recorded there, so a deployment never has to recompute it."""
    config = RunConfig.from_json((Path(run_dir) / "config.json").read_text())
    aug, backbone = config.augment, backbones.get(config.model.backbone)
    recorded = runs.read_json(Path(run_dir) / "preprocessing.json", None) or {
        "image_size": aug.image_size, "resize": aug.resize, "crop_pct": aug.crop_pct, "mean": list(backbone.mean),
        "std": list(backbone.std), "backbone": backbone.name}
    return {"resize_side": aug.resize_side()} | recorded


def weights_bytes(run_dir: Path) -> bytes:
    config = runs.read_json(run_dir / "config.json", {})
    backbone = backbones.get(config["model"]["backbone"])
    return save(plain_state(load_file(str(run_dir / "model.safetensors")), backbone))


def package(run_dir: Path) -> bytes:
    """The model package zip, built when asked for (a download button calls this on click)."""
    from core.evaluate.predict import calibration_of

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.safetensors", weights_bytes(run_dir))
        z.writestr("preprocessing.json", json.dumps(preprocessing(run_dir), indent=2))
        z.writestr("calibration.json", json.dumps(calibration_of(run_dir) or {
            "temperature": 1.0, "fitted_on": None}, indent=2))  # a run evaluated before temperatures existed
        for name in PACKAGE_FILES:
            if (run_dir / name).is_file():
                z.write(run_dir / name, name)
        z.writestr("README.md", readme(run_dir))
    return buf.getvalue()


def has_weights(run_dir: Path) -> bool:
    return (run_dir / "model.safetensors").is_file() and (run_dir / "config.json").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Deployable model files: TorchScript and ONNX, each loaded back and checked against the run's model before a
# user gets it. Both take a normalised float32 batch (N, 3, S, S) at the run's image size (preprocessing.json says
# how to get there: decode to RGB, resize, scale to [0, 1], subtract mean, divide by std) and return calibrated
# logits (N, classes): the network's logits divided by the run's temperature (calibration.json), in classes.json's
# order; softmax over dim 1 gives the probabilities the app shows.

TOLERANCE = 1e-4  # max |logit difference| an export may have from the run's model on the same images
ONNX_OPSET = 18  # the opset torch's exporter writes natively (no version conversion); onnxruntime runs 7..23+
VERIFY_IMAGES = 8  # images of the run's dataset an export is checked on
EXPORT_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}


class ExportError(ValueError):
    """An export that does not reproduce the run's model (or could not be made); never handed to a user."""


def torchscript(run_dir: Path, images: Sequence[Source] | None = None) -> bytes:
    """The run's model traced to TorchScript; `torch.jit.load(io.BytesIO(blob))` runs it without this app.

    Input: normalised float32 (N, 3, S, S), any N; output: calibrated logits (N, classes). The file carries
    `classes.json`, `preprocessing.json` and `export.json` as extra files (`torch.jit.load(f, _extra_files=
    {"classes.json": ""})` reads them). Checked before returning: batches of 1 and of several real images of the
    run's dataset (or `images`) give the run model's logits within TOLERANCE, else ExportError.
    """
    predictor, inputs, origin = _prepared(run_dir, images)
    try:
        with _quiet_jit(), torch.no_grad():
            traced = torch.jit.trace(predictor.model, inputs[:1], check_trace=False)  # checked below, loaded back
    except Exception as exc:
        raise ExportError(f"TorchScript export of {predictor.backbone.name} failed: {exc}") from exc
    files = _descriptions(predictor, "torchscript")
    blob = _jit_bytes(traced, files)
    diff = _checked("torchscript", blob, predictor, inputs)
    return _jit_bytes(traced, _with_verification(files, origin, len(inputs), diff))


def onnx(run_dir: Path, images: Sequence[Source] | None = None) -> bytes:
    """The run's model as ONNX (opset ONNX_OPSET, weights inside the file).

    Input "images": normalised float32 (batch, 3, S, S) with a dynamic batch axis; output "logits" (batch, classes).
    metadata_props carry `classes`, `preprocessing` and `export` (JSON each). Checked before returning with
    onnxruntime: batches of 1 and of several real images give the run model's logits within TOLERANCE, else
    ExportError. Uses torch's torch.export-based exporter (needs the onnxscript package).
    """
    import onnx as onnx_lib

    predictor, inputs, origin = _prepared(run_dir, images)
    example = inputs[:2]  # a batch of 2: a batch of 1 may be specialised into the graph as a constant
    try:
        with _quiet_onnx(), torch.no_grad():
            program = torch.onnx.export(
                predictor.model, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=ONNX_OPSET, verbose=False)
        proto = program.model_proto
        onnx_lib.checker.check_model(proto)
    except Exception as exc:  # the exporter raises many types; the user gets one clear reason
        raise ExportError(f"ONNX export of {predictor.backbone.name} failed: {exc}") from exc
    proto.doc_string = (f"Fine-Tune Lab {predictor.backbone.name}: input 'images' normalised float32 (batch, 3, "
                        f"{predictor.config.augment.image_size}, {predictor.config.augment.image_size}), output "
                        f"'logits' (batch, {len(predictor.classes)}); see metadata 'preprocessing' and 'classes'.")
    files = _descriptions(predictor, "onnx")
    _set_metadata(proto, files)
    diff = _checked("onnx", proto.SerializeToString(), predictor, inputs)
    _set_metadata(proto, _with_verification(files, origin, len(inputs), diff))
    return proto.SerializeToString()


def build_export(run_dir: Path, fmt: str) -> bytes:
    """One of EXPORT_FILES' formats by name (its file name there)."""
    if fmt not in EXPORT_FILES:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FILES)}")
    return {"torchscript": torchscript, "onnx": onnx}[fmt](run_dir)


def cached(run_dir: Path, fmt: str, build: bool = False) -> Path:
    """Where the run's export in `fmt` is kept (RUN_DIR/exports/<EXPORT_FILES[fmt]>); with build, made (and checked)
    now when missing. A file older than the run's weights is stale and removed, so is_file() means current."""
    if fmt not in EXPORT_FILES:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FILES)}")
    run_dir = Path(run_dir)
    path = run_dir / "exports" / EXPORT_FILES[fmt]
    weights = run_dir / "model.safetensors"
    if path.is_file() and weights.is_file() and path.stat().st_mtime < weights.stat().st_mtime:
        path.unlink(missing_ok=True)
    if build and not path.is_file():
        blob = build_export(run_dir, fmt)  # raises ExportError before anything is written
        path.parent.mkdir(exist_ok=True)
        with runs.replace_atomically(path) as tmp:
            tmp.write_bytes(blob)
    return path


def verify(run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, images: torch.Tensor,
           batch_sizes: Sequence[int | None] = (1, None)) -> float:
    """Max |logit difference| between `run` (an export loaded back, see `runner`) and `model` on `images`.

    `images` are preprocessed (N, 3, S, S); each batch size splits them (None: all at once), so a fixed batch
    axis in the export shows up as an error or a difference. inf when either side is not finite.
    """
    model.eval()
    worst = 0.0
    with torch.no_grad():
        for size in batch_sizes:
            size = size or len(images)
            for i in range(0, len(images), size):
                batch = images[i:i + size]
                ours, theirs = model(batch), torch.as_tensor(run(batch)).to(torch.float32)
                if theirs.shape != ours.shape or not (ours.isfinite().all() and theirs.isfinite().all()):
                    return float("inf")
                worst = max(worst, float((ours - theirs).abs().max()))
    return worst


def runner(fmt: str, blob: bytes) -> Callable[[torch.Tensor], torch.Tensor]:
    """An export loaded back as a plain function: normalised batch -> logits."""
    if fmt == "torchscript":
        module = load_torchscript(blob)[0]
        return lambda x: module(x)
    if fmt == "onnx":
        session = onnx_session(blob)
        return lambda x: torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    raise ValueError(f"unknown export format {fmt!r}")


def load_torchscript(blob: bytes) -> tuple[torch.jit.ScriptModule, dict[str, str]]:
    """(module in eval mode, its extra files as text)."""
    files = {name: "" for name in ("classes.json", "preprocessing.json", "export.json")}
    with _quiet_jit():
        module = torch.jit.load(io.BytesIO(blob), map_location="cpu", _extra_files=files)
    module.eval()
    return module, {k: v.decode() if isinstance(v, bytes) else v for k, v in files.items()}


def onnx_session(blob: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])


def dataset_images(run_dir: Path, n: int = VERIFY_IMAGES) -> list[Path]:
    """Up to n image files the run was trained on, spread over its classes (the sorted list, evenly sampled):
    the workspace copy under the run's dataset key, else config.json's data.source when it is a folder."""
    from core.evaluate.predict import image_files
    from core.data.sources import DataError, stored

    config = runs.read_json(Path(run_dir) / "config.json", {})
    candidates = []
    try:
        candidates.append(stored(home_of(run_dir), str(config.get("provenance", {}).get("dataset", {}).get("key"))).data_dir)
    except DataError:
        pass
    if source := config.get("data", {}).get("source"):
        candidates.append(Path(source))
    for folder in candidates:
        if folder.is_dir() and (files := image_files([folder])):
            return [files[i * len(files) // min(n, len(files))] for i in range(min(n, len(files)))]
    return []


def _prepared(run_dir: Path, images: Sequence[Source] | None):
    """(predictor, preprocessed inputs with at least 3 images, where they came from)."""
    from core.evaluate.predict import Predictor

    predictor = Predictor.load(Path(run_dir))
    sources = list(images) if images is not None else dataset_images(run_dir)
    tensors = []
    for source in sources:
        try:
            tensors.append(predictor.tensor(source).to(torch.float32))
        except (ImageError, OSError):
            continue
    origin = ("the given images" if images is not None else "images of the run's dataset") if tensors else \
        "random inputs (none of the run's images could be read)"
    if not tensors:
        size = predictor.config.augment.image_size
        tensors = list(torch.randn(VERIFY_IMAGES, 3, size, size, generator=torch.Generator().manual_seed(0)))
    while len(tensors) < 3:  # a batch of several is what shows a fixed batch axis
        tensors += tensors
    return predictor, torch.stack(tensors), origin


def _checked(fmt: str, blob: bytes, predictor, inputs: torch.Tensor) -> float:
    try:
        diff = verify(runner(fmt, blob), predictor.model, inputs, batch_sizes=(1, None))
    except Exception as exc:
        raise ExportError(f"the {fmt} export of {predictor.backbone.name} does not run: {exc}") from exc
    if not diff <= TOLERANCE:
        raise ExportError(f"the {fmt} export of {predictor.backbone.name} differs from the run's model by {diff:.3g} "
                          f"(max |logit difference|; allowed {TOLERANCE:g}): not exported")
    return diff


def _descriptions(predictor, fmt: str) -> dict[str, str]:
    run_dir = predictor.run_dir
    size = predictor.config.augment.image_size
    about = {"format": fmt, "backbone": predictor.backbone.name, "run": run_dir.name,
             "input": f"float32 (N, 3, {size}, {size}), RGB scaled to [0, 1], then (x - mean) / std",
             "output": f"logits (N, {len(predictor.classes)}) already divided by the run's temperature "
                       f"{predictor.temperature:.4g}, in classes' order; softmax(dim=1) for the calibrated probabilities"}
    return {"classes.json": json.dumps(predictor.classes), "preprocessing.json": json.dumps(preprocessing(run_dir)),
            "export.json": json.dumps(about)}


def _with_verification(files: dict[str, str], origin: str, count: int, diff: float) -> dict[str, str]:
    about = json.loads(files["export.json"]) | {"verified": {
        "on": origin, "images": count, "batch_sizes": [1, count], "max_abs_logit_diff": diff, "tolerance": TOLERANCE}}
    return files | {"export.json": json.dumps(about)}


def _set_metadata(proto, files: dict[str, str]) -> None:
    """ONNX metadata_props: classes, preprocessing, export (JSON strings), replacing earlier values."""
    wanted = {name.removesuffix(".json"): text for name, text in files.items()}
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in wanted]
    del proto.metadata_props[:]
    for key, value in keep + list(wanted.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _jit_bytes(module, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with _quiet_jit():
        torch.jit.save(module, buf, _extra_files=files)
    return buf.getvalue()


@contextlib.contextmanager
def _quiet_jit():
    """torch 2.14 marks torch.jit as deprecated (FutureWarning on every call); TorchScript is still what many
    deployments (C++ libtorch, mobile) load, so the notice stays out of the user's output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


@contextlib.contextmanager
def _quiet_onnx():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.onnx.*")
        yield
