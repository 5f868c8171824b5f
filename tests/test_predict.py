"""Predictions from a run folder: the run's own preprocessing, numbers equal to the training loop's, the CLI."""
import csv
import io
import json

import pytest
import torch

from conftest import COLOURS, image_bytes, make_dataset
from core.evaluate import heldout
from core.deploy import model_card
from core import runs
from core.train.engine import fit
from core.data.images import ImageError
from core.evaluate import temperature
from core.evaluate.predict import Predictor, image_files, predictions_csv, top_k
from test_cli import cli
from test_engine import small_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = tmp_path_factory.mktemp("predict")
    data = make_dataset(home / "data", {"red": 8, "blue": 8, "green": 8}, size=(40, 30))
    config = small_config(data, epochs=2)
    config.augment.resize = "pad"  # a non-default preprocessing, which a prediction must repeat
    config.data.test_ratio = 0.25
    fit(config, home / "run")
    return home / "run"


def test_predictor_repeats_validation_exactly(run):
    """The loop's probabilities (written when training ended) equal the Predictor's on the same files."""
    results, rows = heldout.read(run)
    predictor = Predictor.load(run)
    assert predictor.config.augment.resize == "pad" and predictor.classes == ["blue", "green", "red"]  # sorted by name
    images = [predictor.tensor(f"{results['data_dir']}/{r['path']}") for r in rows]
    written = torch.tensor([r["probs"] for r in rows])  # as the network gave them, before the temperature
    assert torch.allclose(predictor.probabilities(images, calibrated=False), written, atol=1e-5)
    assert predictor.temperature == pytest.approx(results["calibration"]["temperature"])
    saved = (run / "calibration.json").read_text()
    try:  # a temperature that does something (this small run's validation split may not call for one)
        (run / "calibration.json").write_text(json.dumps(json.loads(saved) | {"temperature": 2.5}))
        predictor = Predictor.load(run)
        assert predictor.temperature == 2.5
        assert torch.allclose(predictor.probabilities(images), temperature.scale(written, 2.5), atol=1e-5)
    finally:
        (run / "calibration.json").write_text(saved)
    assert {r["split"] for r in rows} == {"val", "test"}
    assert results["test"]["images"] == sum(r["split"] == "test" for r in rows)


def test_predict_runs_on_the_fast_engine_and_agrees_with_eager_pytorch(run):
    fast, eager = Predictor.load(run), Predictor.load(run, engine="eager")
    images = [fast.tensor(image_bytes(c, size=(40, 30), seed=i)) for i, c in enumerate(COLOURS * 8)]  # 2 batches
    assert torch.allclose(fast.probabilities(images), eager.probabilities(images), atol=1e-4)
    assert (fast.engine_used, eager.engine_used) == ("onnxruntime", "eager")
    with torch.no_grad():  # the network itself, as the exports and Grad-CAM use it
        assert torch.allclose(eager.probabilities(images), eager.model(torch.stack(images)).softmax(1), atol=1e-5)


def test_predictor_refuses_a_run_without_weights_and_a_file_that_is_not_an_image(run, tmp_path):
    (tmp_path / "config.json").write_text((run / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights yet"):
        Predictor.load(tmp_path)
    with pytest.raises(ImageError):
        Predictor.load(run).tensor(b"this is text")


def test_top_k_and_csv():
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    assert top_k(probs, ["a", "b", "c"], 2) == [[("b", pytest.approx(0.7)), ("c", pytest.approx(0.2))],
                                                [("a", pytest.approx(0.5)), ("c", pytest.approx(0.3))]]
    assert len(top_k(probs, ["a", "b", "c"], 10)[0]) == 3
    rows = list(csv.reader(io.StringIO(predictions_csv(["x.png", "y.png"], probs, ["a", "b", "c"], 0.6))))
    assert rows == [["file", "top1", "confidence", "uncertain", "a", "b", "c"],
                    ["x.png", "b", "0.700000", "0", "0.100000", "0.700000", "0.200000"],
                    ["y.png", "a", "0.500000", "1", "0.500000", "0.200000", "0.300000"]]


def test_image_files_walks_folders_and_skips_hidden(tmp_path):
    (tmp_path / "a" / ".hidden").mkdir(parents=True)
    for name in ("a/2.png", "a/1.JPG", "a/.hidden/3.png", "a/notes.txt", "b.tif"):
        (tmp_path / name).write_bytes(b"x")
    assert image_files([tmp_path / "a", tmp_path / "b.tif"]) == [tmp_path / "a/1.JPG", tmp_path / "a/2.png",
                                                                 tmp_path / "b.tif"]


def test_mistakes_and_cells_from_hand_made_predictions():
    rows = [{"split": "val", "path": "1", "label": 0, "probs": [0.2, 0.8]},  # wrong, 0.8
            {"split": "val", "path": "2", "label": 0, "probs": [0.4, 0.6]},  # wrong, 0.6
            {"split": "val", "path": "3", "label": 1, "probs": [0.1, 0.9]},  # right
            {"split": "test", "path": "4", "label": 1, "probs": [0.95, 0.05]}]  # wrong, but test
    assert [r["path"] for r in heldout.mistakes(rows)] == ["1", "2"]
    assert [r["path"] for r in heldout.mistakes(rows, "test")] == ["4"]
    assert [r["path"] for r in heldout.cell(rows, 0, 1)] == ["1", "2"]
    assert [r["path"] for r in heldout.cell(rows, 1, 1)] == ["3"] and heldout.cell(rows, 1, 0) == []


def test_model_card_names_the_data_the_training_and_the_weaknesses(run):
    text = model_card.card(run)
    config = runs.read_json(run / "config.json")
    splits = config["provenance"]["dataset"]["splits"]
    assert f"| red | {splits['train']['red']} | {splits['val']['red']} | {splits['test']['red']} |" in text
    assert "random initialisation" in text and "resnet18" in text and "## Intended use" in text
    results, _ = heldout.read(run)
    assert f"accuracy {results['val']['acc']:.1%}" in text
    assert model_card.confusions([[5, 3, 0], [0, 4, 0], [1, 1, 8]], ["a", "b", "c"]) == [
        ("a", "b", 3, 3 / 8), ("c", "a", 1, 0.1), ("c", "b", 1, 0.1)]


def test_cli_predict_evaluate_and_export_card(run, tmp_path):
    image = tmp_path / "red.png"
    image.write_bytes(image_bytes(COLOURS[0], size=(40, 30), seed=99))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    out = cli("predict", run, image, tmp_path / "bad.png", "--csv", tmp_path / "p.csv", "--top-k", "2", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "skipped" in out.stderr and "bad.png" in out.stderr
    assert "engine: onnxruntime" in out.stderr
    predictor = Predictor.load(run)
    expected = predictor.probabilities([predictor.tensor(image)])
    threshold = json.loads((run / "calibration.json").read_text())["uncertain_below"]  # from the validation data
    assert (tmp_path / "p.csv").read_text() == predictions_csv([str(image)], expected, predictor.classes, threshold)
    assert out.stdout.startswith(f"{image}\t{top_k(expected, predictor.classes, 1)[0][0][0]} ")
    assert out.stdout.strip().endswith("uncertain") == (expected.max().item() < threshold)
    sure = cli("predict", run, image, "--uncertain-below", "1.01", "--engine", "eager", home=tmp_path)  # nothing is
    assert sure.returncode == 0 and sure.stdout.strip().endswith("\tuncertain")  # that sure
    assert "engine: eager" in sure.stderr and sure.stdout.split("\t")[1] == out.stdout.split("\t")[1]
    before = json.loads((run / "results.json").read_text())
    out = cli("evaluate", run, home=tmp_path)
    assert out.returncode == 0 and "val:" in out.stdout and "test:" in out.stdout
    assert json.loads((run / "results.json").read_text())["val"]["confusion"] == before["val"]["confusion"]
    out = cli("export", run, "--format", "card", "--out", tmp_path / "card.md", home=tmp_path)
    assert out.returncode == 0 and (tmp_path / "card.md").read_text() == model_card.card(run)
    out = cli("predict", tmp_path, image, home=tmp_path)
    assert out.returncode == 2 and "not a finished run folder" in out.stderr


def test_cli_exports_a_checked_torchscript(run, tmp_path):
    out = cli("export", run, "--format", "torchscript", "--out", tmp_path / "m.pt", home=tmp_path)
    assert out.returncode == 0, out.stderr
    predictor = Predictor.load(run)
    image = predictor.tensor(image_bytes(COLOURS[1], size=(40, 30), seed=5))[None]
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "m.pt"))(image), predictor.model(image), atol=1e-4)
