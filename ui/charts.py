"""Charts for training and results, as pure functions from run data to altair charts.

They live in core, apart from the pages, so they can be tested without streamlit (through chart.to_dict()),
and so every page draws the same thing the same way. Inputs are what the run folder holds
(metrics.jsonl rows, confusion_matrix.json, lr finder results); a value that is missing or None
(e.g. val_* when there is no validation split) is left out of the chart rather than drawn as zero.
"""
from __future__ import annotations

import math
from typing import Any

import altair as alt
import pandas as pd

from core.evaluate.metrics import normalize_rows

SPLITS = ["train", "val", "test"]  # legend and stacking order, so a split keeps its colour across charts
EPOCH_AXIS = alt.Axis(title="epoch", tickMinStep=1)
METRIC_TITLES = {"loss": "loss", "acc": "accuracy"}


def _epochs_long(rows: list[dict[str, Any]], series: dict[str, str]) -> list[dict[str, Any]]:
    """Long format (one row per epoch and series) so altair can colour by series; absent values are skipped."""
    return [{"epoch": row["epoch"], "series": name, "value": row[key]}
            for row in rows for name, key in series.items() if row.get(key) is not None]


def curves(history: list[dict[str, Any]], batches: list[dict[str, float]] | None = None,
           metric: str = "loss") -> alt.Chart | alt.LayerChart:
    """Train and val `metric` per epoch; per-batch loss underneath shows progress inside the current epoch.

    Batch rows are {"step": epoch position, e.g. 1.25, "loss": ...}, drawn on the same x scale as the epochs.
    """
    if metric not in METRIC_TITLES:
        raise ValueError(f"metric must be one of {sorted(METRIC_TITLES)}, got {metric!r}")
    points = pd.DataFrame(_epochs_long(history, {"train": f"train_{metric}", "val": f"val_{metric}"}),
                          columns=["epoch", "series", "value"]).rename(columns={"series": "split"})
    title = METRIC_TITLES[metric]
    y_axis = alt.Axis(title=title, format=".0%") if metric == "acc" else alt.Axis(title=title)
    epochs = alt.Chart(points).mark_line(point=True).encode(
        x=alt.X("epoch:Q", axis=EPOCH_AXIS),
        y=alt.Y("value:Q", axis=y_axis, scale=alt.Scale(zero=False)),
        color=alt.Color("split:N", sort=SPLITS, title="split"),
        tooltip=[alt.Tooltip("epoch:Q"), alt.Tooltip("split:N"),
                 alt.Tooltip("value:Q", title=title, format=".4f")],
    )
    if batches is None or metric != "loss":
        return epochs.properties(width="container")
    steps = pd.DataFrame([{"epoch": b["step"], "value": b["loss"]} for b in batches], columns=["epoch", "value"])
    per_batch = alt.Chart(steps).mark_line(strokeWidth=1, opacity=0.35, color="gray").encode(
        x=alt.X("epoch:Q", axis=EPOCH_AXIS),
        y=alt.Y("value:Q", axis=y_axis, scale=alt.Scale(zero=False)),
        tooltip=[alt.Tooltip("epoch:Q", title="epoch position", format=".2f"),
                 alt.Tooltip("value:Q", title="batch loss", format=".4f")],
    )
    return alt.layer(per_batch, epochs).properties(width="container")


def lr_curve(history: list[dict[str, Any]]) -> alt.Chart:
    """Learning rate per epoch on a log scale, where warmup and decay schedules read as straight-ish lines.

    Non-positive rates (a warmup starting at 0) have no place on a log scale and are left out.
    """
    data = pd.DataFrame([{"epoch": r["epoch"], "lr": r["lr"]} for r in history if (r.get("lr") or 0) > 0],
                        columns=["epoch", "lr"])
    return alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("epoch:Q", axis=EPOCH_AXIS),
        y=alt.Y("lr:Q", title="learning rate", scale=alt.Scale(type="log")),
        tooltip=[alt.Tooltip("epoch:Q"), alt.Tooltip("lr:Q", title="learning rate", format=".2e")],
    ).properties(width="container")


# From DENSE classes on the matrix is drawn compact: at most MAX_SIDE px tall, so it stays on screen; only cells with
# images are drawn (zero is the blank background: 100 classes would otherwise send 10,000 cells, every second on
# the live Train page); numbers only while a cell is at least LABELLED_CELL px, as a smaller one cannot be read; class
# names on the axes cut short, and dropped below NAMED_CELL px. Every row with images and every column with
# predictions keeps a cell, whose tooltip names both classes.
DENSE = 20
CELL = 28
MAX_SIDE = 600
LABELLED_CELL = 20
NAMED_CELL = 10


def confusion(matrix: list[list[int]], classes: list[str], normalize: bool = False) -> alt.LayerChart | alt.Chart:
    """Heatmap of the confusion matrix (rows = true class); normalize shows each row's share, i.e. recall per
    class, which reads fairly when classes have very different sizes. A class with no images shows 0, not NaN.
    """
    n = len(classes)
    if len(matrix) != n or any(len(row) != n for row in matrix):
        raise ValueError(f"the matrix must be {n}x{n} for {n} classes")
    dense = n >= DENSE
    cells = []
    for true, row, shares in zip(classes, matrix, normalize_rows(matrix)):
        cells += [{"true": true, "predicted": predicted, "count": count, "share": share}
                  for predicted, count, share in zip(classes, row, shares) if count or not dense]
    data = pd.DataFrame(cells, columns=["true", "predicted", "count", "share"])
    field, fmt, title = ("share", ".0%", "row share") if normalize else ("count", "d", "images")
    top = float(data[field].max()) if len(data) else 0.0
    cell = min(CELL, MAX_SIDE / n) if dense else CELL
    named = cell >= NAMED_CELL
    axis = {"labelLimit": 90, "labelFontSize": 9, "labels": named} if dense else {}
    hint = "" if named else " (names on hover)"
    base = alt.Chart(data).encode(
        x=alt.X("predicted:N", sort=classes, scale=alt.Scale(domain=classes), title=f"predicted class{hint}",
                axis=alt.Axis(labelAngle=-90 if dense else -45, **axis)),
        y=alt.Y("true:N", sort=classes, scale=alt.Scale(domain=classes), title=f"true class{hint}",
                axis=alt.Axis(**axis)),
        tooltip=[alt.Tooltip("true:N", title="true class"), alt.Tooltip("predicted:N", title="predicted class"),
                 alt.Tooltip("count:Q", title="images"), alt.Tooltip("share:Q", title="row share", format=".1%")],
    )
    # Dense: the palette starts above white, so a single confused image stands out from the blank background.
    scale = alt.Scale(scheme={"name": "blues", "extent": [0.2, 1]}, domainMin=0) if dense else alt.Scale(scheme="blues")
    heat = base.mark_rect().encode(color=alt.Color(f"{field}:Q", title=title, scale=scale))
    size = {"width": "container", "height": round(cell * n) if dense else max(200, CELL * n)}
    if dense and cell < LABELLED_CELL:
        return heat.properties(**size)
    # White text on dark cells, so the number stays readable at both ends of the colour scale.
    text = base.mark_text(fontSize=9 if dense else 11).encode(
        text=alt.Text(f"{field}:Q", format=fmt),
        color=alt.when(alt.datum[field] > top / 2).then(alt.value("white")).otherwise(alt.value("black")),
    )
    return (heat + text).properties(**size)


def class_counts(counts: dict[str, int], splits: dict[str, dict[str, int]] | None = None) -> alt.Chart:
    """Images per class as horizontal bars (long class names stay readable), stacked by split when given, to
    show imbalance and whether each split got its share of every class.

    `splits` maps split name -> {class: images}; class order follows `counts`.
    """
    classes = list(dict.fromkeys([*counts, *(c for per in (splits or {}).values() for c in per)]))
    y = alt.Y("class:N", sort=classes, title="class")
    x = alt.X("images:Q", title="images")
    if splits is None:
        data = pd.DataFrame({"class": list(counts), "images": list(counts.values())}, columns=["class", "images"])
        return alt.Chart(data).mark_bar().encode(
            x=x, y=y, tooltip=[alt.Tooltip("class:N"), alt.Tooltip("images:Q")],
        ).properties(width="container")
    order = [s for s in SPLITS if s in splits] + [s for s in splits if s not in SPLITS]
    data = pd.DataFrame([{"class": c, "split": s, "images": n, "order": order.index(s)}
                         for s, per in splits.items() for c, n in per.items()],
                        columns=["class", "split", "images", "order"])
    return alt.Chart(data).mark_bar().encode(
        x=x, y=y,
        color=alt.Color("split:N", sort=order, title="split"),
        order=alt.Order("order:Q"),
        tooltip=[alt.Tooltip("class:N"), alt.Tooltip("split:N"), alt.Tooltip("images:Q")],
    ).properties(width="container")


def lr_finder(lrs: list[float], losses: list[float], suggestion: float | None) -> alt.Chart | alt.LayerChart:
    """Loss against lr on a log x scale (the sweep is exponential), with the suggested lr marked so a person can
    judge it against the curve rather than take it on trust.
    """
    data = pd.DataFrame({"lr": lrs, "loss": losses}, columns=["lr", "loss"])
    x = alt.X("lr:Q", title="learning rate", scale=alt.Scale(type="log"))
    sweep = alt.Chart(data).mark_line().encode(
        x=x,
        y=alt.Y("loss:Q", title="loss (smoothed)", scale=alt.Scale(zero=False)),
        tooltip=[alt.Tooltip("lr:Q", title="learning rate", format=".2e"), alt.Tooltip("loss:Q", format=".4f")],
    )
    if suggestion is None:
        return sweep.properties(width="container")
    rule = alt.Chart(pd.DataFrame({"lr": [suggestion]})).mark_rule(color="red", strokeDash=[4, 4]).encode(
        x=x, tooltip=[alt.Tooltip("lr:Q", title="suggested learning rate", format=".2e")],
    )
    return (sweep + rule).properties(width="container")


def compare_runs(histories: dict[str, list[dict[str, Any]]], metric: str = "val_acc") -> alt.Chart:
    """One line per run over epochs, to compare runs on the metric that matters; epochs without it are skipped."""
    data = pd.DataFrame([row for name, history in histories.items()
                         for row in _epochs_long(history, {name: metric})],
                        columns=["epoch", "series", "value"]).rename(columns={"series": "run"})
    title = metric.replace("_", " ")
    return alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("epoch:Q", axis=EPOCH_AXIS),
        y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", sort=list(histories), title="run"),
        tooltip=[alt.Tooltip("run:N"), alt.Tooltip("epoch:Q"), alt.Tooltip("value:Q", title=title, format=".4f")],
    ).properties(width="container")


def reliability(bins: list[dict[str, Any]]) -> alt.LayerChart:
    """Accuracy against mean confidence per bin (core.calibration.reliability), over the diagonal of perfect
    calibration: points below it mean the model is overconfident there. Point size is the bin's image count, as a
    bin with few images is noise; empty bins have no point to draw and are left out.
    """
    data = pd.DataFrame([{key: b[key] for key in ("lo", "hi", "count", "confidence", "accuracy")}
                         for b in bins if b["count"]],
                        columns=["lo", "hi", "count", "confidence", "accuracy"])
    x = alt.X("confidence:Q", title="mean confidence", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format=".0%"))
    y = alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format=".0%"))
    diagonal = alt.Chart(pd.DataFrame({"confidence": [0.0, 1.0], "accuracy": [0.0, 1.0]})).mark_line(
        color="gray", strokeDash=[4, 4]).encode(x=x, y=y)
    curve = alt.Chart(data).encode(x=x, y=y)
    line = curve.mark_line()
    points = curve.mark_circle(opacity=1).encode(
        size=alt.Size("count:Q", title="images", scale=alt.Scale(zero=False, range=[30, 300])),
        tooltip=[alt.Tooltip("lo:Q", title="bin from", format=".2f"), alt.Tooltip("hi:Q", title="bin to", format=".2f"),
                 alt.Tooltip("count:Q", title="images"),
                 alt.Tooltip("confidence:Q", title="mean confidence", format=".1%"),
                 alt.Tooltip("accuracy:Q", format=".1%")],
    )
    return alt.layer(diagonal, line, points).properties(width="container")


def search_history(trials: list[dict[str, Any]], maximize: bool = True) -> alt.LayerChart:
    """Each finished trial's score by trial number, coloured by how it ended, under the best-so-far line."""
    rows = [t for t in trials if t.get("value") is not None or t.get("intermediate")]
    data = pd.DataFrame([{"trial": t["number"], "state": t["state"],
                          "value": t["value"] if t["value"] is not None else _last(t["intermediate"])}
                         for t in rows], columns=["trial", "state", "value"])
    best, line = None, []
    for row in sorted((t for t in rows if t["state"] == "complete"), key=lambda t: t["number"]):
        if best is None or (row["value"] > best if maximize else row["value"] < best):
            best = row["value"]
        line.append({"trial": row["number"], "best": best})
    y = alt.Y("value:Q", title="score", scale=alt.Scale(zero=False))
    points = alt.Chart(data).mark_circle(size=60).encode(
        x=alt.X("trial:Q", title="trial", axis=alt.Axis(tickMinStep=1)), y=y,
        color=alt.Color("state:N", title="trial", sort=["complete", "pruned", "fail"]),
        tooltip=[alt.Tooltip("trial:Q"), alt.Tooltip("state:N"), alt.Tooltip("value:Q", format=".4f")])
    best_line = alt.Chart(pd.DataFrame(line, columns=["trial", "best"])).mark_line(
        interpolate="step-after", color="black").encode(
        x="trial:Q", y=alt.Y("best:Q", title="score"), tooltip=[alt.Tooltip("best:Q", title="best so far", format=".4f")])
    return alt.layer(points, best_line).properties(width="container")


def _last(intermediate: dict[str, float]) -> float | None:
    """A pruned trial's score: its last reported epoch (JSON keys are strings)."""
    return intermediate[max(intermediate, key=int)] if intermediate else None


def importances(values: dict[str, float]) -> alt.Chart:
    """Parameter importances (they sum to 1), most important on top."""
    data = pd.DataFrame([{"parameter": k, "importance": v} for k, v in values.items()],
                        columns=["parameter", "importance"])
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("importance:Q", axis=alt.Axis(format=".0%")), y=alt.Y("parameter:N", sort="-x", title=None),
        tooltip=[alt.Tooltip("parameter:N"), alt.Tooltip("importance:Q", format=".1%")],
    ).properties(width="container")


def parallel_coordinates(trials: list[dict[str, Any]], space: dict[str, dict[str, Any]]) -> alt.Chart:
    """One line per completed trial across its parameters, each axis scaled to its range (log ranges on a log
    scale, choices in their listed order), coloured by the score: where good trials cluster reads at a glance."""
    rows = []
    for t in trials:
        if t["state"] != "complete" or t.get("value") is None:
            continue
        for name, spec in space.items():
            if name in t["params"]:
                rows.append({"trial": t["number"], "parameter": name, "score": t["value"],
                             "position": _position(t["params"][name], spec), "value": str(t["params"][name])})
    data = pd.DataFrame(rows, columns=["trial", "parameter", "score", "position", "value"])
    return alt.Chart(data).mark_line(opacity=0.6).encode(
        x=alt.X("parameter:N", sort=list(space), title=None),
        y=alt.Y("position:Q", title="position in range", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("score:Q", scale=alt.Scale(scheme="viridis")), detail="trial:N",
        tooltip=[alt.Tooltip("trial:N"), alt.Tooltip("parameter:N"), alt.Tooltip("value:N"),
                 alt.Tooltip("score:Q", format=".4f")],
    ).properties(width="container")


def _position(value: Any, spec: dict[str, Any]) -> float:
    if "choices" in spec:
        choices = [str(c) for c in spec["choices"]]
        return choices.index(str(value)) / max(len(choices) - 1, 1) if str(value) in choices else 0.0
    low, high = spec["low"], spec["high"]
    if high == low:
        return 0.5
    if spec.get("log"):
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)
