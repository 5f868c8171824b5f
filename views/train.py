"""Train: augmentation with a live preview, hyperparameters, processes and clusters, the LR finder, and the live
training view."""
import copy
import os
from pathlib import Path

import streamlit as st
import torch

from core.models import backbones
from ui import charts
from core.data.augment import preview
from ui.account import workspace
from core.train.engine import MONITORS
from core.config import ENGINES
from core.train.precision import PRECISIONS
from core.data.images import decode_image, to_pil
from core.train.schedules import SCHEDULES
from core.data.sources import DataError
from core.data.validation import open_dataset
from core.jobs import launch
from core.jobs.registry import JobError
from ui.widgets import confusion_view, downloads, set_url

st.title("Train")
registry = st.session_state.registry
config = st.session_state.config


@st.fragment(run_every=1.0 if (s := registry.snapshot(st.query_params.get("run", ""))) and s.active else None)
def live() -> None:
    """Redrawn every second while the job is active; the worker never touches Streamlit."""
    snap = registry.snapshot(st.query_params.get("run", ""))
    if snap is None:
        st.info("That run is not in memory any more (it ended a while ago, or the server restarted); "
                "its results are kept on disk.")
        st.page_link("views/results.py", label="Open its results", icon=":material/insights:",
                     query_params={"run": st.query_params.get("run", "")})
        return
    if not snap.active and st.session_state.get("seen_active") == snap.id:
        # The job just ended: the whole page once more (polling stops), before this run draws anything. A download
        # button drawn here would be revoked by that rerun while a person clicks it, and the download never came.
        st.session_state.seen_active = None
        st.rerun()
    if snap.active:
        st.session_state.seen_active = snap.id
    if snap.status == "queued":
        st.info(f"Queued: position {snap.queue_position}. It starts when the running job ends.")
    left = f", about {snap.eta:.0f} s left" if snap.eta is not None else ""
    phase = {"features": "computing features", "train": "training", "val": "validating",
             "solve": "solving the head, choosing its L2 strength: fit"}.get(snap.phase, snap.status)
    nproc = snap.config.get("distributed", {}).get("nproc", 1)
    st.progress(snap.progress, text=f"{snap.status} · epoch {snap.epoch}/{snap.epochs} · {phase} "
                                    f"batch {snap.batch}/{snap.batches}{left}"
                                    + (f" · {nproc} processes" if nproc > 1 else ""))
    if snap.active and st.button("Stop", type="secondary", key="stop"):
        registry.stop(snap.id)
    if snap.error:
        st.error(snap.error)
    batches = [{"step": x, "loss": y} for x, y in snap.batch_losses]
    c1, c2 = st.columns(2)
    c1.altair_chart(charts.curves(list(snap.history), batches, "loss"), width="stretch")
    c2.altair_chart(charts.curves(list(snap.history), None, "acc"), width="stretch")
    if snap.confusion:
        st.caption(f"Validation confusion matrix, epoch {snap.history[-1]['epoch'] if snap.history else '?'}")
        confusion_view([list(r) for r in snap.confusion], list(snap.classes), "train-live")
    if not snap.active:
        downloads(snap.run_dir, snap.id)
        st.page_link("views/results.py", label="Open the results", icon=":material/insights:",
                     query_params={"run": snap.id})
    with st.expander("Log", expanded=bool(snap.error)):
        for _, level, text in snap.messages:
            (st.warning if level == "warning" else st.error if level == "error" else st.write)(text)


key = st.query_params.get("data")
if not key:
    st.info("Load a dataset on the Data page first.")
    if st.query_params.get("run"):
        live()
    st.stop()
try:
    dataset = open_dataset(key, workspace(), config.data)
except (DataError, ValueError) as exc:
    st.error(str(exc))
    st.stop()
config.data.source = str(dataset.data_dir)
backbone = backbones.get(config.model.backbone)
aug = config.augment

with st.expander("Augmentation", expanded=False):
    c1, c2, c3 = st.columns(3)
    aug.image_size = c1.number_input("Image size (px)", 32, 1024, aug.image_size, 8, disabled=backbone.fixed_size,
                                     help="Images are resized to this square; the backbone's native size is "
                                          f"{backbone.input_size}.", key="train-image-size-px")
    aug.resize = c1.selectbox("Fit to square by", ["crop", "squash", "pad"], ["crop", "squash", "pad"].index(aug.resize),
                              help="crop: centre crop; squash: ignore the aspect ratio; pad: keep all pixels.", key="train-fit-to-square-by")
    aug.crop_scale_min = c1.slider("Random crop keeps at least", 0.1, 1.0, aug.crop_scale_min, 0.05,
                                   help="1.0 turns random cropping off.", key="train-random-crop-keeps-at-least")
    aug.hflip = c2.slider("Horizontal flip probability", 0.0, 1.0, aug.hflip, 0.05, key="train-horizontal-flip-probability")
    aug.vflip = c2.slider("Vertical flip probability", 0.0, 1.0, aug.vflip, 0.05, help="For microscopy, satellite...", key="train-vertical-flip-probability")
    aug.rotation = c2.slider("Rotation (degrees)", 0.0, 180.0, aug.rotation, 5.0, key="train-rotation-degrees")
    aug.color_jitter = c3.slider("Colour jitter", 0.0, 1.0, aug.color_jitter, 0.05, key="train-colour-jitter")
    aug.grayscale = c3.slider("Random grayscale", 0.0, 1.0, aug.grayscale, 0.05, key="train-random-grayscale")
    aug.blur = c3.slider("Gaussian blur", 0.0, 1.0, aug.blur, 0.05, key="train-gaussian-blur")
    aug.erasing = c3.slider("Random erasing", 0.0, 1.0, aug.erasing, 0.05, key="train-random-erasing")
    train = dataset.split("train")[:: max(1, len(dataset.split("train")) // 4)][:4]
    copies = 5 if aug.is_random() else 1  # with nothing random, every copy would be the same picture
    grid = preview([decode_image(dataset.data_dir / s.path, aug.resize_side()) for s in train], aug,
                   backbone.mean, backbone.std, copies=copies)
    if copies == 1:
        st.caption("Nothing random is on: each picture as training sees it.")
        grid = [[row[0] for row in grid]]
    for row in grid:
        for col, img in zip(st.columns(5), row):
            col.image(to_pil(img), width="stretch")
    if aug.is_random() and config.model.strategy == "linear-probe":
        st.caption("With random augmentation the linear probe cannot use cached features: expect slower epochs.")

o, r = config.optim, config.regularize
with st.expander("Hyperparameters", expanded=True):
    c1, c2, c3 = st.columns(3)
    o.solver = c1.selectbox("Head training", ["auto", "loop"], ["auto", "loop"].index(o.solver), key="train-solver",
                            help="auto: a linear probe on cached features (the default) has its head solved to "
                                 "convergence, its L2 strength chosen by cross-validation; the optimizer, learning "
                                 "rate, epochs, weight decay and dropout below then do not apply. loop: epochs of "
                                 "the optimizer, as for every other strategy.")
    o.epochs = c1.number_input("Epochs", 1, 500, o.epochs, help="Passes over the training images.", key="train-epochs")
    o.batch_size = c1.number_input("Batch size", 1, 512, o.batch_size, help="Images per step; lower it if memory runs out.", key="train-batch-size")
    o.optimizer = c1.selectbox("Optimizer", ["adamw", "adam", "sgd"], ["adamw", "adam", "sgd"].index(o.optimizer), key="train-optimizer")
    o.lr = c2.number_input("Learning rate", 1e-6, 1.0, o.lr, format="%.5f", help="The head's rate; try the finder below.", key="train-learning-rate")
    o.schedule = c2.selectbox("Schedule", SCHEDULES, SCHEDULES.index(o.schedule), key="train-schedule")
    o.weight_decay = c2.number_input("Weight decay (L2)", 0.0, 1.0, o.weight_decay, format="%.5f", key="train-weight-decay-l2")
    r.l1 = c2.number_input("L1 penalty", 0.0, 1.0, r.l1, format="%.6f", key="train-l1-penalty")
    config.model.dropout = c3.slider("Dropout before the head", 0.0, 0.9, config.model.dropout, 0.05, key="train-dropout-before-the-head")
    r.label_smoothing = c3.slider("Label smoothing", 0.0, 0.5, r.label_smoothing, 0.05, key="train-label-smoothing")
    r.class_weighting = c3.selectbox("Class imbalance", ["none", "loss", "sampler"],
                                     ["none", "loss", "sampler"].index(r.class_weighting),
                                     help="loss: weighted cross-entropy; sampler: balanced batches.", key="train-class-imbalance")
    config.early_stop.patience = c3.number_input("Early stopping patience (0 = off)", 0, 100, config.early_stop.patience, key="train-early-stopping-patience-0-off")
    config.early_stop.monitor = c3.selectbox("Best epoch by", MONITORS, MONITORS.index(config.early_stop.monitor), key="train-best-epoch-by")

with st.expander("Speed"):
    c1, c2, c3 = st.columns(3)
    config.engine = c1.selectbox("Feature engine", ENGINES, ENGINES.index(config.engine), key="train-engine",
                                 help="What computes the frozen features (and runs Predict): auto takes the fastest "
                                      "one here that agrees with PyTorch (onnxruntime on a CPU: about 3x eager PyTorch).")
    config.precision = c2.selectbox("Training precision", PRECISIONS, PRECISIONS.index(config.precision),
                                    key="train-precision",
                                    help="For training through the backbone. auto: float32 on a CPU, bfloat16 or "
                                         "float16 (with a gradient scaler) on a GPU.")
    config.channels_last = c3.checkbox("channels_last memory layout", config.channels_last, key="train-channels-last",
                                       help="Faster convolutions (about 1.6x training through the backbone on a "
                                            "CPU), the same arithmetic.")


d = config.distributed
with st.expander("Several processes and machines"):
    gpus = torch.cuda.device_count()
    c1, c2, c3 = st.columns(3)
    d.nproc = c1.number_input("Processes on this machine", 1, max(gpus, os.cpu_count() or 1, 1), d.nproc,
                              key="train-nproc", help="One run on several processes (torchrun, DistributedDataParallel): "
                              "one per GPU, or a share of the CPU cores each. The batch size stays the global one.")
    d.max_restarts = c2.number_input("Restarts after a failure", 0, 10, d.max_restarts, key="train-max-restarts",
                                     help="torchrun restarts every process after one fails, resuming from the last "
                                          "finished epoch.")
    d.sync_bn = c3.checkbox("Synchronise batch norm", d.sync_bn and bool(gpus), disabled=not gpus,
                            key="train-sync-bn", help="Batch statistics over the global batch (SyncBatchNorm). "
                            "GPUs only: PyTorch does not synchronise batch norm on CPUs.")
    if o.batch_size % d.nproc:
        st.warning(f"The batch size ({o.batch_size}) must split evenly over {d.nproc} processes: use a multiple of "
                   f"{d.nproc}.")
    st.markdown("**On a cluster**: the same run on several machines, each with the processes above. Run folder and "
                "data must be on a filesystem every machine shares.")
    c1, c2, c3, c4 = st.columns(4)
    machines = c1.number_input("Machines", 1, 256, 2, key="train-nnodes")
    master = c2.text_input("Machine 0 (HOST:PORT)", f"node0:{launch.PORT}", key="train-master")
    data_there = c3.text_input("Data on the cluster", config.data.source, key="train-cluster-data")
    out = c4.text_input("Run folder on the cluster", f"runs/{backbone.name}-run", key="train-cluster-out")
    cluster = copy.deepcopy(config)
    cluster.distributed.nnodes, cluster.data.source = machines, data_there
    commands, slurm, kube = st.tabs(["Commands", "Slurm (sbatch)", "Kubernetes (PyTorchJob)"])
    commands.caption(f"Save the config below as {out}.config.json, then run each line on its machine.")
    commands.code("\n".join(launch.commands(cluster, out, master, f"{out}.config.json")), language="bash")
    commands.download_button("Download the config (JSON)", launch.cluster_config(cluster).to_json(),
                             file_name=f"{Path(out).name}.config.json",
                             mime="application/json", on_click="ignore", key="train-cluster-config")
    slurm.code(launch.sbatch(cluster, out, gpus_per_node=gpus), language="bash")
    kube.code(launch.kubernetes(cluster, out, gpus_per_node=gpus), language="yaml")


@st.fragment(run_every=1.0 if (s := registry.snapshot(st.session_state.get("lr-job", ""))) and s.active else None)
def lr_sweep() -> None:
    """The learning-rate finder is a job like training: it runs in a worker, shows progress and can be stopped."""
    if st.button("Find a learning rate", help="A short sweep on exactly what Start would train; about a minute."):
        try:
            st.session_state["lr-job"] = registry.lr_find(copy.deepcopy(config), steps=60)
        except JobError as exc:  # over a quota on a shared server
            st.error(str(exc))
        else:
            st.rerun(scope="fragment")
    snap = registry.snapshot(st.session_state.get("lr-job", ""))
    if snap is None:
        return
    if snap.active:
        left = f", about {snap.eta:.0f} s left" if snap.eta is not None else ""
        where = f"sweep step {snap.batch}/{snap.batches}" if snap.phase == "lr-find" else (
            "computing features" if snap.phase == "features" else f"queued #{snap.queue_position}" if snap.status == "queued"
            else "starting")
        st.progress(snap.progress, text=f"Learning-rate sweep: {where}{left}")
        if st.button("Stop the sweep", key="lr-stop"):
            registry.stop(snap.id)
    elif snap.error:
        st.error(snap.error)
    if snap.result and snap.result["lrs"]:
        st.altair_chart(charts.lr_finder(snap.result["lrs"], snap.result["losses"], snap.result["suggestion"]),
                        width="stretch")
        st.caption(snap.result["reason"])
    if not snap.active and st.session_state.get("lr-seen") == snap.id:
        st.session_state["lr-seen"] = None
        st.rerun()  # polling stops
    if snap.active:
        st.session_state["lr-seen"] = snap.id


lr_sweep()

if not dataset.report.trainable:
    st.error(dataset.report.errors[0])
elif o.batch_size % d.nproc:
    st.error(f"The batch size ({o.batch_size}) does not split evenly over {d.nproc} processes: change either.")
elif st.button("Start training", type="primary"):
    try:
        set_url("run", registry.submit(copy.deepcopy(config)))
    except JobError as exc:  # several machines, or over a quota on a shared server
        st.error(str(exc))
    else:
        st.rerun()  # from the top: the live view polls, the sidebar shows the job (a queued one says so there)

if st.query_params.get("run"):
    live()
