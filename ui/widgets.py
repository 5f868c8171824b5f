"""Streamlit pieces that more than one page shows. Logic stays in core/; this only lays it out."""
from pathlib import Path

import streamlit as st

from core.deploy import export
from core.deploy import model_card
from core.data.images import ImageError, decode_image, to_pil
from core.evaluate.predict import Predictor


def downloads(run_dir: Path, run_id: str, every_format: bool = False) -> None:
    """Files built from disk when clicked (never held in the session). every_format adds the deployable exports,
    which are built and checked once, on request, because an ONNX export takes seconds."""
    if not export.has_weights(run_dir):
        st.caption("No weights yet: they are written when the first epoch ends.")
        return
    d1, d2 = st.columns(2)
    d1.download_button("Download weights (model.safetensors)", data=lambda: export.weights_bytes(run_dir),
                       file_name=f"{run_id}.safetensors", on_click="ignore", key="download-weights")
    d2.download_button("Download the model package (zip)", data=lambda: export.package(run_dir),
                       file_name=f"finetune-lab-{run_id}.zip", mime="application/zip", on_click="ignore",
                       type="primary", key="download-package")
    if not every_format:
        return
    d1.download_button("Download the model card (Markdown)", data=lambda: model_card.card(run_dir),
                       file_name=f"{run_id}-model-card.md", mime="text/markdown", on_click="ignore",
                       key="download-card")
    for fmt, label, col in (("torchscript", "TorchScript", d1), ("onnx", "ONNX", d2)):
        path = export.cached(run_dir, fmt)
        if path.is_file():
            col.download_button(f"Download {label} ({path.name})", data=path.read_bytes, file_name=f"{run_id}-{path.name}",
                                on_click="ignore", key=f"download-{fmt}")
        elif col.button(f"Build the {label} export", key=f"build-{fmt}"):
            with st.spinner(f"Exporting to {label} and checking it against the run's model..."):
                try:
                    export.cached(run_dir, fmt, build=True)
                except export.ExportError as exc:
                    st.error(str(exc))
                else:
                    st.rerun()


@st.cache_resource(max_entries=4, show_spinner=False)
def _predictor(run_dir: str, weights_mtime: float) -> Predictor:
    return Predictor.load(Path(run_dir))


def predictor(run_dir: str) -> Predictor:
    """The run's model, loaded once per server while its weights file stays the same."""
    return _predictor(run_dir, (Path(run_dir) / "model.safetensors").stat().st_mtime)


def thumbnail(col, data_dir: str | None, path: str, caption: str) -> None:
    try:
        if data_dir is None:
            raise ImageError("the dataset copy is gone")
        picture = to_pil(decode_image(Path(data_dir) / path, min_side=128))
        picture.thumbnail((192, 192))
        col.image(picture, caption=caption)
    except (ImageError, OSError) as exc:
        col.caption(f"{path}: {exc}")


def pick_run(runs: list[dict], label: str, key: str, describe) -> dict:
    """A run chooser that opens on the URL's run and puts the choice back into the URL."""
    ids = [r["id"] for r in runs]
    by_id = {r["id"]: r for r in runs}
    wanted = st.query_params.get("run")
    run_id = st.selectbox(label, ids, index=ids.index(wanted) if wanted in ids else 0, key=key,
                          format_func=lambda i: f"{i} · {describe(by_id[i])}")
    set_url("run", run_id)
    return by_id[run_id]


def set_url(name: str, value: str) -> None:
    """Put the dataset or run into the URL and the session (app.py restores it after a page switch)."""
    st.query_params[name] = value
    st.session_state[f"url-{name}"] = value
