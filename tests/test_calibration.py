"""Reliability bins and expected calibration error against small cases computed by hand."""
import math

import pytest
import torch

from core.evaluate.calibration import expected_calibration_error, reliability

pytestmark = pytest.mark.unit

# Top-1 confidence and correctness per row:
#   A 0.95 right (label 0), B 0.92 wrong (label 2), C 0.75 right (label 2), D 0.55 wrong (label 1).
PROBS = [[0.95, 0.03, 0.02], [0.04, 0.92, 0.04], [0.15, 0.10, 0.75], [0.55, 0.45, 0.00]]
LABELS = [0, 2, 2, 1]


def test_ece_by_hand_with_ten_bins():
    # (0.9, 1.0]: A, B -> confidence (0.95 + 0.92) / 2 = 0.935, accuracy 1/2, gap 0.435, weight 2/4 -> 0.2175
    # (0.7, 0.8]: C    -> gap |1 - 0.75| = 0.25, weight 1/4 -> 0.0625
    # (0.5, 0.6]: D    -> gap |0 - 0.55| = 0.55, weight 1/4 -> 0.1375
    # ECE = 0.2175 + 0.0625 + 0.1375 = 0.4175
    probs, labels = torch.tensor(PROBS), torch.tensor(LABELS)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4175, abs=1e-6)
    table = reliability(probs, labels)
    assert [b["count"] for b in table] == [0, 0, 0, 0, 0, 1, 0, 1, 0, 2]
    assert table[9]["confidence"] == pytest.approx(0.935, abs=1e-6) and table[9]["accuracy"] == 0.5
    assert table[7]["accuracy"] == 1.0 and table[5]["accuracy"] == 0.0
    assert table[0]["confidence"] is None and table[0]["accuracy"] is None


def test_ece_depends_on_the_bins():
    # Two bins: all four fall in (0.5, 1.0]; confidence 3.17 / 4 = 0.7925, accuracy 2/4, ECE = 0.2925.
    # Over- and underconfidence inside one bin cancel, which is why ten bins give more (0.4175).
    ece = expected_calibration_error(torch.tensor(PROBS), torch.tensor(LABELS), bins=2)
    assert ece == pytest.approx(0.2925, abs=1e-6)


def test_perfectly_calibrated_model_has_zero_ece():
    # Four images at 0.75, three right; five at 0.6, three right: accuracy equals confidence in each bin.
    probs = torch.tensor([[0.75, 0.25]] * 4 + [[0.4, 0.6]] * 5)
    labels = torch.tensor([0, 0, 0, 1] + [1, 1, 1, 0, 0])
    table = reliability(probs, labels)
    assert [b["count"] for b in table] == [0, 0, 0, 0, 0, 5, 0, 4, 0, 0]
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-6)


def test_always_wrong_model_has_ece_equal_to_its_mean_confidence():
    # Accuracy is 0 in every bin, so each bin adds count/N * its mean confidence: (0.9 + 0.8 + 0.65) / 3.
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.35, 0.65]])
    labels = torch.tensor([1, 0, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(2.35 / 3, abs=1e-6)


def test_bins_are_right_closed_so_an_edge_falls_in_the_bin_below_and_one_in_the_last():
    # Four bins (0, .25], (.25, .5], (.5, .75], (.75, 1]: 0.25 -> first, 0.26 and 0.5 -> second, 0.75 -> third,
    # 1.0 -> last (nothing above it to fall into).
    probs = torch.tensor([[0.25, 0.2, 0.2, 0.2, 0.15], [0.26, 0.2, 0.2, 0.2, 0.14], [0.5, 0.2, 0.1, 0.1, 0.1],
                          [0.75, 0.1, 0.05, 0.05, 0.05], [1.0, 0.0, 0.0, 0.0, 0.0]])
    table = reliability(probs, torch.zeros(5, dtype=torch.long), bins=4)
    assert [(b["lo"], b["hi"]) for b in table] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    assert [b["count"] for b in table] == [1, 2, 1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, None],
                         ids=["float32", "float64", "float16", "json list"])
def test_edges_that_are_not_exact_in_binary_stay_in_their_bin(dtype):
    # float32 0.3 and 0.7 are 0.30000001 and 0.69999999 exactly, so against float64 edges 0.3 would slip into
    # (0.3, 0.4]; in every dtype (a JSON list reads as float32) they belong to (0.2, 0.3] and (0.6, 0.7], as written.
    rows = [[0.3, 0.25, 0.25, 0.2], [0.7, 0.3, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    probs = rows if dtype is None else torch.tensor(rows, dtype=dtype)
    counts = [b["count"] for b in reliability(probs, [0, 0, 0])]
    assert [i for i, n in enumerate(counts) if n] == [2, 6, 9]


def test_plain_lists_from_a_run_folder_give_the_same_answer():
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(0.4175)
    # float32 probabilities written with tolist() (as JSON holds them) land in the same bins when read back.
    probs = torch.tensor([[0.3, 0.7], [0.6, 0.4], [0.8, 0.2], [0.1, 0.9]])
    assert reliability(probs.tolist(), [1, 0, 1, 1]) == reliability(probs, torch.tensor([1, 0, 1, 1]))
    assert reliability(PROBS, LABELS, bins=2)[1] == {"lo": 0.5, "hi": 1.0, "count": 4,
                                                      "confidence": pytest.approx(0.7925), "accuracy": 0.5}


@pytest.mark.parametrize("probs, labels", [(torch.empty(0, 3), torch.empty(0, dtype=torch.long)), ([], [])],
                         ids=["tensor", "json list"])
def test_no_samples_gives_empty_bins_and_nan(probs, labels):
    table = reliability(probs, labels, bins=5)
    assert len(table) == 5
    assert all(b["count"] == 0 and b["confidence"] is None and b["accuracy"] is None for b in table)
    assert math.isnan(expected_calibration_error(probs, labels))


def test_mismatched_shapes_and_no_bins_are_refused():
    with pytest.raises(ValueError, match="probs must be"):
        reliability(torch.tensor(PROBS), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="bins"):
        reliability(PROBS, LABELS, bins=0)
