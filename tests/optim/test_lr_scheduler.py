"""Learning-rate schedules: values at chosen steps, worked out by hand; checkpoints."""
import math

import numpy as np
import pytest

import tinygnet as tg
from tinygnet.optim import SGD, CosineAnnealingLR, LinearWarmup, OneCycleLR, PaperStepLR, StepLR


def optimizer(lr=1.0, groups=1):
    return SGD([{"params": [tg.tensor(np.zeros(1, np.float32), requires_grad=True)]}
                for _ in range(groups)], lr=lr)


def trace(scheduler, steps):
    """The lr for t = 0 .. steps-1, read from the optimiser itself."""
    lrs = []
    for _ in range(steps):
        lr = scheduler.optimizer.param_groups[0]["lr"]
        assert scheduler.get_last_lr()[0] == lr
        lrs.append(lr)
        scheduler.step()
    return lrs


def test_step_lr():
    assert trace(StepLR(optimizer(), step_size=3, gamma=0.5), 8) == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_paper_schedule_is_four_percent_every_eight_epochs():
    lrs = trace(PaperStepLR(optimizer(0.01)), 25)
    np.testing.assert_allclose(lrs[:8], [0.01] * 8)
    np.testing.assert_allclose(lrs[8:16], [0.0096] * 8)
    np.testing.assert_allclose(lrs[16:24], [0.009216] * 8)
    np.testing.assert_allclose(lrs[24], 0.00884736)


def test_cosine_annealing():
    lrs = trace(CosineAnnealingLR(optimizer(), T_max=4, eta_min=0.0), 5)
    half_sqrt2 = math.sqrt(2) / 2
    np.testing.assert_allclose(lrs, [1, (1 + half_sqrt2) / 2, 0.5, (1 - half_sqrt2) / 2, 0], atol=1e-15)
    lrs = trace(CosineAnnealingLR(optimizer(2.0), T_max=2, eta_min=0.5), 3)
    np.testing.assert_allclose(lrs, [2.0, 1.25, 0.5])


def test_linear_warmup_then_schedule():
    opt = optimizer()
    scheduler = LinearWarmup(StepLR(opt, step_size=2, gamma=0.5), warmup_steps=4, start_factor=0.25)
    lrs = trace(scheduler, 8)
    np.testing.assert_allclose(lrs, [0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0, 0.5, 0.5])


def test_one_cycle_cosine():
    # max_lr 1, div 25 -> starts at 0.04; final div 1e4 -> ends at 4e-6.
    # pct_start 0.3 of 10 steps: the peak is at step 0.3*10 - 1 = 2; the fall ends at step 9.
    lrs = trace(OneCycleLR(optimizer(), max_lr=1.0, total_steps=10), 10)
    up = lambda t: 1 + (0.04 - 1) / 2 * (math.cos(math.pi * t / 2) + 1)
    down = lambda t: 4e-6 + (1 - 4e-6) / 2 * (math.cos(math.pi * (t - 2) / 7) + 1)
    np.testing.assert_allclose(lrs[:3], [0.04, 0.52, 1.0], rtol=1e-12)
    np.testing.assert_allclose(lrs, [up(t) for t in range(3)] + [down(t) for t in range(3, 10)], rtol=1e-12)
    assert lrs[-1] == pytest.approx(4e-6)


def test_one_cycle_linear_with_groups_and_epochs():
    opt = optimizer(groups=2)
    scheduler = OneCycleLR(opt, max_lr=[1.0, 2.0], epochs=2, steps_per_epoch=10, pct_start=0.25,
                           anneal_strategy="linear", div_factor=10, final_div_factor=100)
    # Peak at step 4; from 0.1 up to 1 linearly, then down to 0.001 at step 19.
    lrs = []
    for _ in range(20):
        lrs.append(scheduler.get_last_lr())
        scheduler.step()
    lrs = np.array(lrs)
    np.testing.assert_allclose(lrs[[0, 2, 4], 0], [0.1, 0.55, 1.0])
    np.testing.assert_allclose(lrs[19, 0], 0.001)
    np.testing.assert_allclose(lrs[12, 0], 1.0 + (0.001 - 1.0) * 8 / 15)
    np.testing.assert_allclose(lrs[:, 1], 2 * lrs[:, 0])


def test_one_cycle_refuses_to_step_past_its_end():
    scheduler = OneCycleLR(optimizer(), max_lr=1.0, total_steps=10)
    for _ in range(10):
        scheduler.step()
    with pytest.raises(ValueError, match="total_steps"):
        scheduler.step()


@pytest.mark.parametrize("make", [
    lambda opt: PaperStepLR(opt),
    lambda opt: CosineAnnealingLR(opt, T_max=30, eta_min=0.01),
    lambda opt: OneCycleLR(opt, max_lr=0.5, total_steps=40),
    lambda opt: LinearWarmup(CosineAnnealingLR(opt, T_max=20), warmup_steps=5),
], ids=["paper", "cosine", "one-cycle", "warmup"])
def test_state_dict_round_trip(make):
    original = make(optimizer(0.1))
    for _ in range(13):
        original.step()
    saved = original.state_dict()
    resumed = make(optimizer(0.1))
    resumed.load_state_dict(saved)
    assert resumed.get_last_lr() == original.get_last_lr()
    assert resumed.optimizer.param_groups[0]["lr"] == original.get_last_lr()[0]
    assert trace(resumed, 10) == trace(original, 10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="step_size"):
        StepLR(optimizer(), step_size=0)
    with pytest.raises(ValueError, match="total_steps"):
        OneCycleLR(optimizer(), max_lr=1.0)
    with pytest.raises(ValueError, match="max_lr"):
        OneCycleLR(optimizer(groups=2), max_lr=[1.0], total_steps=10)


@pytest.mark.parametrize("make", [lambda o: StepLR(o, 2), lambda o: LinearWarmup(StepLR(o, 2), 2)],
                         ids=["step", "warmup"])
def test_load_state_dict_of_something_else_says_what_it_expected(make):
    scheduler = make(SGD([tg.tensor([1.0], requires_grad=True)], lr=0.1))
    with pytest.raises(TypeError, match=r"load_state_dict: expected a dict .* got NoneType"):
        scheduler.load_state_dict(None)
