"""Charts checked through their Vega-Lite spec (to_dict) and the DataFrame behind each layer."""
import math

import altair as alt
import pandas as pd
import pytest

from core.evaluate.metrics import most_confused
from ui import charts

pytestmark = pytest.mark.unit

CLASSES = ["cat", "dog", "bird"]


def history(epochs=3, val=True):
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + e / 10, "lr": 1e-3 / e, "seconds": 2.0}
        if val:
            row |= {"val_loss": 1.5 / e, "val_acc": 0.4 + e / 10, "val_macro_f1": 0.3 + e / 10}
        rows.append(row)
    return rows


def layers(chart):
    """Each layer with its own data, falling back to the parent's (altair hoists shared data to the top)."""
    if isinstance(chart, alt.LayerChart):
        return [(layer, layer.data if isinstance(layer.data, pd.DataFrame) else chart.data) for layer in chart.layer]
    return [(chart, chart.data)]


def marks(spec):
    return [(layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"])
            for layer in spec.get("layer", [spec])]


def test_curves_has_train_and_val_points_per_epoch():
    chart = charts.curves(history(3))
    spec = chart.to_dict()
    assert spec["width"] == "container"
    assert spec["mark"]["type"] == "line" and spec["mark"]["point"] is True
    enc = spec["encoding"]
    assert enc["x"]["field"] == "epoch" and enc["x"]["axis"]["title"] == "epoch"
    assert enc["y"]["axis"]["title"] == "loss"
    assert enc["color"]["field"] == "split"
    assert {t["field"] for t in enc["tooltip"]} == {"epoch", "split", "value"}
    df = chart.data
    assert len(df) == 6
    assert sorted(df["split"].value_counts().items()) == [("train", 3), ("val", 3)]
    train = df[df["split"] == "train"].sort_values("epoch")
    val = df[df["split"] == "val"].sort_values("epoch")
    assert train["value"].tolist() == pytest.approx([1.0, 0.5, 1 / 3])
    assert val["value"].tolist() == pytest.approx([1.5, 0.75, 0.5])
    assert val["epoch"].tolist() == [1, 2, 3]


def test_curves_accuracy_reads_acc_keys_as_percent():
    chart = charts.curves(history(2), metric="acc")
    spec = chart.to_dict()
    assert spec["encoding"]["y"]["axis"] == {"format": ".0%", "title": "accuracy"}
    df = chart.data
    assert df[df["split"] == "train"]["value"].tolist() == pytest.approx([0.6, 0.7])
    assert df[df["split"] == "val"]["value"].tolist() == pytest.approx([0.5, 0.6])


def test_curves_rejects_unknown_metric():
    with pytest.raises(ValueError, match="metric"):
        charts.curves(history(1), metric="f1")


def test_curves_adds_batch_layer_only_when_given():
    batches = [{"step": 0.5, "loss": 1.4}, {"step": 1.0, "loss": 1.1}, {"step": 1.5, "loss": 0.9}]
    chart = charts.curves(history(2), batches=batches)
    spec = chart.to_dict()
    assert spec["width"] == "container"
    assert len(spec["layer"]) == 2
    (batch_layer, batch_df), (_, epoch_df) = layers(chart)
    assert batch_df["epoch"].tolist() == [0.5, 1.0, 1.5]
    assert batch_df["value"].tolist() == [1.4, 1.1, 0.9]
    assert len(epoch_df) == 4
    below = spec["layer"][0]
    assert below["mark"]["strokeWidth"] == 1 and below["mark"]["opacity"] < 1
    assert "color" not in below["encoding"]  # no legend entry: it is not a split
    assert below["encoding"]["x"]["field"] == spec["layer"][1]["encoding"]["x"]["field"] == "epoch"

    assert "layer" not in charts.curves(history(2)).to_dict()
    assert "layer" not in charts.curves(history(2), batches=batches, metric="acc").to_dict()


def test_curves_empty_history_gives_chart_without_data():
    chart = charts.curves([])
    assert chart.data.empty
    assert chart.to_dict()["encoding"]["x"]["field"] == "epoch"
    assert len(charts.curves([], batches=[]).to_dict()["layer"]) == 2


def test_curves_without_validation_has_only_train():
    rows = history(3, val=False)
    rows[1] |= {"val_loss": None}  # written as null when validation is off
    chart = charts.curves(rows)
    assert set(chart.data["split"]) == {"train"}
    assert len(chart.data) == 3
    assert chart.to_dict()["encoding"]["color"]["field"] == "split"


def test_lr_curve_uses_log_scale():
    chart = charts.lr_curve(history(3) + [{"epoch": 4, "train_loss": 0.1, "lr": 0.0}])
    spec = chart.to_dict()
    assert spec["encoding"]["y"]["scale"]["type"] == "log"
    assert spec["encoding"]["y"]["title"] == "learning rate"
    assert spec["encoding"]["x"]["axis"]["title"] == "epoch"
    assert chart.data["lr"].tolist() == pytest.approx([1e-3, 5e-4, 1e-3 / 3])  # lr 0 cannot sit on a log scale
    assert charts.lr_curve([]).data.empty


def test_confusion_counts_one_cell_per_pair_in_class_order():
    matrix = [[5, 1, 0], [2, 3, 0], [0, 0, 4]]
    chart = charts.confusion(matrix, CLASSES)
    spec = chart.to_dict()
    _, df = layers(chart)[0]
    assert len(df) == len(CLASSES) ** 2
    cell = df.set_index(["true", "predicted"])["count"]
    assert cell["dog", "cat"] == 2 and cell["cat", "dog"] == 1 and cell["bird", "bird"] == 4
    assert marks(spec) == ["rect", "text"]
    for layer in spec["layer"]:
        enc = layer["encoding"]
        assert enc["x"]["field"] == "predicted" and enc["x"]["sort"] == CLASSES
        assert enc["y"]["field"] == "true" and enc["y"]["sort"] == CLASSES
        assert enc["x"]["title"] == "predicted class" and enc["y"]["title"] == "true class"
        assert {t["field"] for t in enc["tooltip"]} == {"true", "predicted", "count", "share"}
    rect, text = spec["layer"]
    assert rect["encoding"]["color"]["field"] == "count"
    assert text["encoding"]["text"]["field"] == "count"


def test_confusion_normalized_rows_sum_to_one_and_empty_rows_are_zero():
    matrix = [[3, 1, 0], [0, 0, 0], [1, 1, 2]]
    chart = charts.confusion(matrix, CLASSES, normalize=True)
    spec = chart.to_dict()
    _, df = layers(chart)[0]
    sums = df.groupby("true")["share"].sum()
    assert sums["cat"] == pytest.approx(1) and sums["bird"] == pytest.approx(1)
    assert df[df["true"] == "dog"]["share"].tolist() == [0.0, 0.0, 0.0]
    assert not df["share"].isna().any()
    assert df.set_index(["true", "predicted"])["share"]["cat", "cat"] == pytest.approx(0.75)
    rect, text = spec["layer"]
    assert rect["encoding"]["color"]["field"] == "share"
    assert text["encoding"]["text"] == {"field": "share", "format": ".0%", "type": "quantitative"}
    values = [v for rows in spec["datasets"].values() for v in rows]
    assert all(math.isfinite(v["share"]) for v in values)  # NaN would not survive JSON


def test_confusion_rejects_a_matrix_of_the_wrong_shape():
    with pytest.raises(ValueError, match="3x3"):
        charts.confusion([[1, 2], [3, 4]], CLASSES)


def many(n, confused=()):
    """n classes, 3 right per class, plus (true, predicted, images) confusions: a mostly empty matrix."""
    matrix = [[3 if i == j else 0 for j in range(n)] for i in range(n)]
    for true, pred, count in confused:
        matrix[true][pred] = count
    return matrix, [f"species number {i:03d} of the collection" for i in range(n)]


def mark_layers(chart, mark):
    return [(layer, df) for layer, df in layers(chart)
            if (layer.mark if isinstance(layer.mark, str) else layer.mark.type) == mark]


def test_confusion_of_a_few_classes_labels_every_cell_zeros_included():
    matrix, classes = many(19, [(0, 1, 2)])
    chart = charts.confusion(matrix, classes)
    [(_, df)] = mark_layers(chart, "text")
    assert len(df) == 19 * 19 and (df["count"] == 0).sum() == 19 * 19 - 20
    assert chart.to_dict()["height"] == 28 * 19


def test_confusion_of_25_classes_labels_only_the_cells_with_images_and_fits_the_page():
    matrix, classes = many(25, [(0, 1, 2), (4, 3, 1)])
    with_images = sorted([(classes[i], classes[i]) for i in range(25)] + [(classes[0], classes[1]), (classes[4], classes[3])])
    for normalize in (False, True):
        chart = charts.confusion(matrix, classes, normalize=normalize)
        spec = chart.to_dict()
        assert spec["width"] == "container" and spec["height"] <= 600
        for mark in ("rect", "text"):  # zero is the blank background, with no number on it
            [(_, cells)] = mark_layers(chart, mark)
            assert sorted(zip(cells["true"], cells["predicted"])) == with_images
        axes = spec["layer"][0]["encoding"]
        assert axes["x"]["scale"]["domain"] == classes and axes["y"]["scale"]["domain"] == classes
        assert axes["x"]["axis"]["labelLimit"] <= 100 and axes["y"]["axis"]["labelLimit"] <= 100  # long names cut
        assert spec["layer"][0]["encoding"]["color"]["scale"]["domainMin"] == 0  # one image is not drawn as blank


def test_confusion_of_100_classes_draws_no_numbers_stays_on_screen_and_names_cells_on_hover():
    matrix, classes = many(100, [(7, 42, 2)])
    chart = charts.confusion(matrix, classes)
    spec = chart.to_dict()
    assert spec["height"] <= 600 and spec["width"] == "container"
    assert marks(spec) == ["rect"]  # a number in a 6-pixel cell cannot be read: colour and tooltip carry it
    [(_, cells)] = layers(chart)
    enc = spec["encoding"]
    assert enc["x"]["axis"]["labels"] is False and enc["y"]["axis"]["labels"] is False
    assert {t["field"]: t["title"] for t in enc["tooltip"]} == {
        "true": "true class", "predicted": "predicted class", "count": "images", "share": "row share"}
    hovered = cells.set_index(["true", "predicted"]).loc[(classes[7], classes[42])]
    assert hovered["count"] == 2 and hovered["share"] == pytest.approx(0.4)
    assert len(cells) == 101 and enc["x"]["scale"]["domain"] == classes  # sent: the cells with images, not 10,000


def test_most_confused_counts_most_first_ties_by_share_of_the_true_class():
    matrix = [[6, 2, 0, 2],   # cat: 10 images
              [1, 1, 2, 0],   # dog: 4 images, 2 as bird = 50%
              [0, 0, 0, 0],   # bird: none
              [0, 3, 0, 9]]
    classes = ["cat", "dog", "bird", "fish"]
    pairs = most_confused(matrix, classes)
    assert pairs == [
        {"true": "fish", "predicted": "dog", "count": 3, "share": pytest.approx(0.25)},
        {"true": "dog", "predicted": "bird", "count": 2, "share": pytest.approx(0.5)},
        {"true": "cat", "predicted": "dog", "count": 2, "share": pytest.approx(0.2)},
        {"true": "cat", "predicted": "fish", "count": 2, "share": pytest.approx(0.2)},
        {"true": "dog", "predicted": "cat", "count": 1, "share": pytest.approx(0.25)},
    ]
    assert most_confused(matrix, classes, top=2) == pairs[:2]
    assert most_confused([[4, 0], [0, 5]], ["a", "b"]) == []  # nothing confused: the diagonal is not a pair
    with pytest.raises(ValueError, match="4x4"):
        most_confused(matrix[:3], classes)


def test_class_counts_plain_bars_follow_class_order():
    chart = charts.class_counts({"dog": 7, "cat": 3})
    spec = chart.to_dict()
    assert spec["mark"]["type"] == "bar"
    assert spec["encoding"]["y"]["field"] == "class" and spec["encoding"]["y"]["sort"] == ["dog", "cat"]
    assert spec["encoding"]["x"]["field"] == "images"  # horizontal: the count runs along x
    assert "color" not in spec["encoding"]
    assert dict(zip(chart.data["class"], chart.data["images"])) == {"dog": 7, "cat": 3}


def test_class_counts_stacked_by_split():
    splits = {"val": {"cat": 1, "dog": 2}, "train": {"cat": 4, "dog": 6}, "test": {"cat": 1, "dog": 1}}
    chart = charts.class_counts({"cat": 6, "dog": 9}, splits)
    spec = chart.to_dict()
    assert spec["encoding"]["color"]["field"] == "split"
    assert spec["encoding"]["color"]["sort"] == ["train", "val", "test"]
    assert spec["encoding"]["y"]["sort"] == ["cat", "dog"]
    df = chart.data
    assert len(df) == 6
    assert df.groupby("class")["images"].sum().to_dict() == {"cat": 6, "dog": 9}
    assert df.set_index(["split", "class"])["images"]["train", "dog"] == 6


def test_lr_finder_rule_only_with_suggestion():
    lrs, losses = [1e-6, 1e-5, 1e-4, 1e-3], [2.3, 2.2, 1.5, 3.0]
    plain = charts.lr_finder(lrs, losses, None)
    spec = plain.to_dict()
    assert marks(spec) == ["line"]
    assert spec["encoding"]["x"]["scale"]["type"] == "log"
    assert spec["encoding"]["x"]["title"] == "learning rate"
    assert plain.data["loss"].tolist() == losses

    marked = charts.lr_finder(lrs, losses, 1e-4)
    spec = marked.to_dict()
    assert marks(spec) == ["line", "rule"]
    assert spec["width"] == "container"
    rule_df = layers(marked)[1][1]
    assert rule_df["lr"].tolist() == [1e-4]
    assert spec["layer"][1]["encoding"]["x"]["scale"]["type"] == "log"


def test_compare_runs_one_colour_per_run():
    chart = charts.compare_runs({"resnet": history(3), "vit": history(2), "no-val": history(2, val=False)})
    spec = chart.to_dict()
    assert spec["encoding"]["color"]["field"] == "run"
    assert spec["encoding"]["color"]["sort"] == ["resnet", "vit", "no-val"]
    assert spec["encoding"]["y"]["title"] == "val acc"
    df = chart.data
    assert df.groupby("run").size().to_dict() == {"resnet": 3, "vit": 2}  # a run without the metric draws nothing
    assert df[df["run"] == "vit"]["value"].tolist() == pytest.approx([0.5, 0.6])
    loss = charts.compare_runs({"a": history(2)}, metric="train_loss")
    assert loss.data["value"].tolist() == pytest.approx([1.0, 0.5])
    assert charts.compare_runs({}).data.empty


def test_reliability_plots_accuracy_against_confidence_over_the_diagonal():
    bins = [{"lo": 0.0, "hi": 0.5, "count": 0, "confidence": None, "accuracy": None},
            {"lo": 0.5, "hi": 0.75, "count": 3, "confidence": 0.6, "accuracy": 2 / 3},
            {"lo": 0.75, "hi": 1.0, "count": 5, "confidence": 0.9, "accuracy": 0.6}]
    chart = charts.reliability(bins)
    spec = chart.to_dict()
    assert spec["width"] == "container"
    assert marks(spec) == ["line", "line", "circle"]
    (_, diagonal), (_, line), (_, points) = layers(chart)
    assert diagonal[["confidence", "accuracy"]].values.tolist() == [[0.0, 0.0], [1.0, 1.0]]
    assert spec["layer"][0]["mark"]["strokeDash"]  # the reference is dashed, apart from the model's line
    assert line["count"].tolist() == points["count"].tolist() == [3, 5]  # the empty bin is left out
    assert points["confidence"].tolist() == [0.6, 0.9]
    assert points["accuracy"].tolist() == pytest.approx([2 / 3, 0.6])
    for layer in spec["layer"]:
        enc = layer["encoding"]
        assert enc["x"]["field"] == "confidence" and enc["x"]["scale"]["domain"] == [0, 1]
        assert enc["y"]["field"] == "accuracy" and enc["y"]["scale"]["domain"] == [0, 1]
    dots = spec["layer"][2]["encoding"]
    assert dots["size"]["field"] == "count"
    assert {t["field"] for t in dots["tooltip"]} == {"lo", "hi", "count", "confidence", "accuracy"}
    values = [v for rows in spec["datasets"].values() for v in rows]
    assert all(v is not None and math.isfinite(v) for row in values for v in row.values())


def test_reliability_without_samples_keeps_the_diagonal_only():
    empty = [{"lo": i / 10, "hi": (i + 1) / 10, "count": 0, "confidence": None, "accuracy": None} for i in range(10)]
    (_, diagonal), (_, line), (_, points) = layers(charts.reliability(empty))
    assert len(diagonal) == 2 and line.empty and points.empty
