"""Search: vary settings around the current config with Optuna, follow the trials live, train the best as a run."""
import copy
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from core.config import ConfigError
from ui.account import workspace
from core.data.sources import DataError
from core.data.validation import open_dataset
from core.experiments import search
from core.experiments import space as spaces
from core.jobs.registry import JobError
from core.jobs.supervisor import live_worker
from core.runs import find_run, read_json
from core.train.engine import MONITORS
from ui import charts
from ui.widgets import job_progress, missing_link, pick_from_url, rerun_when_done, resume_button, set_url

st.title("Hyperparameter search")
registry = st.session_state.registry
config = st.session_state.config
root = workspace() / "searches"


def searches() -> list[str]:
    """Search folders, newest first (ids start with their date)."""
    return sorted((p.parent.name for p in root.glob(f"*/{search.SEARCH_FILE}")), reverse=True)


def status_of(search_id: str) -> str:
    """The job's status while this server follows it; else the folder's, where "running" without a live worker
    means the worker died with the server or the machine: resumable."""
    snap = registry.snapshot(search_id)
    if snap is not None:
        return snap.status
    status = read_json(root / search_id / search.SEARCH_FILE, {}).get("status", "created")
    return "interrupted" if status in ("running", "created") and not live_worker(root / search_id) else status


def describe(search_id: str) -> str:
    options = read_json(root / search_id / search.SEARCH_FILE, {}).get("search", {})
    return f"{options.get('sampler', '?')}, {len(options.get('space', {}))} settings, {options.get('metric', '?')}"


def range_input(name: str, spec: dict) -> dict:
    """One varied setting: its choices, or its low/high (and log scale for a float)."""
    key = f"space-{name}"
    if "choices" in spec:
        options = list(spaces.OFFERED[name]["choices"])
        chosen = st.multiselect(f"{name}: choices", options, default=spec["choices"], key=key)
        return {"choices": chosen}
    c1, c2, c3 = st.columns([2, 2, 1])
    integer = isinstance(spec["low"], int) and isinstance(spec["high"], int)
    kwargs = {"step": 1} if integer else {"format": "%.6g"}
    low = c1.number_input(f"{name}: from", value=spec["low"], key=f"{key}-low", **kwargs)
    high = c2.number_input(f"{name}: to", value=spec["high"], key=f"{key}-high", **kwargs)
    log = c3.checkbox("log scale", spec.get("log", False), key=f"{key}-log", disabled=integer)
    return {"low": low, "high": high} | ({"log": True} if log else {})


def new_search() -> None:
    key = st.query_params.get("data")
    if not key:
        st.info("Load a dataset on the Data page first: a search varies settings around the current config.")
        st.page_link("views/data.py", label="Go to Data", icon=":material/folder:")
        return
    try:
        dataset = open_dataset(key, workspace(), config.data)
    except (DataError, ValueError) as exc:
        st.error(str(exc))
        return
    base = copy.deepcopy(config)
    base.data.source = str(dataset.data_dir)
    st.caption(f"Starting from the current config: {base.model.backbone}, {base.model.strategy}, "
               f"lr {base.optim.lr:g}, {base.optim.epochs} epochs. On cached frozen features (the default linear "
               "probe) a trial takes well under a second.")
    names = st.multiselect("Settings to vary", list(spaces.OFFERED), default=list(spaces.DEFAULT_SPACE),
                           key="space-names")
    space = {name: range_input(name, spaces.OFFERED[name]) for name in names}
    c1, c2, c3 = st.columns(3)
    metric = c1.selectbox("Maximise", MONITORS, MONITORS.index("val_acc"), key="search-metric",
                          help="val_loss is minimised.")
    sampler = c1.selectbox("Sampler", ["tpe", "random", "grid"], key="search-sampler",
                           help="tpe: Bayesian (Optuna's TPE); random; grid: every combination.")
    pruner = c2.selectbox("Pruning", ["median", "hyperband", "none"], key="search-pruner",
                          help="Stop trials early whose per-epoch score falls behind.")
    trials = c2.number_input("Trials", 1, 10_000, 100, key="search-trials")
    minutes = c3.number_input("Time budget (minutes, 0 = none)", 0.0, 10_000.0, 0.0, key="search-minutes")
    workers = c3.number_input("Worker processes", 1, os.cpu_count() or 1, 1, key="search-workers",
                              help="Processes sharing one study on this machine; each gets a share of the cores.")
    with st.expander("Workers on several machines"):
        st.caption("Give a database every machine reaches (an Optuna storage URL, e.g. "
                   "postgresql://user:password@host/optuna) and a study name. Then, on each other machine, with the "
                   "same data and the same space: `python -m core search DATA --out DIR --space space.json "
                   "--storage URL --study NAME`; all of them draw from and report to the one study. Empty: a journal "
                   "file in the search folder (this machine only).")
        storage = st.text_input("Storage URL", key="search-storage", type="password")
        study = st.text_input("Study name", key="search-study", help="Empty: the search's id.")
        grid_points = st.number_input("Grid: values per numeric range", 2, 10, 4, key="search-grid-points")
    options = search.SearchConfig(space=space, metric=metric, sampler=sampler, pruner=pruner, trials=int(trials),
                                  minutes=float(minutes), workers=int(workers), seed=base.seed,
                                  grid_points=int(grid_points), storage=storage.strip(), study=study.strip())
    if sampler == "grid" and space:
        try:
            spaces.check(space)
            st.caption(f"The grid has {spaces.grid_size(space, options.grid_points)} points "
                       f"({options.grid_points} per numeric range).")
        except ConfigError:
            pass
    if not dataset.report.trainable:
        st.error(dataset.report.errors[0])
    elif st.button("Start the search", type="primary"):
        try:
            set_url("search", registry.search(base, options))
        except (ConfigError, JobError) as exc:
            st.error(str(exc))
        else:
            st.rerun()


@st.fragment(run_every=1.0 if (s := registry.snapshot(st.query_params.get("search", ""))) and s.active else None)
def follow(search_id: str) -> None:
    """Trials, charts and the best so far, redrawn every second while the search runs."""
    folder = root / search_id
    doc = read_json(folder / search.SEARCH_FILE, {})
    trials = read_json(folder / search.TRIALS_FILE, [])
    snap = registry.snapshot(search_id)
    status = status_of(search_id)
    options = search.SearchConfig.from_dict(doc["search"])
    job_progress(registry, snap, "search")
    if doc.get("error"):
        st.error(doc["error"])
    c1, c2, c3, c4 = st.columns(4)
    best = doc.get("best_value")
    c1.metric(f"Best {options.metric}", f"{best:.4f}" if best is not None else "none yet")
    c2.metric("Trials finished", f"{doc.get('trials', 0)} of {options.budget}")
    c3.metric("Pruned · failed", f"{doc.get('pruned', 0)} · {doc.get('failed', 0)}")
    c4.metric("Time", f"{doc.get('elapsed', 0):.0f} s")
    st.caption(f"Status: {status}. Sampler {options.sampler}, pruning {options.pruner}; study "
               f"`{doc.get('study', search_id)}`" + (f" in {options.storage.split('@')[-1]}" if options.storage else
                                                     " (journal file in the search folder)."))
    resume_button(registry, "search", folder, status, "search", "Resume the search")
    if not trials:
        st.info("No trial has finished yet.")
        return
    st.altair_chart(charts.search_history(trials, options.metric != "val_loss"), width="stretch")
    c1, c2 = st.columns(2)
    if doc.get("importances"):
        c1.caption("Parameter importances (Optuna's PED-ANOVA)")
        c1.altair_chart(charts.importances(doc["importances"]), width="stretch")
    c2.caption("Completed trials across the parameters")
    c2.altair_chart(charts.parallel_coordinates(trials, options.space), width="stretch")
    table = pd.DataFrame([{"trial": t["number"], "state": t["state"], options.metric: t["value"],
                           "epochs": t["epochs"], "pruned at epoch": t["pruned_at"], "seconds": t["seconds"],
                           **t["params"], "why it failed": t.get("error")} for t in trials])
    st.dataframe(table, hide_index=True, width="stretch")
    if doc.get("best_params"):
        st.subheader(f"Best trial: {doc['best_trial']}")
        st.json(doc["best_params"])
        if doc.get("best_run") and find_run(workspace() / "runs", Path(doc["best_run"]).name):
            st.page_link("views/results.py", label="Open the best trial's run", icon=":material/insights:",
                         query_params={"run": Path(doc["best_run"]).name})
        if st.button("Train the best trial as a run", type="primary", key="search-best",
                     help="A normal run (folder, results, exports) with these settings; the same seeds repeat "
                          "the trial's score."):
            try:
                run_id = registry.submit(search.best_config(folder))
            except ValueError as exc:  # the dataset copy is gone, a setting no longer exists: a sentence
                st.error(str(exc))
            else:
                search.record_best_run(folder, run_id)
                set_url("run", run_id)
                st.switch_page("views/train.py")
    rerun_when_done(snap, "search")


ids = searches()
missing = missing_link(ids, "search", "search")
with st.expander("New search", expanded=missing or not st.query_params.get("search")):
    new_search()
if ids:
    follow(pick_from_url("Searches", ids, "search", "search-pick", describe))
