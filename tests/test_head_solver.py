"""The converged head and temperature scaling: the solver against scikit-learn, the temperature against its promises."""
import json

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from conftest import make_dataset
from core.evaluate import temperature
from core.train import head_solver
from core.train.callbacks import Callback
from core.train.engine import fit
from core.runs import read_jsonl
from test_search import base_config

pytestmark = pytest.mark.unit


def blobs(n=240, d=32, classes=3, noise=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + noise * torch.randn(n, d, generator=g), y


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_the_solved_head_reaches_scikit_learns_optimum(l2):
    x, y = blobs()
    w, b, _ = head_solver.solve(x, y, 3, l2)
    ours = float(head_solver.objective(w, b, x.double(), y, l2))
    sk = LogisticRegression(C=head_solver.sklearn_c(l2, len(y)), max_iter=10_000, tol=1e-10).fit(x.numpy(), y.numpy())
    theirs = float(head_solver.objective(torch.tensor(sk.coef_, dtype=torch.float64),
                                         torch.tensor(sk.intercept_, dtype=torch.float64), x.double(), y, l2))
    assert ours <= theirs + 1e-6
    assert ours == pytest.approx(theirs, abs=1e-5)


@pytest.mark.integration
def test_the_l2_strength_comes_from_cross_validation_on_the_training_split():
    x, y = blobs(noise=4.0)
    solution = head_solver.fit_head(x, y, 3)
    assert solution.folds == head_solver.CV_FOLDS and set(solution.cv_loss) == set(head_solver.L2_GRID)
    assert solution.l2 == min(solution.cv_loss, key=solution.cv_loss.get)
    labels = torch.where(y == 2, 0, y)
    labels[0] = 2  # class 2 has a single image: it cannot be held out and trained on at once
    lone = head_solver.fit_head(x, labels, 3)
    assert lone.folds == 0 and lone.l2 == head_solver.DEFAULT_L2


def test_temperature_keeps_every_prediction_and_lowers_the_nll_it_was_fitted_on():
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(400, 4, generator=g)
    labels = torch.distributions.Categorical(logits=logits / 2.0).sample()  # data that is really at T = 2
    t = temperature.fit(logits, labels)
    assert t == pytest.approx(2.0, rel=0.25)
    assert temperature.nll(logits, labels, t) < temperature.nll(logits, labels, 1.0)
    probs = logits.softmax(1)
    assert torch.equal(temperature.scale(probs, t).argmax(1), probs.argmax(1))
    assert temperature.scale(probs, 1.0) is probs


def test_a_calibrated_model_keeps_its_probabilities():
    """Labels drawn from the model's own probabilities: a T fitted to them is noise, and the likelihood-ratio test
    keeps T = 1 in all but about 5% of draws."""
    kept = 0
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        logits = 3 * torch.randn(80, 2, generator=g)
        labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
        kept += temperature.fit(logits, labels) == 1.0
        assert temperature.optimum(logits, labels) != 1.0  # there is always some optimum: the test is what gates it
    assert kept >= 34


def test_cross_fitted_calibration_lets_no_group_calibrate_itself():
    g = torch.Generator().manual_seed(2)
    logits = 3 * torch.randn(600, 3, generator=g)
    labels = torch.distributions.Categorical(logits=logits / 2.5).sample()  # over-confident by 2.5
    groups = torch.arange(600) % 3
    probs = logits.softmax(1).double()
    honest = temperature.cross_fitted(probs, labels, groups)
    assert torch.equal(honest.argmax(1), probs.argmax(1))
    for k in range(3):
        inside = groups == k
        t = temperature.fit(temperature.logits_of(probs[~inside]), labels[~inside])
        assert t > 1.5 and torch.allclose(honest[inside], temperature.scale(probs[inside], t))
    assert temperature.nll(temperature.logits_of(honest), labels) < temperature.nll(temperature.logits_of(probs), labels)


class Messages(Callback):
    def __init__(self):
        self.texts = []

    def on_message(self, text, level="info"):
        self.texts.append(text)


@pytest.mark.integration
def test_the_default_run_solves_the_head_and_calibrates_it(tmp_path, workspace):
    data = make_dataset(tmp_path / "data", {"red": 16, "blue": 16, "green": 16})
    config = base_config(data)
    config.data.test_ratio = 0.25
    said = Messages()
    result = fit(config, tmp_path / "run", [said])
    assert [r["epoch"] for r in result.history] == [1] and result.history[0]["l2"] in head_solver.L2_GRID
    assert any("solved to convergence by L-BFGS" in t for t in said.texts)
    calibration = json.loads((tmp_path / "run" / "calibration.json").read_text())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert calibration["fitted_on"] == "val" and calibration["temperature"] > 0
    assert results["calibration"] == {"temperature": calibration["temperature"], "fitted_on": "val",
                                      "reported_on": "test", "optimistic": False}
    for split in ("val", "test"):
        assert {"ece", "reliability", "nll", "nll_before"} <= set(results[split]["calibrated"])
    assert results["val"]["calibrated"]["nll"] <= results["val"]["calibrated"]["nll_before"] + 1e-9
    config.optim.solver = "loop"
    looped = fit(config, tmp_path / "loop")
    assert len(looped.history) == config.optim.epochs  # the loop, as asked
    assert len(read_jsonl(tmp_path / "loop" / "predictions.jsonl")) == len(read_jsonl(tmp_path / "run" / "predictions.jsonl"))
