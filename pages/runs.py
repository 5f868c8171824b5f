"""Runs: every run on disk, so nothing is lost to a reload or a server restart."""
import datetime

import pandas as pd
import streamlit as st

from core.config import RunConfig, workspace_root
from core.runs import list_runs

st.title("Runs")
registry = st.session_state.registry
runs = list_runs(workspace_root() / "runs")
if not runs:
    st.info("No runs yet: start one on the Train page.")
    st.stop()

for r in runs:
    snap = registry.snapshot(r["id"])
    if snap is not None and snap.active:
        r["status"] = snap.status
    elif r["status"] == "running":  # on disk it never ended: the server stopped under it
        r["status"] = "interrupted"
table = pd.DataFrame([{
    "run": r["id"], "started": datetime.datetime.fromtimestamp(r["time"]), "dataset": r["dataset"],
    "backbone": r["backbone"], "strategy": r["strategy"], "weights": r["weights"], "status": r["status"],
    "epochs": r["epochs"], "val accuracy": r["val_acc"], "macro F1": r["val_macro_f1"], "seconds": r["seconds"],
} for r in runs])
picked = st.dataframe(
    table, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row", key="runs-table",
    column_config={"val accuracy": st.column_config.NumberColumn(format="percent"),
                   "macro F1": st.column_config.NumberColumn(format="%.3f"),
                   "seconds": st.column_config.NumberColumn(format="%.0f")})
rows = picked.selection.rows
if not rows:
    st.caption("Select a run to open its results.")
    st.stop()
run = runs[rows[0]]
st.page_link("pages/results.py", label=f"Open the results of {run['id']}", icon=":material/insights:",
             query_params={"run": run["id"]})
if run["status"] == "interrupted" and (run["run_dir"] / "checkpoint.pt").is_file():
    st.caption("This run was cut off (the server stopped); it can go on from its last finished epoch.")
    if st.button("Resume it", key="runs-resume"):
        config = RunConfig.from_json((run["run_dir"] / "config.json").read_text())
        registry.submit(config, resume_dir=run["run_dir"])
        st.switch_page("pages/train.py", query_params={"run": run["id"]})
