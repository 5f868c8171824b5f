"""The Data page through Streamlit's AppTest: uploads, the sample, bad input that never crashes the page."""
import io
import zipfile

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT, image_bytes, COLOURS


@pytest.fixture
def at(workspace, monkeypatch):
    st.cache_resource.clear()
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    app.run()
    app.switch_page("pages/data.py")
    app.run()
    assert not app.exception
    return app


def folder_upload(spec: dict[str, int], top="photos"):
    return [(f"{top}/{name}/{i}.png", image_bytes(COLOURS[c], seed=c * 100 + i), "image/png")
            for c, (name, n) in enumerate(spec.items()) for i in range(n)]


def button(at, label):
    return next(b for b in at.button if b.label == label)


def test_folder_upload_shows_the_report(at):
    at.file_uploader(key="folder").set_value(folder_upload({"cat": 6, "dog": 6})).run()
    button(at, "Use this folder").click().run()
    assert not at.exception and not at.error
    assert at.query_params["data"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "12" and metrics["Classes"] == "2" and metrics["Skipped"] == "0"
    assert any("**cat**" in m.value for m in at.markdown)


def test_zip_upload_with_mess_lists_what_was_skipped(at):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data, _ in folder_upload({"ants": 6, "bees": 6}, top="set"):
            z.writestr(name, data)
        z.writestr("set/ants/notes.jpg", b"this is text")
        z.writestr("../../evil.png", image_bytes())
    at.file_uploader(key="zip").set_value([("set.zip", buf.getvalue(), "application/zip")]).run()
    button(at, "Use this zip").click().run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Skipped"] == "2"
    table = at.dataframe[0].value
    reasons = dict(zip(table["file"], table["reason"]))
    assert "not an image" in reasons["ants/notes.jpg"] and "outside" in reasons["../../evil.png"]


def litter_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x/.DS_Store", b"junk")
        z.writestr("__MACOSX/x/._1.png", b"junk")
    return [("litter.zip", buf.getvalue(), "application/zip")]


@pytest.mark.parametrize("uploader, label, upload, message", [
    ("folder", "Use this folder", lambda: folder_upload({"only": 6}), "Only one class"),
    ("zip", "Use this zip", litter_zip, "no files"),
    ("zip", "Use this zip", lambda: [("bad.zip", b"PK\x03\x04 broken", "application/zip")], "damaged"),
])
def test_bad_uploads_say_what_to_do_and_the_page_stays_usable(at, uploader, label, upload, message):
    at.file_uploader(key=uploader).set_value(upload()).run()
    button(at, label).click().run()
    assert not at.exception
    assert any(message in e.value for e in at.error)
    at.file_uploader(key="folder").set_value(folder_upload({"a": 5, "b": 5})).run()  # still usable
    button(at, "Use this folder").click().run()
    assert not at.exception and {m.label: m.value for m in at.metric}["Classes"] == "2"


def test_server_folder_outside_the_root_is_refused(at):
    at.text_input[0].set_value("../../etc").run()
    next(b for b in at.button if b.key == "server-go").click().run()
    assert not at.exception and any("outside" in e.value for e in at.error)


def test_sample_dataset_loads_with_one_click(at):
    button(at, "Load the sample dataset").click().run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "3" and int(metrics["Images"]) >= 90
