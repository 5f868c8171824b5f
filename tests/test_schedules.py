"""Each schedule shapes the learning rate as its name promises, per param group."""
import pytest
import torch

from core.config import OptimConfig
from core.train.schedules import make_scheduler

pytestmark = pytest.mark.unit


def run(schedule, epochs=6, steps=10, metric=None, **kw):
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 0.1}, {"params": [p2], "lr": 0.01}], lr=0.1)
    sched, when = make_scheduler(opt, OptimConfig(schedule=schedule, epochs=epochs, **kw), steps)
    per_epoch = []
    for epoch in range(epochs):
        per_epoch.append([g["lr"] for g in opt.param_groups])
        for _ in range(steps):
            opt.step()
            if when == "batch":
                sched.step()
        if when == "epoch":
            sched.step()
        elif when == "metric":
            sched.step(metric(epoch))
    return per_epoch


def test_constant():
    assert run("constant") == [[0.1, 0.01]] * 6


def test_step_decays_by_gamma_every_step_size_epochs():
    lrs = [g[0] for g in run("step", step_size=2, gamma=0.5)]
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_cosine_warms_up_then_falls_and_keeps_group_ratios():
    lrs = run("cosine", warmup_epochs=1)
    assert lrs[0][0] == pytest.approx(0.01)  # first warm-up step: 1/10 of the rate
    heads = [g[0] for g in lrs[1:]]
    assert heads == sorted(heads, reverse=True) and heads[0] == pytest.approx(0.1)
    assert all(g[0] / g[1] == pytest.approx(10) for g in lrs)


def test_onecycle_rises_then_falls():
    heads = [g[0] for g in run("onecycle", epochs=10)]
    peak = heads.index(max(heads))
    assert 0 < peak < 9 and heads[0] < heads[peak] / 10 and heads[-1] < heads[peak] / 10


def test_plateau_cuts_the_rate_when_the_metric_stalls():
    heads = [g[0] for g in run("plateau", gamma=0.1, metric=lambda e: 0.5)]
    assert heads[0] == 0.1 and heads[-1] < 0.1


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="cosine"):
        run("zigzag")
