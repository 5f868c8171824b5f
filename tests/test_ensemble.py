"""Ensembles: real tiny runs (resnet18 and efficientnet_lite0, whose normalisations differ) averaged, scored on the
held-out images they share, exported as one graph and checked against the app's own averaging."""
import io
import json
import os
import shutil
import warnings

import onnxruntime
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest
from PIL import Image
from torchvision.transforms import v2

from conftest import ROOT, make_dataset
from core import runs
from core.deploy import ensemble_export
from core.deploy.export import ExportError
from core.evaluate.ensemble import EnsembleError, EnsemblePredictor, create, evaluate, members_of
from core.evaluate.predict import Predictor, image_files, load_any
from core.train.engine import fit
from test_engine import small_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two runs trained once for the module on one dataset and split (so they share val and test images)."""
    root = tmp_path_factory.mktemp("ensemble")
    data = make_dataset(root / "data", {"red": 6, "blue": 6, "green": 6}, size=(24, 24))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTLAB_HOME", str(root / "workspace"))
        for backbone in ("resnet18", "efficientnet_lite0"):
            config = small_config(data, epochs=1)
            config.model.backbone = backbone
            config.data.test_ratio = 0.25
            fit(config, root / "workspace" / "runs" / backbone)
        yield root, data


def copy_run(src, dst, **augment):
    """A copy of a run folder (weights hard-linked), optionally with other preprocessing in its config."""
    shutil.copytree(src, dst, copy_function=link_weights)
    if augment:
        config = json.loads((dst / "config.json").read_text())
        config["augment"].update(augment)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def link_weights(src: str, dst: str) -> None:
    (os.link if src.endswith(".safetensors") else shutil.copy2)(src, dst)


def keep_rows(run_dir, keep):
    runs.rewrite_jsonl(run_dir / "predictions.jsonl", [r for r in runs.read_jsonl(run_dir / "predictions.jsonl")
                                                       if keep(r)])


def test_ensemble_probabilities_are_the_mean_of_its_members(made, tmp_path):
    root, data = made
    resnet, lite = root / "workspace/runs/resnet18", root / "workspace/runs/efficientnet_lite0"
    padded = copy_run(resnet, tmp_path / "padded", resize="pad")  # same weights, other preprocessing
    spec = create([resnet, lite, padded], tmp_path / "ens")
    assert spec["members"] == [str(resnet.resolve()), str(lite.resolve()), str(padded.resolve())]
    assert spec["classes"] == ["blue", "green", "red"]
    assert [p["mean"][0] for p in spec["preprocessing"]] == [0.485, 0.5, 0.485]
    ensemble = EnsemblePredictor.load(tmp_path / "ens")
    files = image_files([data])[::2]
    items = [(f.name, f) for f in files] + [("notes.txt", b"not an image")]
    names, skipped, probs = ensemble.classify(items)
    assert names == [f.name for f in files] and [s[0] for s in skipped] == ["notes.txt"]
    each = [Predictor.load(run).classify(items)[2] for run in (resnet, lite, padded)]
    assert torch.allclose(probs, torch.stack(each).mean(0), atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(len(files)), atol=1e-5)
    # The members really differ, each seeing the image its own way, so the mean is not any one of them.
    assert all((p - probs).abs().max() > 1e-4 for p in each)
    assert not torch.equal(*ensemble.tensor(files[0])[:2]) and not torch.equal(*ensemble.tensor(files[0])[::2])


def test_evaluate_scores_ensemble_and_members_on_the_images_all_hold_out(made, tmp_path):
    root, _ = made
    members = [root / "workspace/runs/resnet18", root / "workspace/runs/efficientnet_lite0"]
    create(members, tmp_path / "ens")
    results = evaluate(tmp_path / "ens")
    rows = runs.read_jsonl(tmp_path / "ens/predictions.jsonl")
    own = [runs.read_json(m / "results.json") for m in members]
    assert {r["split"] for r in rows} == {"val", "test"}
    assert results["shared_images"] == len(rows) == own[0]["val"]["images"] + own[0]["test"]["images"]
    predictors = [Predictor.load(m) for m in members]
    expected = torch.stack([p.probabilities([p.tensor(f"{results['data_dir']}/{r['path']}") for r in rows])
                            for p in predictors]).mean(0)
    assert torch.allclose(torch.tensor([r["probs"] for r in rows]), expected, atol=1e-5)
    for split in ("val", "test"):
        mine = [r for r in rows if r["split"] == split]
        right = sum(max(range(3), key=r["probs"].__getitem__) == r["label"] for r in mine)
        assert results[split]["acc"] == pytest.approx(right / len(mine))
        # Each member on the same images scores what its own run folder says (here every held-out image is shared).
        for scored, theirs in zip(results[split]["members"], own):
            assert scored["images"] == theirs[split]["images"] == len(mine)
            assert scored["acc"] == pytest.approx(theirs[split]["acc"])
            assert scored["macro_f1"] == pytest.approx(theirs[split]["macro_f1"])
            assert scored["ece"] == pytest.approx(theirs[split]["calibrated"]["ece"], abs=1e-5)  # its temperature
    assert runs.read_json(tmp_path / "ens/results.json")["test"]["acc"] == results["test"]["acc"]


def test_a_cv_folder_stands_for_its_folds_and_is_scored_on_the_shared_test_split(made, tmp_path):
    root, data = made
    resnet, lite = root / "workspace/runs/resnet18", root / "workspace/runs/efficientnet_lite0"
    cv = tmp_path / "cv"
    cv.mkdir()
    (cv / "cv.json").write_text(json.dumps({"folds": 3}))
    for k, src in ((1, resnet), (2, lite), (10, resnet)):
        copy_run(src, cv / f"fold-{k}")
    val = [r["path"] for r in runs.read_jsonl(resnet / "predictions.jsonl") if r["split"] == "val"]
    keep_rows(cv / "fold-1", lambda r: r["split"] == "test" or r["path"] in val[::2])  # each fold validates on
    keep_rows(cv / "fold-2", lambda r: r["split"] == "test" or r["path"] in val[1::2])  # its own images
    folds = [(cv / f"fold-{k}").resolve() for k in (1, 2, 10)]
    assert members_of([cv]) == folds  # by fold number, not by name
    assert members_of([cv, cv / "fold-2", resnet]) == folds + [resnet.resolve()]
    assert isinstance(load_any(cv), EnsemblePredictor) and len(load_any(cv).members) == 3
    create([cv], tmp_path / "ens")
    results = evaluate(tmp_path / "ens")
    assert "val" not in results and results["test"]["images"] == results["shared_images"] > 0
    assert [m["name"] for m in results["test"]["members"]] == ["cv/fold-1", "cv/fold-2", "cv/fold-10"]
    with pytest.raises(EnsembleError, match="neither a run folder"):
        members_of([data])
    (cv / "fold-2" / "model.safetensors").unlink()
    with pytest.raises(EnsembleError, match="cv/fold-2 has no weights yet"):
        members_of([cv])


def test_no_shared_held_out_image_is_said_not_crashed(made, tmp_path):
    root, _ = made
    a = copy_run(root / "workspace/runs/resnet18", tmp_path / "a")
    b = copy_run(root / "workspace/runs/efficientnet_lite0", tmp_path / "b")
    keep_rows(a, lambda r: r["split"] == "val")
    keep_rows(b, lambda r: r["split"] == "test")
    create([a, b], tmp_path / "ens")
    results = evaluate(tmp_path / "ens")
    assert results["shared_images"] == 0 and "val" not in results and "test" not in results
    assert "No held-out image is shared by all members" in results["note"]
    assert runs.read_jsonl(tmp_path / "ens/predictions.jsonl") == []
    (b / "predictions.jsonl").unlink()
    assert "b has no held-out predictions" in evaluate(tmp_path / "ens")["note"]
    create([b, a], tmp_path / "ens")  # the folder reused: the earlier results are not passed off as this one's
    assert not (tmp_path / "ens/results.json").exists()


def test_models_with_other_classes_are_refused(made, tmp_path):
    root, _ = made
    other = copy_run(root / "workspace/runs/efficientnet_lite0", tmp_path / "other")
    runs.write_json(other / "classes.json", ["blue", "green", "yellow"])
    with pytest.raises(EnsembleError, match=r"resnet18: blue, green, red; other: blue, green, yellow"):
        create([root / "workspace/runs/resnet18", other], tmp_path / "ens")
    assert not (tmp_path / "ens").exists()
    with pytest.raises(EnsembleError, match="same classes"):
        EnsemblePredictor.from_runs([root / "workspace/runs/resnet18", other])
    with pytest.raises(EnsembleError, match="at least two models"):
        create([other], tmp_path / "ens")


def test_load_any_gives_a_run_or_an_ensemble(made, tmp_path):
    root, _ = made
    resnet = root / "workspace/runs/resnet18"
    create([resnet, root / "workspace/runs/efficientnet_lite0"], tmp_path / "ens")
    assert type(load_any(resnet)) is Predictor
    assert type(load_any(tmp_path / "ens")) is EnsemblePredictor
    with pytest.raises(FileNotFoundError):
        load_any(tmp_path)


# One graph for the ensemble: loaded back with plain torch.jit / onnxruntime and fed as preprocessing.json says,
# with plain torchvision, on real images of the dataset.

@pytest.fixture(scope="module")
def ensemble_dir(made):
    root, _ = made
    folder = root / "workspace/ensembles/pair"
    create([root / "workspace/runs/resnet18", root / "workspace/runs/efficientnet_lite0"], folder)
    evaluate(folder)
    return folder


def graph_input(pre: dict, files) -> torch.Tensor:
    tf = v2.Compose([v2.ToImage(), v2.Resize(pre["resize_side"]), v2.CenterCrop(pre["image_size"]),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre["mean"], pre["std"])])
    return torch.stack([tf(Image.open(f).convert("RGB")) for f in files])


def expected(ensemble_dir, files) -> torch.Tensor:
    ensemble = EnsemblePredictor.load(ensemble_dir)
    return ensemble.probabilities([ensemble.tensor(f) for f in files])


def test_torchscript_graph_reproduces_the_ensemble(made, ensemble_dir):
    _, data = made
    blob = ensemble_export.torchscript(ensemble_dir)
    files = {"classes.json": "", "preprocessing.json": "", "export.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(io.BytesIO(blob), _extra_files=files)
    meta = {k: json.loads(v) for k, v in files.items()}
    assert meta["classes.json"] == ["blue", "green", "red"] and meta["preprocessing.json"]["std"] == [1.0, 1.0, 1.0]
    verified = meta["export.json"]["verified"]
    assert verified["on"] == "images of the first member's dataset" and verified["max_abs_prob_diff"] <= 1e-4
    images = image_files([data])[1::3]
    with torch.no_grad():
        out = module(graph_input(meta["preprocessing.json"], images))
        one = module(graph_input(meta["preprocessing.json"], images[:1]))
    assert torch.allclose(out, expected(ensemble_dir, images), atol=1e-4)
    assert torch.allclose(one, out[:1], atol=1e-5)
    assert torch.allclose(out.sum(1), torch.ones(len(images)), atol=1e-5)


@pytest.fixture(scope="module")
def twin_dir(made):
    """resnet18 beside a copy of itself: where the weights land is what is tested with it, and one family exports
    in about half the time of two."""
    root, _ = made
    folder = root / "workspace/ensembles/twin"
    create([root / "workspace/runs/resnet18", copy_run(root / "workspace/runs/resnet18", root / "twin")], folder)
    return folder


@pytest.mark.parametrize("members, inline_limit, written", [
    ("ensemble_dir", ensemble_export.ONNX_INLINE_LIMIT, ["model.onnx"]),  # two families, each normalising itself
    ("twin_dir", 0, ["model.onnx", "model.onnx.data"])])
def test_onnx_graph_reproduces_the_ensemble(made, request, tmp_path, members, inline_limit, written):
    _, data = made
    ensemble_dir = request.getfixturevalue(members)
    paths = ensemble_export.onnx(ensemble_dir, tmp_path / "out", inline_limit=inline_limit)
    assert sorted(p.name for p in paths) == sorted(os.listdir(tmp_path / "out")) == written
    if len(written) == 2:  # the weights live beside the graph
        sizes = [(tmp_path / "out" / name).stat().st_size for name in written]
        assert sizes[0] < 1_000_000 < sizes[1]
    session = onnxruntime.InferenceSession(str(tmp_path / "out/model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert meta["classes"] == ["blue", "green", "red"]
    images = image_files([data])[1::3]
    x = graph_input(meta["preprocessing"], images)
    out = torch.from_numpy(session.run(["probabilities"], {"images": x.numpy()})[0])
    assert torch.allclose(out, expected(ensemble_dir, images), atol=1e-4)
    assert torch.allclose(out.sum(1), torch.ones(len(images)), atol=1e-5)


def test_a_graph_is_refused_when_members_resize_differently(made, tmp_path):
    root, _ = made
    padded = copy_run(root / "workspace/runs/resnet18", tmp_path / "padded", resize="pad")
    create([root / "workspace/runs/resnet18", padded], tmp_path / "ens")
    with pytest.raises(ExportError, match="resize images differently"):
        ensemble_export.torchscript(tmp_path / "ens")
    # the ensemble itself still predicts, each member with its own preprocessing
    assert len(EnsemblePredictor.load(tmp_path / "ens").classify([("x", image_files([made[1]])[0])])[0]) == 1


def test_predict_page_offers_an_ensemble(made, ensemble_dir, monkeypatch):
    root, _ = made
    monkeypatch.setenv("FTLAB_HOME", str(root / "workspace"))
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("views/predict.py").run()
    assert not at.exception, at.exception
    at.radio(key="predict-kind").set_value("An ensemble").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="predict-ensemble").value == "pair"
    assert "the mean of 2 models' probabilities" in " ".join(c.value for c in at.caption)
