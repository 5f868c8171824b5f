"""What leaves the app: weights a plain library model loads, packaged with everything needed to use them.

The head may sit behind a Dropout during training (`fc.1.weight`); at inference dropout does nothing, so the
exported state names the head as the library's own constructor does (`fc.weight`): `resnet18(num_classes=N)`
or `timm.create_model(..., num_classes=N)` then loads it with no code from this app.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from . import backbones, runs

PACKAGE_FILES = ("classes.json", "preprocessing.json", "config.json", "metrics.jsonl", "confusion_matrix.json")


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
Files: `model.safetensors` (weights), `classes.json` (output order), `preprocessing.json` (input size,
resize, mean, std), `config.json` (the full training config), `metrics.jsonl`, `confusion_matrix.json`.

```python
import json, torch
{imports}
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms import v2
classes, pre = json.load(open("classes.json")), json.load(open("preprocessing.json"))
model = {build}
model.load_state_dict(load_file("model.safetensors")); model.eval()
tf = v2.Compose([v2.Resize(round(pre["image_size"] / pre["crop_pct"])), v2.CenterCrop(pre["image_size"]), v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre["mean"], pre["std"])])
print(classes[model(tf(Image.open("photo.jpg").convert("RGB"))[None]).argmax(1).item()])
```

That snippet is for the default `crop` resize; `preprocessing.json` says which one this model used
(`squash`: `v2.Resize((size, size))`; `pad`: fit the longer side, then pad to a square with black).
"""


def weights_bytes(run_dir: Path) -> bytes:
    config = runs.read_json(run_dir / "config.json", {})
    backbone = backbones.get(config["model"]["backbone"])
    return save(plain_state(load_file(str(run_dir / "model.safetensors")), backbone))


def package(run_dir: Path) -> bytes:
    """The model package zip, built when asked for (a download button calls this on click)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.safetensors", weights_bytes(run_dir))
        for name in PACKAGE_FILES:
            if (run_dir / name).is_file():
                z.write(run_dir / name, name)
        z.writestr("README.md", readme(run_dir))
    return buf.getvalue()


def has_weights(run_dir: Path) -> bool:
    return (run_dir / "model.safetensors").is_file() and (run_dir / "config.json").is_file()

