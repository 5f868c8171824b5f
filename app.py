"""Fine-Tune Lab: page config, the shared job registry, the sidebar, navigation. Pages are thin; core/ has the logic."""
import streamlit as st

from core.config import RunConfig, workspace_root
from core.jobs import JobRegistry

st.set_page_config(page_title="Fine-Tune Lab", page_icon=":material/model_training:", layout="wide")


@st.cache_resource
def job_registry() -> JobRegistry:
    """One registry for every session and tab: jobs outlive reruns and reloads."""
    return JobRegistry(workspace_root() / "runs")


st.session_state.registry = job_registry()
st.session_state.setdefault("config", RunConfig())  # what the Model and Train pages edit

# The dataset and run live in the URL (shareable, survive a reload); switching pages drops query params, so
# the session puts back the last ones seen.
for name in ("data", "run"):
    if name in st.query_params:
        st.session_state[f"url-{name}"] = st.query_params[name]
    elif f"url-{name}" in st.session_state:
        st.query_params[name] = st.session_state[f"url-{name}"]

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/data.py", title="Data", icon=":material/folder:"),
    st.Page("pages/model.py", title="Model", icon=":material/neurology:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/results.py", title="Results", icon=":material/insights:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
]
nav = st.navigation(pages)

with st.sidebar:
    key = st.query_params.get("data")
    st.caption("Dataset")
    st.write(f"`{key}`" if key else "none loaded yet")
    active = st.session_state.registry.active()
    config = st.session_state.config
    st.caption("Model")
    st.write(f"{config.model.backbone} · {config.model.strategy}")
    st.caption("Training")
    if not active:
        st.write("idle")
    for snap in active:
        where = f"epoch {snap.epoch}/{snap.epochs}" if snap.status == "running" else f"queued #{snap.queue_position}"
        st.progress(snap.progress, text=f"`{snap.id}` {where}")

nav.run()
