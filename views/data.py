"""Data: bring images in (folder, zip, server folder or the sample) and see what the app made of them."""
import os
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from ui import charts
from core.config import workspace_root
from core.data.images import IMAGE_EXTENSIONS, ImageError, decode_image, to_pil
from core.data.sample_data import describe, write_sample
from core.data.sources import DataError, server_folder
from core.data.validation import load_dataset, open_dataset
from ui.widgets import set_url

SERVER_ROOT = Path(os.environ.get("FTLAB_DATA_ROOT", workspace_root() / "server-data"))
THUMBS_PER_CLASS = 8

st.title("Data")
st.write("One subfolder per class (`cats/1.jpg`, `dogs/2.png`), or `train/`, `val/` (and `test/`) folders "
         "each holding class subfolders. Every image is checked; nothing you upload leaves this machine.")


def load(source, what: str) -> None:
    """Copy, check, remember in the URL; every problem becomes a message, never a crash."""
    bar = st.progress(0.0, text=f"Checking {what}...")
    try:
        dataset = load_dataset(source, workspace_root(), st.session_state.config.data,
                               progress=lambda done, total: bar.progress(done / total, text=f"Checked {done}/{total} files"))
    except (DataError, ImageError) as exc:
        bar.empty()
        st.error(str(exc))
        return
    bar.empty()
    set_url("data", dataset.key)
    st.rerun()  # the sidebar, drawn before this page, shows the new dataset too


folder_tab, zip_tab, server_tab, sample_tab = st.tabs(["Upload a folder", "Upload a zip", "Folder on the server",
                                                       "Sample data"])
with folder_tab:
    files = st.file_uploader("Choose a folder", accept_multiple_files="directory",
                             type=sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS), key="folder")
    if files and st.button("Use this folder", type="primary"):
        load([(f.name, f) for f in files], f"{len(files)} files")  # read in chunks, never copied whole
with zip_tab:
    archive = st.file_uploader("Choose a zip", type=["zip"], key="zip")
    if archive is not None and st.button("Use this zip", type="primary"):
        load(archive, archive.name)
with server_tab:
    st.caption(f"Folders under `{SERVER_ROOT}` (set FTLAB_DATA_ROOT to change it), for data too big to upload.")
    relative = st.text_input("Folder, relative to that root", placeholder="my-project/images")
    if relative and st.button("Use this folder", key="server-go", type="primary"):
        try:
            load(server_folder(SERVER_ROOT, relative), relative)
        except DataError as exc:
            st.error(str(exc))
with sample_tab:
    st.write(describe())
    if st.button("Load the sample dataset", type="primary"):
        with tempfile.TemporaryDirectory() as tmp:
            load(write_sample(Path(tmp) / "shapes"), "the sample")

key = st.query_params.get("data")
if not key:
    st.info("No dataset yet: upload one above, or try the sample data.")
    st.stop()

st.divider()
c1, c2, c3 = st.columns(3)
split = st.session_state.config.data  # the run that starts later uses exactly this split
split.val_ratio = c1.slider("Validation share", 0.05, 0.5, split.val_ratio, 0.05,
                            help="Held out to measure accuracy honestly (ignored when the data has a val/ folder).", key="data-validation-share")
split.test_ratio = c2.slider("Test share", 0.0, 0.4, split.test_ratio, 0.05, help="Held out until the end; optional.", key="data-test-share")
split.split_seed = int(c3.number_input("Split seed", 0, 10_000, split.split_seed,
                                       help="The same seed gives the same split.", key="data-split-seed"))
try:
    dataset = open_dataset(key, workspace_root(), split)
except (DataError, ValueError) as exc:
    st.error(str(exc))
    st.stop()
st.session_state.dataset = dataset
report = dataset.report

for error in report.errors:
    st.error(error)
for warning in report.warnings:
    st.warning(warning)
m1, m2, m3, m4 = st.columns(4)
m1.metric("Images", report.num_images)
m2.metric("Classes", len(report.classes))
m3.metric("Skipped", len(report.skipped))
m4.metric("Layout", report.layout)
if report.classes:
    st.altair_chart(charts.class_counts(report.classes, report.splits), width="stretch")
if report.sizes:
    lo, mid, hi = (report.sizes[k] for k in ("min", "median", "max"))
    st.caption(f"Sizes {lo[0]}x{lo[1]} to {hi[0]}x{hi[1]} (median {mid[0]}x{mid[1]}); modes: "
               + ", ".join(f"{m} {n}" for m, n in report.modes.items()))
if report.skipped:
    with st.expander(f"{len(report.skipped)} files skipped, with the reason", expanded=not report.trainable):
        st.dataframe(pd.DataFrame([{"file": s.path, "reason": s.reason} for s in report.skipped]),
                     hide_index=True, width="stretch")

st.subheader("Thumbnails")
for label, name in enumerate(dataset.classes):
    samples = [s for s in dataset.samples if s.label == label][:THUMBS_PER_CLASS]
    st.markdown(f"**{name}** · {report.classes[name]} images")
    cols = st.columns(THUMBS_PER_CLASS)
    for col, sample in zip(cols, samples):
        try:
            picture = to_pil(decode_image(dataset.data_dir / sample.path, min_side=96))
            picture.thumbnail((160, 160))
            col.image(picture, caption=Path(sample.path).name[:18])
        except ImageError as exc:
            col.caption(str(exc))
