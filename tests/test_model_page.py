"""Model page through AppTest: trainable parameters with the dataset's own head, and importing a weights file."""
import hashlib
import io

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from conftest import ROOT, make_dataset
from core.data.sources import ingest
from core.models import backbones

pytestmark = pytest.mark.integration


@pytest.fixture
def app(workspace, tmp_path):
    st.cache_resource.clear()
    key = ingest(make_dataset(tmp_path / "data", {"red": 6, "blue": 6, "green": 6}), workspace).key

    def open_page(data: bool = True, strategy: str = "full") -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        if data:
            at.query_params["data"] = key
        at.run()
        config = at.session_state["config"]
        config.model.backbone, config.model.weights, config.model.strategy = "resnet18", "random", strategy
        at.switch_page("views/model.py").run()
        assert not at.exception, at.exception
        return at
    return open_page


def trainable(at) -> int:
    return int(next(m for m in at.metric if m.label == "Trainable parameters").value.replace(",", ""))


def parameters(num_classes: int) -> int:
    return sum(p.numel() for p in backbones.build_model(backbones.get("resnet18"), num_classes).parameters())


def test_trainable_parameters_count_the_head_for_the_datasets_classes(app):
    at = app()
    at.radio[0].set_value("linear-probe").run()
    probe = trainable(at)
    at.radio[0].set_value("full").run()
    assert probe == 512 * 3 + 3  # resnet18's new head for red, blue and green
    assert trainable(at) == parameters(3)
    assert at.session_state["config"].model.strategy == "full"
    assert any("3 outputs, one per class" in c.value for c in at.caption)


def test_without_a_dataset_the_page_says_what_the_head_assumes(app):
    at = app(data=False)
    assert trainable(at) == parameters(2)
    assert any("No dataset is loaded yet: the head's size assumes 2 classes." in c.value for c in at.caption)


def state_file(num_classes: int = 1000) -> bytes:
    buf = io.BytesIO()
    torch.save(backbones.build_model(backbones.get("resnet18"), num_classes).state_dict(), buf)
    return buf.getvalue()


def test_an_imported_weights_file_is_kept_under_its_hash(app, workspace):
    at = app()
    data = state_file()
    at.file_uploader[0].set_value(("mine.pth", data, "application/octet-stream")).run()
    next(b for b in at.button if b.label == "Check and use it").click().run()
    assert not at.exception and not at.error, at.error
    target = workspace / "imported" / f"{hashlib.sha256(data).hexdigest()[:16]}.pth"
    assert target.read_bytes() == data
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no partial file left behind
    assert at.session_state["config"].model.weights == str(target)

    other = state_file()[:-100]  # a truncated file: refused, and nothing of it stays
    at.file_uploader[0].set_value(("broken.pth", other, "application/octet-stream")).run()
    next(b for b in at.button if b.label == "Check and use it").click().run()
    assert at.error
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_auto_strategy_says_it_trains_everything_on_random_weights(app):
    at = app(strategy="auto")
    assert at.radio(key="model-what-to-fine-tune").value == "auto"
    assert any("full fine-tuning" in w.value for w in at.warning)
    table = at.dataframe[1].value
    assert (table["trainable parameters"] == table["parameters"]).all()
