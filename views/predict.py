"""Predict: try a trained run, or an ensemble of runs, on new images, each model with its own preprocessing;
download the table as CSV."""
from pathlib import Path

import pandas as pd
import streamlit as st
import torch

from core.data.augment import denormalize
from ui.account import workspace
from core.data.images import IMAGE_EXTENSIONS, to_pil
from core.evaluate.ensemble import EnsemblePredictor, list_ensembles, stamp
from core.evaluate.predict import predictions_csv, top_k, uncertain_below
from core.runs import list_runs
from ui.widgets import pick_run, predictor

SHOWN = 24


@st.cache_resource(max_entries=2, show_spinner=False)
def ensemble_predictor(folder: str, version: float) -> EnsemblePredictor:
    """Loaded once per server while the ensemble and its members' weights stay the same."""
    return EnsemblePredictor.load(Path(folder))


st.title("Predict")
runs = [r for r in list_runs(workspace() / "runs") if (r["run_dir"] / "model.safetensors").is_file()]
ensembles = list_ensembles(workspace() / "ensembles")
if not runs and not ensembles:
    st.info("No trained model yet: train one on the Train page.")
    st.stop()
by_id = {e["id"]: e for e in ensembles}
wanted = st.query_params.get("ensemble")  # a link from the Ensembles page names one
use_ensemble = bool(ensembles) and (not runs or st.radio(
    "Predict with", ["A run", "An ensemble"], index=int(wanted in by_id), horizontal=True,
    key="predict-kind") == "An ensemble")
try:
    if use_ensemble:
        model_id = st.selectbox("Model (an ensemble)", list(by_id), index=list(by_id).index(wanted) if wanted in by_id
                                else 0, key="predict-ensemble", format_func=lambda i: (
            f"{i} · {len(by_id[i]['members'])} models"
            + (f" · {by_id[i]['split']} accuracy {by_id[i]['acc']:.1%}" if by_id[i]["acc"] is not None else "")))
        version = stamp(by_id[model_id]["ensemble_dir"])
        model = ensemble_predictor(str(by_id[model_id]["ensemble_dir"]), version)
    else:
        chosen = pick_run(runs, "Model (a run)", "predict-run", lambda r: f"{r['backbone']} · val accuracy "
                          + (f"{r['val_acc']:.1%}" if r["val_acc"] is not None else "-"))
        model_id, version = chosen["id"], (chosen["run_dir"] / "model.safetensors").stat().st_mtime
        model = predictor(str(chosen["run_dir"]))
except (ValueError, FileNotFoundError) as exc:
    st.error(f"{exc} Pick another {'ensemble' if use_ensemble else 'run'}.")
    st.stop()
shown = model.members[0] if use_ensemble else model  # whose preprocessing the pictures show
if use_ensemble:
    st.caption(f"Classes: {', '.join(model.classes)} · the mean of {len(model.members)} models' probabilities, each "
               "with its own preprocessing: " + ", ".join(
                   f"{m.run_dir.name} ({m.backbone.name}, {m.config.augment.image_size} px, {m.config.augment.resize})"
                   for m in model.members))
else:
    st.caption(f"Classes: {', '.join(model.classes)} · input {model.config.augment.image_size} px, "
               f"resize by {model.config.augment.resize}: the same preprocessing as the run's validation.")

kinds = sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)
files_tab, folder_tab = st.tabs(["Images", "A folder"])
with files_tab:
    files = st.file_uploader("Images", type=kinds, accept_multiple_files=True, key="predict-files")
with folder_tab:
    folder = st.file_uploader("A folder of images", type=kinds, accept_multiple_files="directory",
                              key="predict-folder")
uploads = (files or []) + (folder or [])
if not uploads:
    st.stop()


def classify(uploads: list) -> tuple[list[str], list[tuple[str, str]], torch.Tensor, list]:
    """Once per model and set of uploads: moving the slider reruns the page, not the model."""
    key = (use_ensemble, model_id, version, tuple(u.file_id for u in uploads))
    if (cached := st.session_state.get("predict-cache")) and cached[0] == key:
        return cached[1]
    with st.spinner(f"Classifying {len(uploads)} images..."):
        read, skipped, probs = model.classify((str(i), u.getvalue()) for i, u in enumerate(uploads))
    read = [uploads[int(i)] for i in read]  # by position: two uploads may share a file name
    skipped = [(uploads[int(i)].name, reason) for i, reason in skipped]
    pictures = [to_pil(denormalize(shown.tensor(u.getvalue()), shown.backbone.mean, shown.backbone.std))
                for u in read[:SHOWN]]
    result = [u.name for u in read], skipped, probs, pictures
    st.session_state["predict-cache"] = (key, result)
    return result


names, skipped, probs, pictures = classify(uploads)
for name, reason in skipped:
    st.warning(f"{name} was skipped: {reason}")
if not names:
    st.error("None of the files could be read as an image. Upload JPEG, PNG, TIFF or another common format.")
    st.stop()

c1, c2 = st.columns(2)
k = c1.slider("Classes shown per image", 1, len(model.classes), min(3, len(model.classes)), key="predict-k")
threshold = c2.slider("Uncertain below", 0.0, 1.0, round(uncertain_below(model), 2), 0.01, key="predict-uncertain",
                      help="A prediction whose top probability is below this is flagged for a person to check. The "
                           "default comes from the validation images: half of the model's mistakes there were less "
                           "sure than this.")
ranked = top_k(probs, model.classes, k)
table = pd.DataFrame({"file": names, "top-1": [r[0][0] for r in ranked], "confidence": [r[0][1] for r in ranked],
                      "uncertain": [r[0][1] < threshold for r in ranked],
                      "next": [", ".join(f"{c} {p:.0%}" for c, p in r[1:]) for r in ranked]})
doubtful = int(table["uncertain"].sum())
if doubtful:
    st.warning(f"{doubtful} of {len(names)} predictions are uncertain (below {threshold:.0%}): have a person check "
               "them; sort the table by 'uncertain'.")
st.caption("Probabilities are calibrated: the model's temperature, fitted on its held-out images (1 when they showed "
           "it already calibrated), is applied.")
st.dataframe(table, hide_index=True, width="stretch", key="predict-table",
             column_config={"confidence": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1),
                            "uncertain": st.column_config.CheckboxColumn()})
st.download_button("Download the predictions (CSV)", predictions_csv(names, probs, model.classes, threshold),
                   file_name=f"predictions-{model_id}.csv", mime="text/csv", on_click="ignore", key="predict-csv")

if len(names) > SHOWN:
    st.caption(f"The first {SHOWN} of {len(names)} images:")
cols = st.columns(4)
for i, (name, picture, r) in enumerate(zip(names, pictures, ranked)):
    with cols[i % 4]:
        st.image(picture, caption=name, width="stretch")
        for cls, p in r:
            st.progress(p, text=f"{cls} {p:.1%}")
