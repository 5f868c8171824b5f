"""Model: which pretrained backbone, and how much of it to fine-tune."""
import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from core.models import backbones
from core.models import strategies
from core.models import weights
from ui.account import current_user, workspace
from core.data.validation import open_dataset

st.title("Model")
config = st.session_state.config


ASSUMED_CLASSES = 2  # the head's size while no usable dataset is loaded


@st.cache_data(show_spinner=False)
def group_sizes(name: str, num_classes: int) -> list[int]:
    """With the head a run builds for `num_classes`: ImageNet's 1000-class head would overstate a linear probe."""
    b = backbones.get(name)
    return backbones.group_sizes(b, backbones.build_model(b, num_classes))


def dataset_classes() -> tuple[int, str]:
    """The loaded dataset's class count, or ASSUMED_CLASSES and why there is none to use."""
    key = st.query_params.get("data")
    if not key:
        return ASSUMED_CLASSES, "No dataset is loaded yet"
    try:
        n = len(open_dataset(key, workspace(), config.data).classes)
    except ValueError as exc:  # DataError too
        return ASSUMED_CLASSES, f"The dataset could not be opened ({exc})"
    return (n, "") if n >= 2 else (ASSUMED_CLASSES, "The dataset has fewer than two classes")


def save_upload(upload: UploadedFile, folder: Path) -> Path:
    """The upload written to `folder` in chunks and named by its sha256, without a second copy of it in memory."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    upload.seek(0)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".part", delete=False) as out:
        try:
            while chunk := upload.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        except BaseException:
            Path(out.name).unlink(missing_ok=True)
            raise
    target = folder / f"{digest.hexdigest()[:16]}{Path(upload.name).suffix}"
    os.replace(out.name, target)
    return target


@st.cache_data(ttl=300, show_spinner=False)
def online() -> bool:
    return weights.network_available("https://download.pytorch.org")


rows = []
for b in backbones.REGISTRY.values():
    meta = b.metadata()
    rows.append({"backbone": b.name, "parameters (M)": round((meta["params"] or 0) / 1e6, 1),
                 "input px": b.input_size, "ImageNet top-1 %": meta["imagenet_top1"], "GFLOPS": meta["gflops"],
                 "weights here": weights.availability(b, online())})
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
st.caption("Weights here: *packaged* install with the app, *cached* were downloaded before, *downloadable* "
           "will be fetched, *missing* means random initialisation unless you import a weights file below.")

names = list(backbones.REGISTRY)
chosen = st.selectbox("Backbone", names, index=names.index(config.model.backbone), key="model-backbone")
if chosen != config.model.backbone:
    config.augment.image_size = backbones.get(chosen).input_size  # its native size; the Train page can change it
config.model.backbone = chosen
backbone = backbones.get(chosen)

labels = {"auto": "Automatic: a new head on frozen pretrained features, or full fine-tuning when the weights are random",
          "linear-probe": "Frozen feature extractor + new head (fastest; best on small data)",
          "full": "Full fine-tuning (every layer trains)", "partial": "Partial: freeze the first layer groups",
          "layerwise": "Layer-wise learning rates (earlier layers learn slower)",
          "gradual": "Gradual unfreezing (head first, then one group at a time)"}
config.model.strategy = st.radio("What to fine-tune", list(labels), format_func=labels.get,
                                 index=list(labels).index(config.model.strategy), key="model-what-to-fine-tune")
n = len(backbone.groups)
if config.model.strategy == "partial":
    config.model.freeze_groups = st.slider("Frozen groups (from the input)", 0, n - 1,
                                           min(config.model.freeze_groups, n - 1), key="model-frozen-groups-from-the-input")
if config.model.strategy == "layerwise":
    config.model.lr_decay = st.slider("Rate decay per group", 0.1, 1.0, config.model.lr_decay, 0.05, key="model-rate-decay-per-group")
if config.model.strategy == "gradual":
    config.model.unfreeze_every = st.number_input("Unfreeze one more group every N epochs", 1, 50,
                                                  config.model.unfreeze_every, key="model-unfreeze-one-more-group-every-n-epochs")
config.model.train_frozen_bn = st.toggle("Update batch-norm statistics in frozen groups",
                                         config.model.train_frozen_bn, key="model-update-batch-norm-statistics-in-frozen-groups")

pretrained = config.model.weights != "random" and (
    config.model.weights != "pretrained" or weights.availability(backbone, online()) != "missing")
used, why = strategies.resolve_strategy(config.model, n, pretrained)
if why:
    (st.info if pretrained else st.warning)(why)
num_classes, no_dataset = dataset_classes()
groups = strategies.plan(group_sizes(backbone.name, num_classes), backbone,
                         dataclasses.replace(config.model, strategy=used), config.optim.lr)
table = pd.DataFrame(groups).rename(columns={"group": "layer group", "params": "parameters",
                                             "trainable_params": "trainable parameters", "lr": "learning rate"})
st.dataframe(table, hide_index=True, width="stretch")
trainable = sum(g["trainable_params"] for g in groups)
st.metric("Trainable parameters", f"{trainable:,}", f"{trainable / max(sum(g['params'] for g in groups), 1):.1%} of the model",
          delta_color="off")
st.caption(f"{no_dataset}: the head's size assumes {num_classes} classes." if no_dataset
           else f"The head has {num_classes} outputs, one per class of the loaded dataset.")

with st.expander("Import a weights file for this backbone"):
    upload = st.file_uploader("A .safetensors or .pth state dict (only tensors are read; pickled code is refused)",
                              type=["safetensors", "pth", "pt"], max_upload_size=2048)
    install = current_user().admin and st.checkbox(
        "Also install it as this backbone's pretrained weights (torchvision backbones), for every later run")
    if not current_user().admin:
        st.caption("Only an admin can install weights that every user's runs would start from; this file is used "
                   "for your runs in this project.")
    if upload is not None and st.button("Check and use it"):
        target = save_upload(upload, workspace() / "imported")
        try:
            weights.match_state(backbone, weights.read_state_file(target))
            if install:
                weights.install(backbone, target)
        except weights.WeightsError as exc:
            target.unlink(missing_ok=True)
            st.error(str(exc))
        else:
            config.model.weights = "pretrained" if install else str(target)
            st.success(f"{upload.name} fits {backbone.name}" + (" and is installed." if install else "; it will be used."))
st.caption(f"Weights for this run: **{config.model.weights}**")
