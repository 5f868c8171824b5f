"""Model: which pretrained backbone, and how much of it to fine-tune."""
import hashlib
from pathlib import Path

import pandas as pd
import streamlit as st

from core import backbones, strategies, weights
from core.config import workspace_root

st.title("Model")
config = st.session_state.config


@st.cache_data(show_spinner=False)
def group_sizes(name: str) -> list[int]:
    b = backbones.get(name)
    return backbones.group_sizes(b, b.build())


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

labels = {"linear-probe": "Frozen feature extractor + new head (fastest; best on small data)",
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

groups = strategies.plan(group_sizes(backbone.name), backbone, config.model, config.optim.lr)
table = pd.DataFrame(groups).rename(columns={"group": "layer group", "params": "parameters",
                                             "trainable_params": "trainable parameters", "lr": "learning rate"})
st.dataframe(table, hide_index=True, width="stretch")
trainable = sum(g["trainable_params"] for g in groups)
st.metric("Trainable parameters", f"{trainable:,}", f"{trainable / max(sum(g['params'] for g in groups), 1):.1%} of the model",
          delta_color="off")

with st.expander("Import a weights file for this backbone"):
    upload = st.file_uploader("A .safetensors or .pth state dict (only tensors are read; pickled code is refused)",
                              type=["safetensors", "pth", "pt"], max_upload_size=2048)
    install = st.checkbox("Also install it as this backbone's pretrained weights (torchvision backbones)")
    if upload is not None and st.button("Check and use it"):
        data = upload.getvalue()
        target = workspace_root() / "imported" / f"{hashlib.sha256(data).hexdigest()[:16]}{Path(upload.name).suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
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
