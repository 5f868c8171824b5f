"""A model card (Markdown) from a run folder: what the model was trained on, how, how well, and where it fails.

Everything comes from the run's own files, so the card cannot drift from the model it describes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from core.evaluate import heldout
from core import runs

MAX_WEAKNESSES = 5


def confusions(matrix: list[list[int]], classes: list[str]) -> list[tuple[str, str, int, float]]:
    """Off-diagonal cells as (true, predicted, images, share of the true class), largest share first."""
    out = []
    for i, row in enumerate(matrix):
        total = sum(row)
        out += [(classes[i], classes[j], n, n / total) for j, n in enumerate(row) if j != i and n and total]
    return sorted(out, key=lambda c: (-c[3], -c[2]))


def card(run_dir: Path) -> str:
    run = runs.load_run(run_dir)
    results, _ = heldout.read(run_dir)
    cfg, prov = run.config, run.config.get("provenance", {})
    model, optim, reg, aug = (cfg.get(k, {}) for k in ("model", "optim", "regularize", "augment"))
    weights = prov.get("weights", {})
    splits = prov.get("dataset", {}).get("splits", {})
    lines = [f"# Model card: {run.id}", "",
             f"An image classifier for {len(run.classes)} classes ({', '.join(run.classes)}), fine-tuned with "
             f"Fine-Tune Lab from `{model.get('backbone')}`.", ""]
    if run.weights_source == "random":
        lines += ["> **Warning:** trained from random initialisation, not pretrained weights; expect much lower "
                  "accuracy than fine-tuning gives.", ""]
    lines += ["## Data", "", "| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    lines += [f"| {c} | " + " | ".join(str(splits[s].get(c, 0)) for s in splits) + " |" for c in run.classes]
    lines += ["", f"Split: {_split_text(cfg.get('data', {}), prov.get('dataset', {}))}", "",
              "## Training", "",
              f"- Backbone: `{model.get('backbone')}`; weights: {weights.get('source')} "
              f"({weights.get('note') or weights.get('file') or 'as the library provides them'})",
              f"- Strategy: {model.get('strategy')} (dropout before the head {model.get('dropout')})",
              f"- Optimiser: {optim.get('optimizer')}, learning rate {optim.get('lr')}, schedule "
              f"{optim.get('schedule')}, {optim.get('epochs')} epochs planned, batch {optim.get('batch_size')}, "
              f"weight decay {optim.get('weight_decay')}",
              f"- Regularisation: L1 {reg.get('l1')}, label smoothing {reg.get('label_smoothing')}, mixup "
              f"{reg.get('mixup')}, cutmix {reg.get('cutmix')}, class weighting {reg.get('class_weighting')}",
              f"- Input: {aug.get('image_size')} px, resize by {aug.get('resize')}; normalisation as "
              "`preprocessing.json` says",
              f"- Ran {len(run.history)} epochs ({run.status.get('status')}); best epoch {run.best_epoch}, "
              f"{run.seconds:.0f} s of training on {prov.get('device', 'an unknown device')}", ""]
    lines += _metrics(results, run.classes)
    lines += ["## Intended use", "",
              f"Sorting images like the training images into these {len(run.classes)} classes, with a person "
              "checking the results that matter. The model only knows these classes: an image of anything else "
              "still gets one of them, often with high confidence. The scores above come from a few held-out "
              "images of the same collection; images from another instrument, site or season may score lower. "
              "Measure on your own data before relying on it.", ""]
    return "\n".join(lines)


def _split_text(data: dict[str, Any], dataset: dict[str, Any]) -> str:
    if dataset.get("layout") == "pre-split":
        return "the folders given (train/ val/ test/)."
    return (f"stratified by class, validation {data.get('val_ratio')}, test {data.get('test_ratio')}, "
            f"seed {data.get('split_seed')}.")


def _metrics(results: dict[str, Any] | None, classes: list[str]) -> list[str]:
    if not results:
        return ["## Evaluation", "", "Not evaluated: the run has no held-out images or ended before its first "
                "epoch.", ""]
    lines = ["## Evaluation", ""]
    for split in heldout.SPLITS:
        r = results.get(split)
        if not r:
            continue
        name = "validation" if split == "val" else "test"
        after = (f" ({r['calibrated']['ece']:.3f} after temperature scaling"
                 + (", fitted on these images: optimistic)" if split == results.get("calibration", {}).get("fitted_on")
                    else ")") if r.get("calibrated") else "")
        lines += [f"On {r['images']} {name} images: accuracy {r['acc']:.1%}, balanced accuracy "
                  f"{r['balanced_acc']:.1%}, macro F1 {r['macro_f1']:.3f}, expected calibration error "
                  f"{r['ece']:.3f}{after}.", "", "| class | precision | recall | F1 | images |", "|---|---|---|---|---|"]
        pc = r["per_class"]
        lines += [f"| {c} | {pc['precision'][i]:.3f} | {pc['recall'][i]:.3f} | {pc['f1'][i]:.3f} | "
                  f"{pc['support'][i]} |" for i, c in enumerate(classes)]
        lines.append("")
    worst = confusions(results.get("val", results.get("test", {})).get("confusion", []), classes)
    lines += ["## Known weaknesses", ""]
    lines += [f"- {true} is taken for {pred} in {share:.0%} of its images ({n})."
              for true, pred, n, share in worst[:MAX_WEAKNESSES]] or ["- No confusions among the held-out images "
                                                                        "(few images: this proves little)."]
    return lines + [""]
