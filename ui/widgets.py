"""Streamlit pieces that more than one page shows. Logic stays in core/; this only lays it out."""
from pathlib import Path

import streamlit as st

from core.config import DataConfig
from core.data.groups import MAX_CSV_BYTES
from core.deploy import export
from core.deploy import model_card
from core.data.images import ImageError, decode_image, to_pil
from core.evaluate.metrics import most_confused
from core.evaluate.predict import Predictor
from core.runs import replace_atomically
from ui import charts


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


def release_uploads(files: list) -> None:
    """Drop uploaded files from the server's memory once their bytes are on disk: Streamlit keeps every upload
    in memory until the session ends (its issues 9218, 12607), which a shared server cannot afford."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    manager = getattr(ctx, "uploaded_file_mgr", None)
    for file in files:
        if manager is not None and hasattr(manager, "remove_file") and getattr(file, "file_id", None):
            manager.remove_file(session_id=ctx.session_id, file_id=file.file_id)


def set_url(name: str, value: str) -> None:
    """Put the dataset or run into the URL and the session (app.py restores it after a page switch)."""
    st.query_params[name] = value
    st.session_state[f"url-{name}"] = value


GROUP_SOURCES = {"none": "No groups: every image stands alone", "pattern": "A pattern in the file path",
                 "level": "A folder level below the class folder", "csv": "A CSV file (path,group)"}


def group_settings(data: DataConfig, dataset_root: Path, key: str) -> None:
    """Where patient/specimen ids come from, set on `data` in place: images of one group then never straddle
    two splits or folds. An uploaded CSV is stored beside the dataset copy (data, bounded, never executed)."""
    current = "pattern" if data.group_pattern else "level" if data.group_level else "csv" if data.groups else "none"
    source = st.radio("Images of one patient or specimen", list(GROUP_SOURCES), list(GROUP_SOURCES).index(current),
                      format_func=GROUP_SOURCES.get, key=f"{key}-groups", horizontal=True,
                      help="Several images of one patient in both training and validation inflate the score.")
    data.groups, data.group_pattern, data.group_level = "", "", 0
    if source == "pattern":
        data.group_pattern = st.text_input("Pattern (a regular expression with a part named group)",
                                           value=r"(?P<group>P\d+)_", key=f"{key}-pattern",
                                           help=r"(?P<group>P\d+)_ finds P017 in tumour/P017_slice3.png")
    elif source == "level":
        data.group_level = st.number_input("Folder level (1 = the folder right below the class folder)", 1, 20, 1,
                                           key=f"{key}-level")
    elif source == "csv":
        stored = dataset_root / "groups.csv"
        upload = st.file_uploader("Groups CSV with columns path,group", type=["csv"], key=f"{key}-csv")
        if upload is not None:
            if upload.size > MAX_CSV_BYTES:
                st.error(f"That CSV is {upload.size / 1e6:.0f} MB; at most {MAX_CSV_BYTES // 1024**2} MB is read.")
            else:
                with replace_atomically(stored) as tmp:
                    tmp.write_bytes(upload.getvalue())
        if stored.is_file():
            data.groups = str(stored)
            st.caption(f"Using {stored.name} ({stored.stat().st_size:,} bytes), kept with the dataset.")
        else:
            st.caption("Upload the CSV: one row per image, its path as the Data page lists it, and its group.")


def pick_from_url(label: str, ids: list[str], param: str, key: str, describe=None) -> str:
    """A chooser whose choice lives in the URL (?param=id), so a link, a job just started and the user's own pick
    all show the same thing. Call after a `missing_link` check; ids must not be empty. `describe` must not change
    while the page is open (a status would: the option would no longer match the one chosen)."""
    chosen = st.query_params.get(param, "")
    st.session_state[key] = chosen if chosen in ids else ids[0]
    pick = st.selectbox(label, ids, key=key, format_func=(lambda i: f"{i} · {describe(i)}") if describe else str,
                        on_change=lambda: set_url(param, st.session_state[key]))
    if pick != chosen:
        set_url(param, pick)
        if not chosen:
            st.rerun()  # from the top, so a live view polls when the newest is running
    return pick


def missing_link(ids: list[str], param: str, noun: str) -> bool:
    """Say so when the URL names something that is not here (deleted, another server's, or mistyped)."""
    chosen = st.query_params.get(param, "")
    if chosen and chosen not in ids:
        st.warning(f"There is no {noun} {chosen!r} here; start one below or pick another.")
        return True
    return False


def job_progress(registry, snap, key: str, doing: str = "") -> None:
    """A job of fits (search, cross-validation, ensemble): where it is, time left, Stop; its error once it ended."""
    if snap is None:
        return
    if snap.active:
        where = snap.stage[2] if snap.stage else doing or snap.status
        epoch = f" · epoch {snap.epoch}/{snap.epochs}" if snap.epoch else ""
        left = f", about {snap.eta:.0f} s left" if snap.eta is not None else ""
        st.progress(snap.progress, text=f"{where}{epoch}{left}")
        if st.button("Stop", key=f"{key}-stop"):
            registry.stop(snap.id)
    if snap.error:
        st.error(snap.error)


def resume_button(registry, kind: str, folder: Path, status: str, key: str, label: str = "Resume") -> None:
    """Offered for what ended early (stopped, failed, or its worker died with the server); kept work is kept."""
    if status in ("stopped", "interrupted", "failed") and st.button(label, key=f"{key}-resume"):
        try:
            registry.resume(kind, folder)
        except ValueError as exc:  # already running in another tab
            st.error(str(exc))
        else:
            st.rerun()


def rerun_when_done(snap, key: str) -> None:
    """Inside a polling fragment: one whole-page rerun when the followed job ends, so the polling stops."""
    if snap is not None and not snap.active and st.session_state.get(f"{key}-seen") == snap.id:
        st.session_state[f"{key}-seen"] = None
        st.rerun()
    if snap is not None and snap.active:
        st.session_state[f"{key}-seen"] = snap.id


def confusion_view(matrix: list[list[int]], classes: list[str], key: str, normalize: bool = False,
                   pickable: bool = False) -> tuple[int, int] | None:
    """The confusion matrix and, from charts.DENSE classes on (too many cells to search by eye), the most confused
    pairs beside it. With pickable, a click on a pair returns its (true, predicted) class indices once, on the rerun
    the click causes (the table keeps the row selected), so the page's own cell pickers can move on from it."""
    chart = charts.confusion(matrix, classes, normalize=normalize)
    if len(classes) < charts.DENSE:
        st.altair_chart(chart, width="stretch")
        return None
    left, right = st.columns([3, 2])
    left.altair_chart(chart, width="stretch")
    pairs = most_confused(matrix, classes)
    if not pairs:
        right.info("No image was mistaken for another class.")
        return None
    right.caption("Most confused pairs" + (": click one to see its images." if pickable else "."))
    table = right.dataframe(
        pairs, hide_index=True, width="stretch", key=f"{key}-pairs",
        column_config={"true": "true class", "predicted": "predicted as", "count": "images",
                       "share": st.column_config.NumberColumn("share of the true class", format="percent")},
        **({"on_select": "rerun", "selection_mode": "single-row"} if pickable else {}))
    if not pickable:
        return None
    rows, seen = table.selection.rows, st.session_state.get(f"{key}-pairs-seen")
    st.session_state[f"{key}-pairs-seen"] = rows
    if not rows or rows == seen or rows[0] >= len(pairs):
        return None
    pair = pairs[rows[0]]
    return classes.index(pair["true"]), classes.index(pair["predicted"])


def calibration_view(before: dict, after: dict | None) -> None:
    """ECE and the reliability diagram as trained and after the temperature, side by side."""
    c1, c2 = st.columns(2)
    c1.metric("Calibration error (ECE) as trained", f"{before['ece']:.3f}",
              help="How far the confidence is from the accuracy, on average: 0 is perfectly calibrated.")
    c1.altair_chart(charts.reliability(before["reliability"]), width="stretch")
    if after:
        c2.metric("After temperature scaling", f"{after['ece']:.3f}", delta=f"{after['ece'] - before['ece']:+.3f}",
                  delta_color="inverse")
        c2.altair_chart(charts.reliability(after["reliability"]), width="stretch")
