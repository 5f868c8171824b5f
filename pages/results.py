"""Results of one run, read from its folder: summary, curves, confusion matrix, per-class scores, downloads."""
import pandas as pd
import streamlit as st

from core import charts
from core.config import workspace_root
from core.runs import list_runs, load_run
from ui import downloads, set_url

st.title("Results")
registry = st.session_state.registry
runs = list_runs(workspace_root() / "runs")
if not runs:
    st.info("No runs yet: start one on the Train page.")
    st.stop()
ids = [r["id"] for r in runs]
by_id = {r["id"]: r for r in runs}
wanted = st.query_params.get("run")
run_id = st.selectbox("Run", ids, index=ids.index(wanted) if wanted in ids else 0, key="results-run",
                      format_func=lambda i: f"{i} · {by_id[i]['backbone']} · {by_id[i]['status']}")
set_url("run", run_id)
run = load_run(by_id[run_id]["run_dir"])

snap = registry.snapshot(run_id)
if snap is not None and snap.active:
    st.info(f"This run is {snap.status}; these results grow as epochs end.")
    st.page_link("pages/train.py", label="Watch it live", icon=":material/model_training:",
                 query_params={"run": run_id})
if run.status.get("message"):
    (st.error if run.status.get("status") == "failed" else st.caption)(run.status["message"])
if run.weights_source == "random":
    st.warning("This run started from random weights, not pretrained ones: expect much lower accuracy than "
               "fine-tuning gives.")

best = run.best
m = st.columns(5)
m[0].metric("Status", run.status.get("status", "unknown"))
m[1].metric("Best epoch", f"{run.best_epoch} of {len(run.history)}" if run.best_epoch else "-")
m[2].metric("Validation accuracy", f"{best['val_acc']:.1%}" if best.get("val_acc") is not None else "-")
m[3].metric("Macro F1", f"{best['val_macro_f1']:.3f}" if best.get("val_macro_f1") is not None else "-")
m[4].metric("Training time", f"{run.seconds:.0f} s")
model = run.config.get("model", {})
optim = run.config.get("optim", {})
st.caption(f"{model.get('backbone')} · {model.get('strategy')} · weights: {run.weights_source} · "
           f"{optim.get('optimizer')} lr {optim.get('lr')} · {optim.get('schedule')} · batch {optim.get('batch_size')}")

if run.history:
    c1, c2 = st.columns(2)
    c1.altair_chart(charts.curves(run.history, None, "loss"), width="stretch")
    c2.altair_chart(charts.curves(run.history, None, "acc"), width="stretch")
else:
    st.info("No epoch has finished yet.")

if run.confusion:
    st.subheader(f"Confusion matrix (validation, epoch {run.confusion['epoch']})")
    st.altair_chart(charts.confusion(run.confusion["matrix"], run.confusion["classes"]), width="stretch")
if per_class := best.get("val_per_class"):
    st.subheader("Per class (validation)")
    table = pd.DataFrame({"class": run.classes, **per_class})
    st.dataframe(table.sort_values("f1"), hide_index=True, width="stretch",
                 column_config={k: st.column_config.NumberColumn(format="%.3f") for k in ("precision", "recall", "f1")})

st.subheader("Download")
downloads(run.run_dir, run.id)
with st.expander("Config"):
    st.json(run.config, expanded=False)
