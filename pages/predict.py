"""Predict: try a trained run on new images, with the run's own preprocessing; download the table as CSV."""
import pandas as pd
import streamlit as st

from core.augment import denormalize
from core.config import workspace_root
from core.images import IMAGE_EXTENSIONS, ImageError, to_pil
from core.predict import predictions_csv, top_k
from core.runs import list_runs
from ui import pick_run, predictor

SHOWN = 24

st.title("Predict")
runs = [r for r in list_runs(workspace_root() / "runs") if (r["run_dir"] / "model.safetensors").is_file()]
if not runs:
    st.info("No trained model yet: train one on the Train page.")
    st.stop()
chosen = pick_run(runs, "Model (a run)", "predict-run", lambda r: f"{r['backbone']} · val accuracy "
                  + (f"{r['val_acc']:.1%}" if r["val_acc"] is not None else "-"))
run_id = chosen["id"]
try:
    model = predictor(str(chosen["run_dir"]))
except (ValueError, FileNotFoundError) as exc:
    st.error(f"{exc} Pick another run.")
    st.stop()
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

names, tensors = [], []
for upload in uploads:
    try:
        tensors.append(model.tensor(upload.getvalue()))
        names.append(upload.name)
    except ImageError as exc:
        st.warning(f"{upload.name} was skipped: {exc}")
if not tensors:
    st.error("None of the files could be read as an image. Upload JPEG, PNG, TIFF or another common format.")
    st.stop()
with st.spinner(f"Classifying {len(tensors)} images..."):
    probs = model.probabilities(tensors)

k = st.slider("Classes shown per image", 1, len(model.classes), min(3, len(model.classes)), key="predict-k")
ranked = top_k(probs, model.classes, k)
table = pd.DataFrame({"file": names, "top-1": [r[0][0] for r in ranked], "confidence": [r[0][1] for r in ranked],
                      "next": [", ".join(f"{c} {p:.0%}" for c, p in r[1:]) for r in ranked]})
st.dataframe(table, hide_index=True, width="stretch", key="predict-table",
             column_config={"confidence": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1)})
st.download_button("Download the predictions (CSV)", predictions_csv(names, probs, model.classes),
                   file_name=f"predictions-{run_id}.csv", mime="text/csv", on_click="ignore", key="predict-csv")

if len(tensors) > SHOWN:
    st.caption(f"The first {SHOWN} of {len(tensors)} images:")
cols = st.columns(4)
for i, (name, image, r) in enumerate(list(zip(names, tensors, ranked))[:SHOWN]):
    with cols[i % 4]:
        st.image(to_pil(denormalize(image, model.backbone.mean, model.backbone.std)), caption=name, width="stretch")
        for cls, p in r:
            st.progress(p, text=f"{cls} {p:.1%}")
