"""The Data page through Streamlit's AppTest: uploads, the sample, bad input that never crashes the page."""
import io
import zipfile

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT, image_bytes, COLOURS

pytestmark = pytest.mark.integration


@pytest.fixture
def at(workspace, monkeypatch):
    st.cache_resource.clear()
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    app.run()
    app.switch_page("views/data.py")
    app.run()
    assert not app.exception
    return app


def uploader(at, kind: str):
    """The folder or zip uploader now on the page (a new one after each dataset loads: the old files are dropped)."""
    return at.file_uploader(key=f"{kind}-{at.session_state['uploads'] if 'uploads' in at.session_state else 0}")


def folder_upload(spec: dict[str, int], top="photos"):
    return [(f"{top}/{name}/{i}.png", image_bytes(COLOURS[c], seed=c * 100 + i), "image/png")
            for c, (name, n) in enumerate(spec.items()) for i in range(n)]


def button(at, label):
    return next(b for b in at.button if b.label == label)


def test_folder_upload_shows_the_report(at):
    uploader(at, "folder").set_value(folder_upload({"cat": 6, "dog": 6})).run()
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
    uploader(at, "zip").set_value([("set.zip", buf.getvalue(), "application/zip")]).run()
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


@pytest.mark.parametrize("kind, label, upload, message", [
    ("folder", "Use this folder", lambda: folder_upload({"only": 6}), "Only one class"),
    ("zip", "Use this zip", litter_zip, "no files"),
    ("zip", "Use this zip", lambda: [("bad.zip", b"PK\x03\x04 broken", "application/zip")], "damaged"),
])
def test_bad_uploads_say_what_to_do_and_the_page_stays_usable(at, kind, label, upload, message):
    uploader(at, kind).set_value(upload()).run()
    button(at, label).click().run()
    assert not at.exception
    assert any(message in e.value for e in at.error)
    uploader(at, "folder").set_value(folder_upload({"a": 5, "b": 5})).run()  # still usable
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


def zip_upload(entries: dict[str, bytes], name="set.zip", patch_sizes: int | None = None):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in entries.items():
            z.writestr(path, data)
    data = bytearray(buf.getvalue())
    if patch_sizes is not None:  # a zip bomb: the central directory declares huge uncompressed sizes
        at = 0
        while (at := data.find(b"PK\x01\x02", at)) != -1:
            data[at + 24:at + 28] = patch_sizes.to_bytes(4, "little")
            at += 4
    return [(name, bytes(data), "application/zip")]


def good(top="set", spec=None):
    return {path: data for path, data, _ in folder_upload(spec or {"ants": 5, "bees": 5}, top=top)}


@pytest.mark.parametrize("kind, upload, skipped", [
    ("folder", lambda: folder_upload({"ants": 5, "bees": 5}) + [("photos/ants/empty.png", b"", "image/png"),
                                                               ("photos/bees/cut.png", image_bytes()[:60], "image/png")],
     {"ants/empty.png": "empty", "bees/cut.png": "truncated"}),
    ("zip", lambda: zip_upload(good() | {"/etc/passwd.png": image_bytes(), "set/ants/notes.txt": b"hello"}),
     {"/etc/passwd.png": "outside", "ants/notes.txt": "not an image"}),
    ("folder", lambda: folder_upload({"ants": 5, "bees": 5}) + [("photos/bees/bomb.png", png_bomb(), "image/png")],
     {"bees/bomb.png": "too large"}),
])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's notice; the page refuses it
def test_bad_files_are_skipped_with_a_reason_through_the_page(at, kind, upload, skipped):
    uploader(at, kind).set_value(upload()).run()
    button(at, "Use this folder" if kind == "folder" else "Use this zip").click().run()
    assert not at.exception and not at.error
    assert {m.label: m.value for m in at.metric}["Classes"] == "2"
    table = at.dataframe[0].value
    reasons = dict(zip(table["file"], table["reason"]))
    for path, words in skipped.items():
        assert words in reasons[path], reasons


@pytest.mark.parametrize("upload, message", [
    (lambda: zip_upload({}), "no files"),
    (lambda: zip_upload(good(), patch_sizes=0xFFFF_FFF0), "limit"),  # 10 entries declaring 4 GB each
    (lambda: zip_upload({"set/ants/": b"", **{k: v for k, v in good().items() if "/ants/" not in k}}), "one class"),
])
def test_bad_zips_are_refused_through_the_page(at, upload, message):
    uploader(at, "zip").set_value(upload()).run()
    button(at, "Use this zip").click().run()
    assert not at.exception
    assert any(message in e.value.lower() for e in at.error), [e.value for e in at.error]


def test_names_with_spaces_and_accents_become_classes(at):
    uploader(at, "folder").set_value(folder_upload({"café au lait": 5, "ñandú 2": 5})).run()
    button(at, "Use this folder").click().run()
    assert not at.exception and not at.error
    assert any("**café au lait**" in m.value for m in at.markdown)
    assert any("**ñandú 2**" in m.value for m in at.markdown)


def png_bomb() -> bytes:
    """A complete 10,000 x 10,000 PNG in a few KB: decoding it would take 100 Mpx of memory."""
    from test_images import png_header_only
    return png_header_only(10_000, 10_000, rows=10_000)


def test_groups_set_on_the_data_page_keep_each_patient_in_one_split_for_every_seed(at):
    upload = [(f"scans/{name}/P{c}{p}_slice{i}.png", image_bytes(COLOURS[c], seed=c * 100 + p * 10 + i), "image/png")
              for c, name in enumerate(("benign", "tumour")) for p in range(5) for i in range(3)]
    uploader(at, "folder").set_value(upload).run()
    button(at, "Use this folder").click().run()
    at.radio(key="data-groups").set_value("pattern").run()
    assert not at.exception and not at.error
    assert any("10 groups (pattern" in c.value for c in at.caption)
    config = at.session_state["config"]
    assert config.data.group_pattern == r"(?P<group>P\d+)_"  # what a run started later splits by
    for seed in range(12):
        at.number_input(key="data-split-seed").set_value(seed).run()
        dataset = at.session_state["dataset"]
        split_of = {}
        for sample in dataset.samples:
            assert split_of.setdefault(sample.group, sample.split) == sample.split, (seed, sample.group)
        assert {"train", "val"} <= set(split_of.values())
