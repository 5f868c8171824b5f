"""Label review: the images a cross-validation's models disagree with, to relabel or leave out."""
import math
from pathlib import Path

import pandas as pd
import streamlit as st

from ui.account import workspace
from core.data import overrides
from core.data.sources import DataError
from core.evaluate import label_review
from core.experiments import crossval
from ui.widgets import set_url, thumbnail

PAGE = 12
PER_ROW = 3

st.title("Label review")
root = workspace() / "cv"
finished = sorted((p.name for p in root.glob("*") if (p / crossval.CV_FILE).is_file()
                   and (p / crossval.OOF_FILE).is_file()), reverse=True)
wanted = st.query_params.get("cv", "")
if wanted and wanted not in finished:
    st.warning(f"There is no cross-validation {wanted!r} with predictions to review here (it was deleted, has no "
               "finished fold yet, or the link is from another machine).")
if not finished:
    st.info("Label review works from a cross-validation: every image is predicted by a fold model that never "
            "trained on it, and the images those models disagree with are listed here, most doubtful first.")
    st.page_link("views/crossval.py", label="Run one on the Cross-validate page", icon=":material/view_week:")
    st.stop()
cv_id = st.selectbox("Cross-validation", finished, index=finished.index(wanted) if wanted in finished else 0,
                     key="review-cv")
set_url("cv", cv_id)
cv_dir = root / cv_id


@st.cache_data(show_spinner=False, max_entries=8)
def find(cv_dir: str, predictions_changed: float) -> list[dict]:
    """Once per cross-validation state (a resumed one gets new predictions), not on every click."""
    return label_review.review(Path(cv_dir))


def act(change, *args) -> None:
    try:
        change(*args)
    except DataError as exc:
        st.error(str(exc))
    else:
        st.rerun()


summary, rows = crossval.read(cv_dir)
try:
    found = find(str(cv_dir), (cv_dir / crossval.OOF_FILE).stat().st_mtime)
except DataError as exc:
    st.error(f"This cross-validation cannot be reviewed: {exc}")
    st.stop()
except (KeyError, TypeError, ValueError):
    st.error("This cross-validation's cv.json or oof_predictions.jsonl is damaged, so it cannot be reviewed. Run it "
             "again on the Cross-validate page.")
    st.stop()
classes = summary["classes"]
if summary.get("status") != "finished":
    st.warning(f"This cross-validation is {summary.get('status')} after {len(summary.get('folds', []))} of "
               f"{summary.get('k')} folds: only the images of the finished folds are reviewed.")
oof = summary.get("oof") or {}
if oof:
    st.caption(f"{summary['k']} folds · {oof['images']} images predicted out of fold · accuracy {oof['acc']:.1%}")

try:
    dataset = label_review.dataset_of(cv_dir, workspace())
    review = overrides.read(dataset.root)
except DataError as exc:
    st.error(f"The images of this cross-validation cannot be shown or corrected: {exc}")
    if found:
        st.dataframe(pd.DataFrame(found)[["path", "given", "suggested", "score"]], hide_index=True)
    st.stop()

m = st.columns(3)
m[0].metric("Labels version", review.version, help="Goes up with every correction; 0 is the original labels.")
m[1].metric("Relabelled", len(review.relabelled))
m[2].metric("Excluded", len(review.excluded))
st.caption("Corrections are saved in label_overrides.json beside the app's copy of the dataset: the original images "
           "and folders are never touched. Runs, splits and cross-validations started from now on use the corrected "
           "labels, as a new version of the dataset; runs already made keep the labels they trained on.")

if not found:
    st.success("The fold models agree with every label: nothing to review.")
    st.stop()
flagged = sum(r["flagged"] for r in found)
st.write(f"Predicted as another class than their label by the fold model that never trained on them: "
         f"**{len(found)}** images. cleanlab's confident learning marks **{flagged}** as likely wrong labels rather "
         "than hard images. Lowest label quality first.")
thin = label_review.thin_classes(rows, classes)
if thin:
    st.caption(f"{', '.join(thin)}: fewer than {label_review.MIN_PER_CLASS} images, too few for cleanlab to tell "
               "wrong labels from hard images, so none is marked.")
st.download_button("Download the list (label_issues.csv)", data=(cv_dir / label_review.CSV_FILE).read_bytes,
                   file_name=f"{cv_id}-label_issues.csv", mime="text/csv", on_click="ignore", key="review-csv")

pages = math.ceil(len(found) / PAGE)
start = PAGE * (st.selectbox("Showing", range(pages), key=f"review-page-{cv_id}",
                             format_func=lambda p: f"{p * PAGE + 1}-{min(len(found), (p + 1) * PAGE)} of {len(found)}")
                if pages > 1 else 0)
for offset, row in enumerate(found[start:start + PAGE]):
    if offset % PER_ROW == 0:
        cells = st.columns(PER_ROW)
    path, given, suggested = row["path"], row["given"], row["suggested"]
    with cells[offset % PER_ROW].container(border=True):
        if path in dataset.files and (dataset.data_dir / path).is_file():  # a listed file: no path leads out
            thumbnail(st, str(dataset.data_dir), path, path)
        else:  # decoding would call it "not an image"
            st.caption(f"{path}: the file is missing from the app's copy of the dataset.")
        st.markdown(f"Labelled **{given}** ({row['score']:.0%}) · the model says **{suggested}** "
                    f"({row['probs'][classes.index(suggested)]:.0%})"
                    + (" :orange-badge[likely wrong label]" if row["flagged"] else ""))
        now = review.relabelled.get(path)
        if path in review.excluded:
            st.caption(":material/block: excluded from training and evaluation")
        elif now:
            st.caption(f":material/edit: relabelled to **{now}**")
        choice = st.selectbox("Class", classes, index=classes.index(now if now in classes else suggested),
                              key=f"review-class-{path}")
        b1, b2, b3 = st.columns(3)
        if b1.button("Relabel", key=f"review-relabel-{path}", help=f"Give it the class {choice}"):
            act(overrides.relabel, dataset.root, path, choice)
        if b2.button("Exclude", key=f"review-exclude-{path}", help="Leave it out: a wrong or unusable image"):
            act(overrides.exclude, dataset.root, path)
        if b3.button("Undo", key=f"review-undo-{path}", disabled=path not in review.excluded and not now,
                     help="Back to its original label"):
            act(overrides.restore, dataset.root, path)
