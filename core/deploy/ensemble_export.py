"""An ensemble as one deployable graph, TorchScript or ONNX: every member runs on the image and the graph returns
the mean of their softmax outputs.

Input "images": float32 (N, 3, S, S), RGB scaled to [0, 1] after the members' shared resize, NOT normalised:
each member subtracts its own mean and divides by its own std inside the graph, so members with different
normalisation (ImageNet's, timm's 0.5) see exactly what they saw in training. The preprocessing.json shipped
with the graph therefore has mean 0 and std 1: code that normalises with it leaves the image as the graph wants it.
Output "probabilities": (N, classes) in classes.json's order, rows sum to 1 (probabilities, not logits: the mean of
members' logits would be another model). Members must resize alike (image size, resize mode, resize side): one
input cannot be two different crops, so such an ensemble is refused with ExportError; export its members one by one.

Each graph is loaded back and compared with EnsemblePredictor on real images of the first member's dataset, in
batches of 1 and of all, before anyone gets it (as export.py does for one run).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from core import runs
from core.data.augment import eval_transform
from core.data.images import ImageError, Source, decode_image
from core.deploy.export import (ONNX_OPSET, TOLERANCE, VERIFY_IMAGES, ExportError, _jit_bytes, _quiet_jit,
                                _quiet_onnx, dataset_images, load_torchscript, onnx_session, verify)
from core.evaluate.ensemble import EnsemblePredictor

ONNX_INLINE_LIMIT = 1536 * 1024**2  # weights above this go to model.onnx.data: protobuf files stop at 2 GB, and
# torch's own saver switches at this size whatever it is told
EXPORT_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
UNAVAILABLE = "exports/unavailable.json"  # format -> why that graph cannot be made, written by the ensemble job


class Averaged(nn.Module):
    """[0, 1] images -> each member's normalisation and model -> mean of the softmax outputs."""

    def __init__(self, ensemble: EnsemblePredictor):
        super().__init__()
        self.models = nn.ModuleList(m.model for m in ensemble.members)
        self.register_buffer("mean", torch.tensor([list(m.backbone.mean) for m in ensemble.members])[:, :, None, None])
        self.register_buffer("std", torch.tensor([list(m.backbone.std) for m in ensemble.members])[:, :, None, None])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([model((images - self.mean[i]) / self.std[i]).softmax(1)
                            for i, model in enumerate(self.models)]).mean(0)


def graph(ensemble: EnsemblePredictor) -> Averaged:
    """The ensemble as one module in eval mode; ExportError when members resize differently."""
    shapes = {_geometry(m) for m in ensemble.members}
    if len(shapes) > 1:
        raise ExportError("One graph takes one input image, but these members resize images differently ("
                          + "; ".join(f"{m.run_dir.name}: {m.config.augment.image_size} px, {m.config.augment.resize}"
                                      for m in ensemble.members)
                          + "). Export the members one by one, or ensemble runs trained at one image size and resize.")
    return Averaged(ensemble).eval()


def torchscript(ensemble_dir: Path, images: Sequence[Source] | None = None) -> bytes:
    """The ensemble traced to TorchScript (see the module docstring for input and output), with classes.json,
    preprocessing.json and export.json as extra files; verified before returning, else ExportError."""
    ensemble, module, inputs, reference, origin = _prepared(ensemble_dir, images)
    try:
        with _quiet_jit(), torch.no_grad():
            traced = torch.jit.trace(module, inputs[:1], check_trace=False)  # checked below, loaded back
    except Exception as exc:
        raise ExportError(f"TorchScript export of the ensemble failed: {exc}") from exc
    files = _descriptions(ensemble, "torchscript")
    blob = _jit_bytes(traced, files)
    diff = _checked("torchscript", lambda: load_torchscript(blob)[0], module, inputs, reference)
    return _jit_bytes(traced, _verified(files, origin, len(inputs), diff))


def onnx(ensemble_dir: Path, folder: Path, images: Sequence[Source] | None = None,
         inline_limit: int = ONNX_INLINE_LIMIT) -> list[Path]:
    """Write folder/model.onnx (opset ONNX_OPSET, dynamic batch axis; metadata_props classes, preprocessing,
    export), plus folder/model.onnx.data when the weights pass inline_limit bytes (load model.onnx from its folder:
    onnxruntime finds the data file beside it). Verified with onnxruntime before anything lands in folder, else
    ExportError. Returns the files written."""
    import onnx as onnx_lib

    ensemble, module, inputs, reference, origin = _prepared(ensemble_dir, images)
    external = sum(t.numel() * t.element_size() for t in module.state_dict().values()) > inline_limit
    try:
        with _quiet_onnx(), torch.no_grad():
            program = torch.onnx.export(
                module, (inputs[:2],), dynamo=True, input_names=["images"], output_names=["probabilities"],
                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=ONNX_OPSET, verbose=False)
    except Exception as exc:  # the exporter raises many types; the user gets one clear reason
        raise ExportError(f"ONNX export of the ensemble failed: {exc}") from exc
    size, n = ensemble.members[0].config.augment.image_size, len(ensemble.classes)
    program.model.doc_string = (f"Fine-Tune Lab ensemble of {len(ensemble.members)} models: input 'images' float32 "
                                f"(batch, 3, {size}, {size}) in [0, 1], not normalised; output 'probabilities' "
                                f"(batch, {n}), the mean of the members' softmax; see metadata.")
    files = _descriptions(ensemble, "onnx")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=folder, prefix=".onnx-"))
    try:
        checked, final = work / "checked" / EXPORT_FILES["onnx"], work / "final" / EXPORT_FILES["onnx"]
        _save_onnx(program, checked, files, external)
        try:
            onnx_lib.checker.check_model(str(checked))
        except Exception as exc:
            raise ExportError(f"the ONNX export of the ensemble is not a valid ONNX model: {exc}") from exc
        diff = _checked("onnx", lambda: _onnx_runner(checked), module, inputs, reference)
        _save_onnx(program, final, _verified(files, origin, len(inputs), diff), external)
        written = sorted(final.parent.iterdir())
        for path in written:
            os.replace(path, folder / path.name)
        if not external:  # an earlier, external export's weights
            (folder / f"{EXPORT_FILES['onnx']}.data").unlink(missing_ok=True)
        return [folder / path.name for path in written]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build(ensemble_dir: Path, fmt: str, images: Sequence[Source] | None = None) -> list[Path]:
    """Make and check the export in `fmt` into ENSEMBLE_DIR/exports/ (EXPORT_FILES' names); the files written."""
    if fmt not in EXPORT_FILES:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FILES)}")
    folder = Path(ensemble_dir) / "exports"
    if fmt == "onnx":
        return onnx(ensemble_dir, folder, images)
    blob = torchscript(ensemble_dir, images)
    folder.mkdir(exist_ok=True)
    path = folder / EXPORT_FILES[fmt]
    with runs.replace_atomically(path) as tmp:
        tmp.write_bytes(blob)
    return [path]


def _prepared(ensemble_dir: Path, images: Sequence[Source] | None):
    """(ensemble, graph module, [0, 1] inputs (at least 3), EnsemblePredictor's probabilities on them, origin)."""
    ensemble = EnsemblePredictor.load(Path(ensemble_dir))
    module = graph(ensemble)
    aug = ensemble.members[0].config.augment
    unit = eval_transform(aug, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    sources = list(images) if images is not None else dataset_images(ensemble.members[0].run_dir)
    origin = "the given images" if images is not None else "images of the first member's dataset"
    inputs, seen = _read(sources, ensemble, unit, aug.resize_side())
    if not inputs:
        origin = "random noise images (none of the dataset's images could be read)"
        inputs, seen = _read(_noise(aug.image_size), ensemble, unit, aug.resize_side())
    while len(inputs) < 3:  # a batch of several is what shows a fixed batch axis
        inputs, seen = inputs + inputs, seen + seen
    return ensemble, module, torch.stack(inputs), ensemble.probabilities(seen), origin


def _read(sources: Sequence[Source], ensemble: EnsemblePredictor, unit, resize_side: int):
    """Each readable source twice: as the graph takes it ([0, 1]) and as the members take it (their own path)."""
    inputs, seen = [], []
    for source in sources:
        try:
            theirs, ours = ensemble.tensor(source), unit(decode_image(source, min_side=resize_side))
        except (ImageError, OSError):
            continue
        seen.append(theirs)
        inputs.append(ours.to(torch.float32))
    return inputs, seen


def _noise(size: int, n: int = VERIFY_IMAGES) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    session = onnx_session(str(path))  # from the path: onnxruntime finds model.onnx.data beside it
    return lambda x: torch.from_numpy(session.run(["probabilities"], {"images": x.numpy()})[0])


def _checked(fmt: str, load: Callable[[], Callable[[torch.Tensor], torch.Tensor]], module: nn.Module,
             inputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Max |probability difference| between the loaded-back export and EnsemblePredictor: export vs the module it
    was made from (batches of 1 and of all), plus that module vs EnsemblePredictor (a bound on the two combined)."""
    try:
        diff = verify(load(), module, inputs, batch_sizes=(1, None))
    except Exception as exc:
        raise ExportError(f"the {fmt} export of the ensemble does not run: {exc}") from exc
    with torch.no_grad():
        diff += float((module(inputs) - reference).abs().max())
    if not diff <= TOLERANCE:
        raise ExportError(f"the {fmt} export of the ensemble differs from the ensemble by {diff:.3g} (max |probability "
                          f"difference|; allowed {TOLERANCE:g}): not exported")
    return diff


def _geometry(member) -> tuple:
    aug = member.config.augment
    return aug.image_size, aug.resize, aug.resize_side()


def _descriptions(ensemble: EnsemblePredictor, fmt: str) -> dict[str, str]:
    first = ensemble.members[0].config.augment
    size, n = first.image_size, len(ensemble.classes)
    preprocessing = {"image_size": size, "resize": first.resize, "crop_pct": first.crop_pct,
                     "resize_side": first.resize_side(), "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                     "normalised_in_graph": [{"run": str(m.run_dir), "mean": list(m.backbone.mean),
                                              "std": list(m.backbone.std)} for m in ensemble.members]}
    about = {"format": fmt, "kind": "ensemble",
             "members": [{"run": str(m.run_dir), "backbone": m.backbone.name} for m in ensemble.members],
             "input": f"float32 (N, 3, {size}, {size}), RGB scaled to [0, 1]; each member normalises inside",
             "output": f"probabilities (N, {n}) in classes' order: the mean of the members' softmax; rows sum to 1"}
    return {"classes.json": json.dumps(ensemble.classes), "preprocessing.json": json.dumps(preprocessing),
            "export.json": json.dumps(about)}


def _verified(files: dict[str, str], origin: str, count: int, diff: float) -> dict[str, str]:
    about = json.loads(files["export.json"]) | {"verified": {
        "on": origin, "images": count, "batch_sizes": [1, count], "max_abs_prob_diff": diff, "tolerance": TOLERANCE}}
    return files | {"export.json": json.dumps(about)}


def _save_onnx(program, path: Path, files: dict[str, str], external: bool) -> None:
    path.parent.mkdir(parents=True)
    program.model.metadata_props.update({name.removesuffix(".json"): text for name, text in files.items()})
    program.save(str(path), external_data=external)
