"""The model package: its README's plain code, run as a user would, predicts what the app's model predicts."""
import contextlib
import io
import os
import re
import zipfile

import pytest
import torch

from conftest import make_dataset
from core import backbones
from core.augment import eval_transform
from core.config import AugmentConfig
from core.engine import fit
from core.export import package
from core.images import decode_image
from test_engine import small_config


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
    assert len(code.strip().splitlines()) <= 11
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
        assert out.getvalue().strip() == ours
