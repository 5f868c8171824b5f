"""Fine-Tune Lab: page config, the shared job registry, the sidebar, navigation. Pages are thin; core/ has the logic."""
import streamlit as st

from core.accounts import users
from core.config import RunConfig, workspace_root
from core.jobs.registry import JobRegistry
from core.runs import find_run
from ui import account

st.set_page_config(page_title="Fine-Tune Lab", page_icon=":material/model_training:", layout="wide")


@st.cache_resource
def job_registry() -> JobRegistry:
    """One registry for every session and tab: jobs outlive reruns and reloads."""
    return JobRegistry(workspace_root() / "runs")


def starting_config(run_id: str) -> RunConfig:
    """A new session (a reload, a shared link) naming a run starts from that run's settings."""
    run_dir = find_run(account.workspace() / "runs", run_id)
    try:
        return RunConfig.from_json((run_dir / "config.json").read_text()) if run_dir else RunConfig()
    except ValueError:  # a config.json edited by hand or from another version: start fresh, never crash
        return RunConfig()


pages = [
    st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/data.py", title="Data", icon=":material/folder:"),
    st.Page("views/model.py", title="Model", icon=":material/neurology:"),
    st.Page("views/train.py", title="Train", icon=":material/model_training:"),
    st.Page("views/results.py", title="Results", icon=":material/insights:"),
    st.Page("views/predict.py", title="Predict", icon=":material/image_search:"),
    st.Page("views/runs.py", title="Runs", icon=":material/history:"),
    st.Page("views/search.py", title="Search", icon=":material/tune:"),
    st.Page("views/crossval.py", title="Cross-validate", icon=":material/view_week:"),
    st.Page("views/review.py", title="Label review", icon=":material/rule:"),
    st.Page("views/ensembles.py", title="Ensembles", icon=":material/hub:"),
]
account.refuse_open_server()
# The sign-in screen keeps the page asked for (a bookmark, a shared link) as the one to open once signed in.
user = st.session_state.user = account.signed_in(keep_page=lambda: st.navigation(pages, position="hidden"))
with st.sidebar:
    project = st.session_state.project = account.project(user)
if project is None:
    st.session_state.workspace, st.session_state.registry = workspace_root(), job_registry()
else:
    st.session_state.workspace = project.home
    st.session_state.registry = job_registry().for_project(project.home, user, users.lookup(workspace_root(), project.owner))
if "config" not in st.session_state:  # what the Model and Train pages edit
    st.session_state.config = starting_config(st.query_params.get("run", ""))

# The dataset and run live in the URL (shareable, survive a reload); switching pages drops query params, so
# the session puts back the last ones seen.
for name in account.URL_IDS:
    if name in st.query_params:
        st.session_state[f"url-{name}"] = st.query_params[name]
    elif f"url-{name}" in st.session_state:
        st.query_params[name] = st.session_state[f"url-{name}"]

nav = st.navigation(pages)



KINDS = {"train": "training", "lr-find": "LR sweep", "search": "search", "cv": "cross-validation",
         "leakage": "near-duplicate check", "ensemble": "ensemble"}


@st.fragment(run_every=2.0 if st.session_state.registry.active(None) else None)
def training_status() -> None:
    """Polls on its own while a job is active, so every page shows how the job is doing."""
    active = st.session_state.registry.active(None)
    if not active:
        st.write("idle")
    for snap in active:
        if snap.status != "running":
            where = f"queued #{snap.queue_position}"
        elif snap.stage:
            where = snap.stage[2]
        else:
            where = f"epoch {snap.epoch}/{snap.epochs}" if snap.kind == "train" else snap.phase
        st.progress(snap.progress, text=f"{KINDS.get(snap.kind, snap.kind)} `{snap.id}` {where}")


with st.sidebar:
    key = st.query_params.get("data")
    st.caption("Dataset")
    st.write(f"`{key}`" if key else "none loaded yet")
    config = st.session_state.config
    st.caption("Model")
    st.write(f"{config.model.backbone} · {config.model.strategy}")
    st.caption("Training")
    training_status()
    if project is not None:
        account.project_settings(user, project)
        account.sign_out_button(user)

nav.run()
