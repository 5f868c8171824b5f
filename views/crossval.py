"""Cross-validate: k folds (grouped by patient or specimen when images come in groups), live, then every fold's
scores, their mean and spread, and the pooled out-of-fold predictions."""
import copy

import pandas as pd
import streamlit as st

from ui.account import workspace
from core.data.sources import DataError, stored
from core.data.validation import open_dataset
from core.experiments import crossval
from core.jobs.registry import JobError
from core.jobs.supervisor import live_worker
from core.runs import read_json
from ui import charts
from ui.widgets import (calibration_view, group_settings, job_progress, missing_link, pick_from_url, rerun_when_done,
                        resume_button, set_url)

st.title("Cross-validation")
registry = st.session_state.registry
config = st.session_state.config
root = workspace() / "cv"


def studies() -> list[str]:
    """Cross-validation folders, newest first. Every folder counts: the registry makes one when Start is pressed,
    before its worker has written a file into it."""
    return sorted((p.name for p in root.iterdir() if p.is_dir()), reverse=True) if root.is_dir() else []


def status_of(cv_id: str) -> str:
    snap = registry.snapshot(cv_id)
    if snap is not None:
        return snap.status
    status = read_json(root / cv_id / crossval.CV_FILE, {}).get("status", "running")
    return "interrupted" if status == "running" and not live_worker(root / cv_id) else status


def new_cv() -> None:
    key = st.query_params.get("data")
    if not key:
        st.info("Load a dataset on the Data page first: cross-validation trains the current config k times.")
        st.page_link("views/data.py", label="Go to Data", icon=":material/folder:")
        return
    base = copy.deepcopy(config)
    c1, c2 = st.columns(2)
    base.data.folds = c1.number_input("Folds (k)", 2, 20, max(base.data.folds, 5), key="cv-folds",
                                      help="Each image is held out exactly once; k runs are trained.")
    base.data.test_ratio = c2.slider("Test share, outside every fold", 0.0, 0.4, base.data.test_ratio, 0.05,
                                     key="cv-test-share",
                                     help="Images no fold trains or validates on: the one place where the fold "
                                          "models, and their ensemble, can be compared on the same images. A test/ "
                                          "folder in the data is used as it is.")
    base.data.fold = 0
    try:
        group_settings(base.data, stored(workspace(), key).root, "cv")
        dataset = open_dataset(key, workspace(), base.data)
    except (DataError, ValueError) as exc:
        st.error(str(exc))
        return
    report = dataset.report
    if report.groups:
        st.caption(f"{report.groups['count']} groups ({report.groups['source']}): each lands in exactly one fold.")
    for warning in report.warnings:
        st.warning(warning)
    base.data.source = str(dataset.data_dir)
    test = len(dataset.split("test"))
    st.caption(f"{len(dataset.samples) - test} images in {base.data.folds} folds"
               + (f"; {test} test images stay aside for every fold." if test else "."))
    if not report.trainable:
        st.error(report.errors[0])
    elif st.button("Start the cross-validation", type="primary"):
        try:
            set_url("cv", registry.cross_validate(base))
        except JobError as exc:
            st.error(str(exc))
        else:
            st.rerun()


@st.fragment(run_every=1.0 if (s := registry.snapshot(st.query_params.get("cv", ""))) and s.active else None)
def follow(cv_id: str) -> None:
    folder = root / cv_id
    snap = registry.snapshot(cv_id)
    status = status_of(cv_id)
    job_progress(registry, snap, "cv")
    if snap is not None and snap.active and snap.history:
        c1, c2 = st.columns(2)
        c1.altair_chart(charts.curves(list(snap.history), [{"step": x, "loss": y} for x, y in snap.batch_losses],
                                      "loss"), width="stretch")
        c2.altair_chart(charts.curves(list(snap.history), None, "acc"), width="stretch")
    resume_button(registry, "cv", folder, status, "cv", "Resume (finished folds are kept)")
    results(folder)
    rerun_when_done(snap, "cv")


def results(folder) -> None:
    doc, oof = crossval.read(folder)
    if not doc or not doc["folds"]:
        st.info("No fold has finished yet.")
        return
    classes = doc["classes"]
    st.subheader(f"{len(doc['folds'])} of {doc['k']} folds" + (f" · groups: {doc['groups']['source']} "
                                                               f"({doc['groups']['count']})" if doc.get("groups") else ""))
    cols = st.columns(3)
    for col, metric, title in zip(cols, ("val_acc", "val_macro_f1", "val_ece"), ("accuracy", "macro F1", "ECE")):
        mean, std = doc["mean"].get(metric), doc["std"].get(metric)
        if mean is not None:
            col.metric(f"Mean {title}", f"{mean:.3f}", help=f"± {std:.3f} (standard deviation over folds)"
                       if std is not None else "one fold so far")
    st.dataframe(pd.DataFrame([{"fold": f["fold"] + 1, "images": f["images"], "accuracy": f["val_acc"],
                                "balanced accuracy": f["val_balanced_acc"], "macro F1": f["val_macro_f1"],
                                "ECE": f["val_ece"], "best epoch": f["best_epoch"], "run": f["run"]}
                               for f in doc["folds"]]), hide_index=True, width="stretch")
    if doc.get("oof"):
        st.caption(f"Pooled out-of-fold confusion matrix: every image once, predicted by the model that did not "
                   f"train on it ({doc['oof']['images']} images, accuracy {doc['oof']['acc']:.3f}).")
        st.altair_chart(charts.confusion(doc["oof"]["confusion"], classes), width="stretch")
        if doc["oof"].get("calibrated"):
            st.caption("Calibration of the out-of-fold predictions. The 'after' figures scale each fold by the "
                       "temperature the other folds give, so no image calibrates itself. Predict, the exports and "
                       f"the package use the one fitted on all of them: {doc['oof']['temperature']:.3g}"
                       + (" (1: no mis-calibration a likelihood-ratio test at 5% would call real)."
                          if doc["oof"]["temperature"] == 1.0 else "."))
            calibration_view(doc["oof"], doc["oof"]["calibrated"])
    with st.expander("Each fold's confusion matrix"):
        for col, f in zip(st.columns(min(len(doc["folds"]), 5)) * 4, doc["folds"]):
            col.caption(f"Fold {f['fold'] + 1}")
            col.altair_chart(charts.confusion(f["confusion"], classes), width="stretch")
    if oof:
        table = pd.DataFrame([{"path": r["path"], "fold": r["fold"] + 1, "label": classes[r["label"]],
                               "predicted": classes[max(range(len(r["probs"])), key=r["probs"].__getitem__)],
                               "confidence": max(r["probs"])} for r in oof])
        with st.expander("Out-of-fold predictions"):
            st.dataframe(table, hide_index=True, width="stretch")
            st.download_button("Download (CSV)", table.to_csv(index=False), "oof_predictions.csv", "text/csv",
                               on_click="ignore")
    if doc["status"] == "finished":
        c1, c2 = st.columns(2)
        c1.page_link("views/review.py", label="Review likely label errors", icon=":material/rule:",
                     query_params={"cv": folder.name})
        c2.page_link("views/ensembles.py", label="Combine the fold models into an ensemble", icon=":material/hub:",
                     query_params={"cv": folder.name})


ids = studies()
missing = missing_link(ids, "cv", "cross-validation")
with st.expander("New cross-validation", expanded=missing or not st.query_params.get("cv")):
    new_cv()
if ids:
    follow(pick_from_url("Cross-validations", ids, "cv", "cv-pick"))  # its config arrives after Start: ids only
