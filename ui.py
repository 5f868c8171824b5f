"""Streamlit pieces that more than one page shows. Logic stays in core/; this only lays it out."""
from pathlib import Path

import streamlit as st

from core import export


def downloads(run_dir: Path, run_id: str) -> None:
    """Weights and the model package, built from disk when clicked (never held in the session)."""
    if not export.has_weights(run_dir):
        st.caption("No weights yet: they are written when the first epoch ends.")
        return
    d1, d2 = st.columns(2)
    d1.download_button("Download weights (model.safetensors)", data=lambda: export.weights_bytes(run_dir),
                       file_name=f"{run_id}.safetensors", on_click="ignore", key="download-weights")
    d2.download_button("Download the model package (zip)", data=lambda: export.package(run_dir),
                       file_name=f"finetune-lab-{run_id}.zip", mime="application/zip", on_click="ignore",
                       type="primary", key="download-package")


def set_url(name: str, value: str) -> None:
    """Put the dataset or run into the URL and the session (app.py restores it after a page switch)."""
    st.query_params[name] = value
    st.session_state[f"url-{name}"] = value
