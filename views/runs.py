"""Runs: every run on disk (nothing is lost to a reload or a restart); open, compare, repeat, resume, delete."""
import datetime

import pandas as pd
import streamlit as st

from ui import charts
from core.config import RunConfig
from ui.account import workspace
from core.jobs.registry import JobError
from core.runs import delete_run, list_runs, load_run
from ui.widgets import set_url

st.title("Runs")
registry = st.session_state.registry
root = workspace() / "runs"
runs = list_runs(root)
if not runs:
    st.info("No runs yet: start one on the Train page.")
    st.stop()

for r in runs:
    snap = registry.snapshot(r["id"])
    if snap is not None and snap.active:
        r["status"] = snap.status
    elif r["status"] == "running":  # on disk it never ended: the server stopped under it
        r["status"] = "interrupted"

c1, c2, c3 = st.columns(3)
statuses = c1.multiselect("Status", sorted({r["status"] for r in runs}), key="runs-status")
names = c2.multiselect("Backbone", sorted({str(r["backbone"]) for r in runs}), key="runs-backbone")
text = c3.text_input("Search (run or dataset)", key="runs-search").strip().lower()
shown = [r for r in runs if (not statuses or r["status"] in statuses) and (not names or str(r["backbone"]) in names)
         and (not text or text in r["id"].lower() or text in str(r["dataset"]).lower())]

table = pd.DataFrame([{
    "run": r["id"], "started": datetime.datetime.fromtimestamp(r["time"]), "dataset": r["dataset"],
    "backbone": r["backbone"], "strategy": r["strategy"], "weights": r["weights"], "status": r["status"],
    "epochs": r["epochs"], "val accuracy": r["val_acc"], "macro F1": r["val_macro_f1"], "seconds": r["seconds"],
} for r in shown], columns=["run", "started", "dataset", "backbone", "strategy", "weights", "status", "epochs",
                            "val accuracy", "macro F1", "seconds"])
picked = st.dataframe(
    table, hide_index=True, width="stretch", on_select="rerun", selection_mode="multi-row", key="runs-table",
    column_config={"val accuracy": st.column_config.NumberColumn(format="percent"),
                   "macro F1": st.column_config.NumberColumn(format="%.3f"),
                   "seconds": st.column_config.NumberColumn(format="%.0f")})
selected = [shown[i] for i in picked.selection.rows if i < len(shown)]
st.caption(f"{len(shown)} of {len(runs)} runs. Click a column to sort; select rows to open, compare, repeat or "
           "delete.")
if not selected:
    st.stop()

if len(selected) > 1:
    histories = {r["id"]: load_run(r["run_dir"]).history for r in selected}
    metric = st.selectbox("Compare on", ["val_acc", "val_macro_f1", "val_loss", "train_loss"], key="runs-metric")
    st.altair_chart(charts.compare_runs(histories, metric), width="stretch")
    st.stop()

run = selected[0]
c1, c2, c3 = st.columns(3)
c1.page_link("views/results.py", label="Open its results", icon=":material/insights:", query_params={"run": run["id"]})
if c2.button("Repeat with its settings", key="runs-repeat", help="Opens the Train page with this run's config."):
    st.session_state.config = RunConfig.from_json((run["run_dir"] / "config.json").read_text())
    if run["dataset"]:
        set_url("data", run["dataset"])
    st.switch_page("views/train.py", query_params={"data": run["dataset"]} if run["dataset"] else None)
if run["status"] in ("queued", "running"):
    st.info(f"{run['id']} is {run['status']}.")
    c1.page_link("views/train.py", label="Follow it on the Train page", icon=":material/model_training:",
                 query_params={"run": run["id"]})
    if c2.button("Stop it", key="runs-stop"):
        registry.stop(run["id"])
        st.rerun()
elif run["status"] != "finished" and (run["run_dir"] / "checkpoint.pt").is_file():
    st.caption({"interrupted": "This run was cut off (the server stopped under it)",
                "stopped": "This run was stopped", "failed": "This run failed"}.get(run["status"], "This run ended early")
               + "; it can go on from its last finished epoch.")
    if st.button("Resume it", key="runs-resume"):
        try:
            registry.submit(RunConfig.from_json((run["run_dir"] / "config.json").read_text()), resume_dir=run["run_dir"])
        except JobError as exc:  # resumed meanwhile from another tab
            st.warning(str(exc))
        else:
            set_url("run", run["id"])
            st.switch_page("views/train.py", query_params={"run": run["id"]})
if run["status"] in ("queued", "running"):
    c3.caption("Stop it before deleting it.")
elif c3.toggle("Delete this run", key="runs-delete-armed"):
    st.warning(f"Delete {run['id']} and its weights for good?")
    if st.button("Yes, delete it", type="primary", key="runs-delete"):
        delete_run(root, run["id"])
        for key in ("runs-table", "runs-delete-armed"):  # the selection must not fall onto another run
            st.session_state.pop(key, None)
        st.toast(f"Deleted {run['id']}.")
        st.rerun()
