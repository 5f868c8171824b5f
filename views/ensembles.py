"""Ensembles: average the probabilities of runs, or of a cross-validation's fold models; compare the ensemble
with each member on the held-out images they share; download one graph that runs them all."""
import pandas as pd
import streamlit as st

from ui.account import workspace
from core.deploy import ensemble_export
from core.evaluate import ensemble
from core.jobs.registry import JobError
from core.jobs.supervisor import live_worker
from core.runs import list_runs, read_json
from ui.widgets import job_progress, missing_link, pick_from_url, rerun_when_done, resume_button, set_url

st.title("Ensembles")
registry = st.session_state.registry
root = workspace() / "ensembles"
cv_root = workspace() / "cv"


def new_ensemble() -> None:
    runs = [r for r in list_runs(workspace() / "runs") if (r["run_dir"] / "model.safetensors").is_file()]
    cvs = sorted((p.parent.name for p in cv_root.glob("*/cv.json")
                  if read_json(p, {}).get("status") == "finished"), reverse=True)
    wanted = st.query_params.get("cv")
    source = st.radio("Combine", ["the fold models of a cross-validation", "runs I pick"],
                      index=0 if cvs and (wanted or not runs) else 1, horizontal=True, key="ens-source")
    if source.startswith("the fold"):
        if not cvs:
            st.info("No finished cross-validation yet.")
            st.page_link("views/crossval.py", label="Cross-validate", icon=":material/view_week:")
            return
        cv_id = st.selectbox("Cross-validation", cvs, index=cvs.index(wanted) if wanted in cvs else 0, key="ens-cv")
        members = [cv_root / cv_id]
    else:
        by_id = {r["id"]: r for r in runs}
        picked = st.multiselect("Runs (same classes)", list(by_id), key="ens-runs",
                                format_func=lambda i: f"{i} · {by_id[i]['backbone']} · val acc "
                                                      f"{by_id[i]['val_acc'] or 0:.3f}")
        members = [by_id[i]["run_dir"] for i in picked]
    if st.button("Build the ensemble", type="primary", disabled=not members, key="ens-build"):
        try:
            set_url("ensemble", registry.ensemble(members))
        except (ValueError, JobError) as exc:  # mismatched classes, fewer than two models: a sentence
            st.error(str(exc))
        else:
            st.rerun()


def status_of(ens_id: str) -> str:
    snap = registry.snapshot(ens_id)
    if snap is not None:
        return snap.status
    if (root / ens_id / ensemble_export.UNAVAILABLE).is_file():  # the job's last word: it finished
        return "finished"
    return "running" if live_worker(root / ens_id) else "stopped"


@st.fragment(run_every=1.0 if (s := registry.snapshot(st.query_params.get("ensemble", ""))) and s.active else None)
def follow(ens_id: str) -> None:
    folder = root / ens_id
    snap = registry.snapshot(ens_id)
    status = status_of(ens_id)
    job_progress(registry, snap, "ens", "scoring the ensemble")
    if snap is not None and snap.active:
        st.caption("Each graph is checked against the members before it is offered.")
    resume_button(registry, "ensemble", folder, status, "ens", "Resume building the exports")
    results = read_json(folder / "results.json")
    spec = read_json(folder / ensemble.SPEC, {})
    st.caption(f"{len(spec.get('members', []))} members: " + ", ".join(f"`{m.split('/')[-1]}`" for m in
                                                                     spec.get("members", [])))
    if results is None:
        st.info("Scoring the ensemble on its members' shared held-out images...")
    elif results.get("note"):
        st.warning(results["note"])
    for split in ("test", "val"):
        if split not in (results or {}):
            continue
        r = results[split]
        st.subheader(f"On the {r['images']} {split} images every member held out")
        table = pd.DataFrame([{"model": m["name"], "accuracy": m["acc"], "macro F1": m["macro_f1"], "ECE": m["ece"]}
                              for m in r["members"]] + [{"model": "ensemble (mean of probabilities)",
                                                         "accuracy": r["acc"], "macro F1": r["macro_f1"],
                                                         "ECE": r["ece"]}])
        st.dataframe(table, hide_index=True, width="stretch")
        mean_acc = sum(m["acc"] for m in r["members"]) / len(r["members"])
        st.caption(f"Mean single model: accuracy {mean_acc:.3f}; the ensemble: {r['acc']:.3f}. ECE is the "
                   "calibration error: how far confidence is from accuracy (lower is better).")
    cols = st.columns(2)
    unavailable = read_json(folder / ensemble_export.UNAVAILABLE, {})
    for col, (fmt, name) in zip(cols, ensemble_export.EXPORT_FILES.items()):
        path = folder / "exports" / name
        if fmt in unavailable:
            col.warning(f"No {fmt} graph: {unavailable[fmt]}")
        elif path.is_file() and not (path.with_name(name + ".data")).is_file():
            col.download_button(f"Download {fmt} ({name})", data=path.read_bytes, file_name=f"{ens_id}-{name}",
                                on_click="ignore", key=f"ens-dl-{fmt}")
        elif path.is_file():
            col.caption(f"{name} keeps its weights in {name}.data (over 1.5 GB): copy both from {path.parent}.")
    st.caption("Both graphs take images resized as the members were and scaled to [0, 1] (each member normalises "
               "inside), and return the mean of the members' softmax probabilities.")
    st.page_link("views/predict.py", label="Predict with this ensemble", icon=":material/image_search:",
                 query_params={"ensemble": ens_id})
    rerun_when_done(snap, "ens")


ids = [e["id"] for e in reversed(ensemble.list_ensembles(root))] if root.is_dir() else []
missing = missing_link(ids, "ensemble", "ensemble")
with st.expander("New ensemble", expanded=missing or not st.query_params.get("ensemble")):
    new_ensemble()
if ids:
    follow(pick_from_url("Ensembles", ids, "ensemble", "ens-pick",
                         lambda i: f"{len(read_json(root / i / ensemble.SPEC, {}).get('members', []))} models"))
