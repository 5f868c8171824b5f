"""A finished run as a classifier for new images: the model, classes and preprocessing all come from the run
folder, so predictions are made exactly as validation was (same decode, same resize, same normalisation).
"""
from __future__ import annotations

import csv
import io
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torchvision.transforms import v2

from core import settings
from core.models import backbones, inference
from core import runs
from core.data.augment import eval_transform
from core.config import RunConfig
from core.data.images import ImageError, Source, decode_image, is_image_name

if TYPE_CHECKING:
    from core.evaluate.ensemble import EnsemblePredictor


DEVICE = torch.device("cpu")  # Predict runs in the server's process, beside the exports and Grad-CAM
CALIBRATION = "calibration.json"  # the run's fitted temperature and where it was fitted (heldout.py writes it)


class Calibrated(nn.Module):
    """The run's network with its fitted temperature, logits / T: what Predict, the exports and ensembles run, so
    the probabilities a person reads are the calibrated ones everywhere. argmax is unchanged by construction."""

    def __init__(self, net: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.net = net
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images) / self.temperature


@dataclass
class Predictor:
    run_dir: Path
    config: RunConfig
    backbone: backbones.Backbone
    classes: list[str]
    model: Calibrated
    transform: v2.Compose
    engine: str = "auto"  # what runs the network for probabilities (core/models/inference.py)
    _runner: inference.Runner | None = field(default=None, repr=False, compare=False)

    @property
    def net(self) -> nn.Module:
        """The network itself (uncalibrated logits), for what needs its layers: Grad-CAM, re-evaluation."""
        return self.model.net

    @property
    def temperature(self) -> float:
        return float(self.model.temperature)

    @classmethod
    def load(cls, run_dir: Path, engine: str | None = None) -> "Predictor":
        """engine: the run's config's (auto unless it says otherwise) when None. Raises FileNotFoundError when the
        run has no weights yet, ValueError when they cannot be used."""
        run_dir = Path(run_dir)
        if not (run_dir / "model.safetensors").is_file():
            raise FileNotFoundError(f"{run_dir.name} has no weights yet: they are written when an epoch ends.")
        config = RunConfig.from_json((run_dir / "config.json").read_text())
        backbone = backbones.get(config.model.backbone)
        classes = runs.read_json(run_dir / "classes.json", [])
        model = backbones.build_model(backbone, len(classes), config.model.dropout)
        try:
            model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
        except (RuntimeError, OSError, SafetensorError) as exc:  # damaged or foreign weights: a sentence
            raise ValueError(f"The weights of {run_dir.name} cannot be loaded into its {backbone.name}: "
                             f"{str(exc).splitlines()[0]}") from exc
        inference.resolve(engine or config.engine, DEVICE)  # refuses an unknown engine now, not at the first image
        return cls(run_dir, config, backbone, classes, Calibrated(model, temperature_of(run_dir)).eval(),
                   eval_transform(config.augment, backbone.mean, backbone.std), engine or config.engine)

    def tensor(self, source: Source) -> torch.Tensor:
        """One image as the model sees it: (3, S, S), normalised. Raises ImageError for what is not an image."""
        return self.transform(decode_image(source, min_side=self.config.augment.resize_side()))

    @torch.no_grad()
    def probabilities(self, images: Sequence[torch.Tensor], batch_size: int = 32,
                      calibrated: bool = True) -> torch.Tensor:
        """(N, classes) softmax probabilities for preprocessed images, with the run's temperature unless told."""
        batches = [torch.stack(list(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
        if not batches:
            return torch.empty(0, len(self.classes))
        if self._runner is None:  # built (exported, checked against eager PyTorch) on the first images it sees
            self._runner = inference.runner(self.net, self.engine, DEVICE, batches[0][:2])
        logits = torch.cat([self._runner(b) for b in batches])
        return (logits / self.temperature if calibrated else logits).softmax(1)

    @property
    def engine_used(self) -> str:
        """The engine that runs (and why, when it is not the one asked for); "" before the first prediction."""
        return str(self._runner or "")

    def classify(self, items: Iterable[tuple[str, Source]], chunk: int = 256
                 ) -> tuple[list[str], list[tuple[str, str]], torch.Tensor]:
        """(names read, (name, reason) skipped, probabilities), a chunk at a time: a big folder never sits in
        memory as one tensor. Each chunk is decoded by a thread pool (Pillow releases the GIL), so decoding keeps
        up with the fast engines. What the Predict page and `python -m core predict` both run."""
        names: list[str] = []
        skipped: list[tuple[str, str]] = []
        parts: list[torch.Tensor] = []

        def read(item: tuple[str, Source]) -> torch.Tensor | str:
            try:
                return self.tensor(item[1])
            except (ImageError, OSError) as exc:
                return str(exc)

        items = iter(items)
        with ThreadPoolExecutor(settings.cpus(), thread_name_prefix="decode") as pool:
            while block := list(itertools.islice(items, chunk)):
                batch = []
                for (name, _), got in zip(block, pool.map(read, block)):
                    if isinstance(got, str):
                        skipped.append((name, got))
                    else:
                        batch.append(got)
                        names.append(name)
                if batch:
                    parts.append(self.probabilities(batch))
        return names, skipped, torch.cat(parts) if parts else torch.empty(0, len(self.classes))


def calibration_of(run_dir: Path) -> dict:
    """The calibration.json a run's predictions use: a cross-validation fold's is its CV folder's, fitted on every
    out-of-fold prediction (k times the images of the fold's own validation split); any other run's its own."""
    run_dir = Path(run_dir)
    if (run_dir.parent / runs.CV_FILE).is_file() and (cv := runs.read_json(run_dir.parent / CALIBRATION)):
        return cv
    return runs.read_json(run_dir / CALIBRATION) or {}


def temperature_of(run_dir: Path) -> float:
    return calibration_of(run_dir).get("temperature") or 1.0


def load_any(path: Path, engine: str | None = None) -> "Predictor | EnsemblePredictor":
    """What `predict` and the Predict page are pointed at: an ensemble folder (ensemble.json), a cross-validation
    folder (cv.json: its folds averaged) or a run folder. Both kinds answer the same calls. engine: every
    model's, in place of what their runs' configs say."""
    from core.evaluate.ensemble import EnsemblePredictor  # ensemble.py builds on Predictor

    path = Path(path)
    if (path / "ensemble.json").is_file():
        model = EnsemblePredictor.load(path)
    elif (path / runs.CV_FILE).is_file():
        model = EnsemblePredictor.from_runs([path])
    else:
        model = Predictor.load(path)
    for member in getattr(model, "members", [model]):
        member.engine = engine or member.engine
        inference.resolve(member.engine, DEVICE)
    return model


def top_k(probs: torch.Tensor, classes: Sequence[str], k: int = 3) -> list[list[tuple[str, float]]]:
    """Per image, the k most likely classes with their probabilities, most likely first."""
    values, indices = probs.topk(min(k, len(classes)), dim=1)
    return [[(classes[i], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values.tolist(), indices.tolist())]


def predictions_csv(names: Sequence[str], probs: torch.Tensor, classes: Sequence[str],
                    uncertain_below: float = 0.0) -> str:
    """file, top-1, confidence, uncertain (confidence below the threshold: for a person to check), then one
    probability column per class: the table a spreadsheet opens."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "top1", "confidence", "uncertain", *classes])
    for name, p in zip(names, probs.tolist()):
        best = max(range(len(p)), key=p.__getitem__)
        writer.writerow([name, classes[best], f"{p[best]:.6f}", int(p[best] < uncertain_below),
                         *(f"{x:.6f}" for x in p)])
    return buf.getvalue()


def uncertain_below(model: "Predictor | EnsemblePredictor") -> float:
    """The default confidence under which a prediction is flagged uncertain, from the validation data (heldout.py
    writes it to calibration.json); an ensemble takes its members' mean; 0.5 for a run evaluated without one."""
    members = getattr(model, "members", [model])
    found = [v for m in members if (v := calibration_of(m.run_dir).get("uncertain_below"))]
    return sum(found) / len(found) if found else 0.5


def image_files(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders searched recursively for images (hidden files left out), in a stable order."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name)
                          and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            out.append(path)
    return out
