"""Results of one run, read from its folder: where the model is right, where it fails, and why."""
import pandas as pd
import streamlit as st

from ui import charts
from core.evaluate import heldout
from core.evaluate import saliency
from core.evaluate.predict import calibration_of
from core.data.augment import denormalize
from ui.account import workspace
from core.data.images import ImageError, to_pil
from core.deploy.model_card import confusions
from core.runs import list_runs, load_run
from ui.widgets import calibration_view, confusion_view, downloads, pick_run, predictor, thumbnail

GALLERY = 12

st.title("Results")
registry = st.session_state.registry
runs = list_runs(workspace() / "runs")
if not runs:
    st.info("No runs yet: start one on the Train page.")
    st.stop()
ids = [r["id"] for r in runs]
by_id = {r["id"]: r for r in runs}
run_id = pick_run(runs, "Run", "results-run", lambda r: f"{r['backbone']} · {r['status']}")["id"]
run = load_run(by_id[run_id]["run_dir"])

snap = registry.snapshot(run_id)
if snap is not None and snap.active:
    st.info(f"This run is {snap.status}; these results grow as epochs end.")
    st.page_link("views/train.py", label="Watch it live", icon=":material/model_training:",
                 query_params={"run": run_id})
if run.status.get("message"):
    (st.error if run.status.get("status") == "failed" else st.caption)(run.status["message"])
if run.weights_source == "random":
    st.warning("This run started from random weights, not pretrained ones: expect much lower accuracy than "
               "fine-tuning gives.")

results, predictions = heldout.read(run.run_dir)
if results is None and (run.run_dir / "model.safetensors").is_file() and not (snap and snap.active):
    st.info("This run has no image-by-image evaluation yet (it ended before the app wrote one).")
    if st.button("Evaluate the best weights now", key="results-evaluate"):
        with st.spinner("Running the model over the held-out images..."):
            try:
                heldout.evaluate_run(run.run_dir)
            except (FileNotFoundError, ValueError) as exc:
                st.error(f"Could not evaluate: {exc}")
            else:
                st.rerun()

best = run.best
val, test = (results or {}).get("val"), (results or {}).get("test")
m = st.columns(6)
m[0].metric("Status", run.status.get("status", "unknown"))
m[1].metric("Best epoch", f"{run.best_epoch} of {len(run.history)}" if run.best_epoch else "-")
m[2].metric("Validation accuracy", f"{best['val_acc']:.1%}" if best.get("val_acc") is not None else "-")
m[3].metric("Macro F1", f"{best['val_macro_f1']:.3f}" if best.get("val_macro_f1") is not None else "-")
m[4].metric("Test accuracy", f"{test['acc']:.1%}" if test else "-",
            help="Held out until the end: the most honest estimate." if test else
            "No test split: set a test share on the Data page.")
m[5].metric("Training time", f"{run.seconds:.0f} s")
model, optim, reg = (run.config.get(k, {}) for k in ("model", "optim", "regularize"))
st.caption(f"{model.get('backbone')} · {model.get('strategy')} · weights: {run.weights_source} · "
           f"{optim.get('optimizer')} lr {optim.get('lr')} · {optim.get('schedule')} · batch {optim.get('batch_size')}"
           f" · weight decay {optim.get('weight_decay')} · label smoothing {reg.get('label_smoothing')}")

split = "val"
if val and test:
    split = st.radio("Scores on", ["val", "test"], horizontal=True, key="results-split",
                     format_func={"val": "validation", "test": "test"}.get)
scores = (results or {}).get(split)
data_dir = (results or {}).get("data_dir")

tabs = st.tabs(["Per class", "Confusion matrix", "Mistakes", "Calibration", "Curves", "Download"])
with tabs[0]:
    if scores:
        pc = scores["per_class"]
        table = pd.DataFrame({"class": run.classes, "precision": pc["precision"], "recall": pc["recall"],
                              "F1": pc["f1"], "support": pc["support"]}).sort_values(["F1", "recall"])
        st.dataframe(table, hide_index=True, width="stretch", key="results-per-class",
                     column_config={k: st.column_config.NumberColumn(format="%.3f")
                                    for k in ("precision", "recall", "F1")})
        st.caption(f"{scores['images']} images · accuracy {scores['acc']:.1%} · balanced accuracy "
                   f"{scores['balanced_acc']:.1%} · macro F1 {scores['macro_f1']:.3f}. Worst classes first; "
                   "click a column to sort.")
    else:
        st.info("No held-out scores yet.")

with tabs[1]:
    matrix = scores["confusion"] if scores else (run.confusion or {}).get("matrix")
    if matrix:
        share = st.toggle("Row-normalised (each true class sums to 100%)", key="results-normalise")
        picked = confusion_view(matrix, run.classes, "results", normalize=share, pickable=True)
        worst = confusions(matrix, run.classes)  # open on the biggest confusion; the diagonal when there is none
        first = (run.classes.index(worst[0][0]), run.classes.index(worst[0][1])) if worst else (0, 0)
        for cell_key, index in zip(("results-cell-true", "results-cell-pred"), picked or first):
            if picked or st.session_state.get(cell_key) not in range(len(run.classes)):
                st.session_state[cell_key] = index
        c1, c2 = st.columns(2)
        true = c1.selectbox("True class", range(len(run.classes)), format_func=run.classes.__getitem__,
                            key="results-cell-true")
        pred = c2.selectbox("Predicted class", range(len(run.classes)), format_func=run.classes.__getitem__,
                            key="results-cell-pred")
        behind = heldout.cell(predictions, true, pred, split)
        st.caption(f"{len(behind)} image{'' if len(behind) == 1 else 's'} of {run.classes[true]} predicted as "
                   f"{run.classes[pred]}"
                   + (f"; the first {GALLERY}:" if len(behind) > GALLERY else "."))
        cols = st.columns(6)
        for i, row in enumerate(behind[:GALLERY]):
            thumbnail(cols[i % 6], data_dir, row["path"], f"{row['confidence']:.0%}")
    else:
        st.info("The confusion matrix appears when an epoch with validation images ends.")

with tabs[2]:
    wrong = heldout.mistakes(predictions, split)
    if not predictions:
        st.info("No image-by-image predictions for this run.")
    elif not wrong:
        st.success("No held-out image is misclassified.")
    else:
        st.caption(f"{len(wrong)} misclassified, most confident mistakes first.")
        cols = st.columns(6)
        for i, row in enumerate(wrong[:GALLERY]):
            thumbnail(cols[i % 6], data_dir, row["path"],
                      f"{run.classes[row['label']]} → {run.classes[row['pred']]} ({row['confidence']:.0%})")
        st.subheader("Why? Grad-CAM")
        pick = st.selectbox("Image", range(min(len(wrong), GALLERY)), key="results-cam-image",
                            format_func=lambda i: f"{wrong[i]['path']} ({run.classes[wrong[i]['label']]} → "
                                                  f"{run.classes[wrong[i]['pred']]})")
        target = st.radio("Explain the score of", ["predicted", "true"], horizontal=True, key="results-cam-target",
                          format_func={"predicted": "the predicted class", "true": "the true class"}.get)
        row = wrong[pick]
        try:
            p = predictor(str(run.run_dir))
            image = p.tensor(f"{data_dir}/{row['path']}")
            cam = saliency.grad_cam(p.net, p.backbone, image[None], row["pred" if target == "predicted" else "label"])
            shown = to_pil(denormalize(image, p.backbone.mean, p.backbone.std))
            c1, c2 = st.columns(2)
            c1.image(shown, caption="as the model sees it", width="stretch")
            if cam.max() > 0:
                c2.image(saliency.overlay(shown, cam), caption="where the evidence was (red: most)", width="stretch")
            else:
                c2.info("Nothing in this image raises the score of that class: the map is empty.")
        except saliency.SaliencyError as exc:
            st.info(str(exc))
        except (ImageError, OSError) as exc:
            st.warning(f"That image can no longer be read: {exc}")
        except ValueError as exc:  # the run's weights cannot be loaded
            st.error(str(exc))

with tabs[3]:
    cal = (results or {}).get("calibration") or {}
    shown = cal.get("reported_on") or split  # never the split the temperature was fitted on, when there is another
    measured = (results or {}).get(shown) or {}
    if measured.get("reliability"):
        after = measured.get("calibrated")
        st.caption("Measured on the " + ({"test": "test split, which the temperature never saw.",
                                          "val": "validation split, where the temperature was fitted: the 'after' "
                                                 "figure is optimistic. Set a test share on the Data page for an "
                                                 "honest one."}[shown]))
        calibration_view(measured, after)
        t = cal.get("temperature") or 1.0
        used = calibration_of(run.run_dir)
        if used.get("fitted_on") == "out-of-fold":
            st.caption(f"This run is a fold of the cross-validation {run.run_dir.parent.name}: Predict, the exports "
                       f"and the package use its temperature, {used['temperature']:.3g}, fitted on all "
                       f"{used['images']} out-of-fold predictions rather than this fold's {results['val']['images']}.")
            t = used["temperature"]
        st.caption(f"Temperature {t:.3g}: Predict, the exports and the model package divide the logits by it "
                   f"({'softening over-confident probabilities' if t > 1 else 'sharpening under-confident probabilities' if t < 1 else 'a 1: the held-out predictions showed no mis-calibration that a likelihood-ratio test at 5% would call real, so the probabilities stay as trained'}"
                   "). Accuracy does not change: dividing every logit by one positive number never "
                   "changes which class wins. Points on the diagonal: when the model says 80%, it is right 80% of "
                   "the time; below it, over-confident.")
    else:
        st.info("No calibration without held-out predictions.")

with tabs[4]:
    if run.history:
        c1, c2, c3 = st.columns(3)
        c1.altair_chart(charts.curves(run.history, None, "loss"), width="stretch")
        c2.altair_chart(charts.curves(run.history, None, "acc"), width="stretch")
        c3.altair_chart(charts.lr_curve(run.history), width="stretch")
    others = st.multiselect("Compare with", [i for i in ids if i != run_id], key="results-compare",
                            format_func=lambda i: f"{i} · {by_id[i]['backbone']} · {by_id[i]['strategy']}")
    if others:
        histories = {i: load_run(by_id[i]["run_dir"]).history for i in [run_id, *others]}
        metric = st.selectbox("Metric", ["val_acc", "val_macro_f1", "val_loss", "train_loss"], key="results-metric")
        st.altair_chart(charts.compare_runs(histories, metric), width="stretch")

with tabs[5]:
    downloads(run.run_dir, run.id, every_format=True)
    with st.expander("Config"):
        st.json(run.config, expanded=False)
