"""Data: bring images in (folder, zip, server folder or the sample) and see what the app made of them."""
import copy
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from ui import charts
from core.config import RunConfig, workspace_root
from ui.account import over_quota, workspace
from core.evaluate import leakage
from core.data.images import IMAGE_EXTENSIONS, ImageError, decode_image, to_pil
from core.data.sample_data import describe, write_sample
from core.data.sources import DataError, server_folder, stored
from core.data.validation import load_dataset, open_dataset
from core.jobs.registry import JobError
from ui.widgets import group_settings, release_uploads, set_url

SERVER_ROOT = Path(os.environ.get("FTLAB_DATA_ROOT", workspace_root() / "server-data"))  # the lab's, shared
THUMBS_PER_CLASS = 8
PAIRS_SHOWN = 20  # with thumbnails; the rest in a table

st.title("Data")
st.write("One subfolder per class (`cats/1.jpg`, `dogs/2.png`), or `train/`, `val/` (and `test/`) folders "
         "each holding class subfolders. Every image is checked; nothing you upload leaves this machine.")


def load(source, what: str, size: int = 0) -> None:
    """Copy, check, remember in the URL; every problem becomes a message, never a crash."""
    if refused := over_quota(size):
        st.error(refused)
        return
    bar = st.progress(0.0, text=f"Checking {what}...")
    try:
        dataset = load_dataset(source, workspace(), st.session_state.config.data,
                               progress=lambda done, total: bar.progress(done / total, text=f"Checked {done}/{total} files"))
    except (DataError, ImageError) as exc:
        bar.empty()
        st.error(str(exc))
        return
    bar.empty()
    set_url("data", dataset.key)
    release_uploads([f for _, f in source] if isinstance(source, list) else [source])
    st.session_state["uploads"] = st.session_state.get("uploads", 0) + 1  # fresh upload widgets: the old files are gone
    st.rerun()  # the sidebar, drawn before this page, shows the new dataset too


uploads = st.session_state.get("uploads", 0)
folder_tab, zip_tab, server_tab, sample_tab = st.tabs(["Upload a folder", "Upload a zip", "Folder on the server",
                                                       "Sample data"])
with folder_tab:
    files = st.file_uploader("Choose a folder", accept_multiple_files="directory",
                             type=sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS), key=f"folder-{uploads}")
    if files and st.button("Use this folder", type="primary"):
        load([(f.name, f) for f in files], f"{len(files)} files", sum(f.size for f in files))  # read in chunks
with zip_tab:
    archive = st.file_uploader("Choose a zip", type=["zip"], key=f"zip-{uploads}")
    if archive is not None and st.button("Use this zip", type="primary"):
        load(archive, archive.name, archive.size)
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
    group_settings(split, stored(workspace(), key).root, "data")
    dataset = open_dataset(key, workspace(), split)
except (DataError, ValueError) as exc:
    st.error(str(exc))
    st.stop()
st.session_state.dataset = dataset
report = dataset.report
if report.groups:
    st.caption(f"{report.groups['count']} groups ({report.groups['source']}): each one lies wholly in train, val "
               "or test, never in two.")
if report.label_review:
    review = report.label_review
    st.caption(f"Labels version {review['version']} from label review: {review['relabelled']} corrected, "
               f"{review['excluded']} excluded; the uploaded originals are untouched.")

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

def thumbnail(path: Path, side: int = 160):
    picture = to_pil(decode_image(path, min_side=96))
    picture.thumbnail((side, side))
    return picture


st.subheader("Thumbnails")
for label, name in enumerate(dataset.classes):
    samples = [s for s in dataset.samples if s.label == label][:THUMBS_PER_CLASS]
    st.markdown(f"**{name}** · {report.classes[name]} images")
    cols = st.columns(THUMBS_PER_CLASS)
    for col, sample in zip(cols, samples):
        try:
            col.image(thumbnail(dataset.data_dir / sample.path), caption=Path(sample.path).name[:18])
        except ImageError as exc:
            col.caption(str(exc))

if not report.trainable:
    st.stop()

st.subheader("Near-duplicates across splits")
st.write("A copy of a training image in validation or test (saved again, resized, cropped a little) is graded on "
         "something the model has already seen, so accuracy looks better than it will be on new images. This check "
         "compares every image with every other through the backbone's features and lists the close pairs that "
         "sit in different splits.")
registry = st.session_state.registry
check = leakage.measured_config(st.session_state.config)
check.data.source = str(dataset.data_dir)
job = registry.snapshot(st.session_state.get("leakage-job", ""))
if job and leakage.settings(RunConfig.from_dict(job.config)) != leakage.settings(check):
    job = None  # a check of other data or another split


def show_pairs(result: dict) -> None:
    pairs, counts, threshold = result["pairs"], result["counts"], result["threshold"]
    st.caption(f"Checked {time.strftime('%Y-%m-%d %H:%M', time.localtime(result['written_at']))}.")
    if not pairs:
        st.success(f"No near-duplicates across splits: no two images in different splits reach a similarity of "
                   f"{threshold:.2f}.")
        return
    where = ", ".join(f"{n} {name.replace('-', '/')}" for name, n in counts.items() if "-" in name and n)
    more = " (the most similar; there may be more)" if result["truncated"] else ""
    st.warning(f"{len(pairs)} pairs of near-identical images sit in different splits{more}: {where}. "
               f"Two different classes in {counts['different_class']} of them.")
    st.write("**What to do:** if a pair shows the same patient, specimen or scene, set groups (a CSV, a path pattern "
             "or a folder level) so all its images stay in one split; if one image is a plain copy, remove it from "
             "your data and load the data again. A pair with two classes is a mislabel or an ambiguous picture: "
             f"fix the label or remove one. Similarity is 1.0 for identical pictures; pairs from {threshold:.2f} up "
             "are listed.")
    for pair in pairs[:PAIRS_SHOWN]:
        left, right, about = st.columns([2, 2, 3])
        for col, side in ((left, "a"), (right, "b")):
            try:
                col.image(thumbnail(dataset.data_dir / pair[side]),
                          caption=f"{pair['split_' + side]} · {pair['class_' + side]}")
            except ImageError as exc:
                col.caption(str(exc))
        about.markdown(f"similarity **{pair['similarity']:.3f}**"
                       + (" · :orange[different classes]" if pair["different_class"] else ""))
        about.caption(f"{pair['a']}  \n{pair['b']}")
    if len(pairs) > PAIRS_SHOWN:
        with st.expander(f"All {len(pairs)} pairs"):
            st.dataframe(pd.DataFrame(pairs), hide_index=True, width="stretch")


@st.fragment(run_every=1.0 if job and job.active else None)
def near_duplicates() -> None:
    """The check runs as a job (a worker process); this part of the page follows it, then shows what it found."""
    snap = registry.snapshot(job.id) if job else None
    if snap and snap.active:
        st.session_state["leakage-seen"] = snap.id
        where = (f"queued #{snap.queue_position}" if snap.status == "queued" else
                 f"computing features, batch {snap.batch}/{snap.batches}" if snap.phase == "features" and snap.batches
                 else "starting")
        st.progress(snap.batch / snap.batches if snap.batches else 0.0, text=f"Near-duplicate check: {where}")
        if st.button("Stop the check", key="leakage-stop"):
            registry.stop(snap.id)
        return
    if snap and st.session_state.get("leakage-seen") == snap.id:
        st.session_state["leakage-seen"] = None
        st.rerun()  # polling stops
    if snap and snap.error:
        st.error(snap.error)
    elif snap and snap.status == "stopped":
        st.info("The check was stopped before it finished.")
    for _, level, text in snap.messages if snap else ():
        if level == "warning":
            st.warning(text)
    done = snap.run_dir if snap and snap.status == "finished" else leakage.previous(registry.roots["leakage"], check)
    if st.button("Look for near-duplicates" if done is None else "Check again", key="leakage-start",
                 help="Runs every image through the default backbone once (cached: training with it reuses the "
                      "features); a minute or two per thousand images on a small CPU."):
        try:
            st.session_state["leakage-job"] = registry.near_duplicates(copy.deepcopy(check))
        except JobError as exc:  # over a quota on a shared server
            st.error(str(exc))
        else:
            st.rerun()  # the fragment polls from the next full run
    result = leakage.read(done) if done else None
    if result:
        show_pairs(result)


near_duplicates()
