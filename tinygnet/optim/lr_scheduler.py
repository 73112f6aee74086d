"""Learning-rate schedules, PyTorch style: call ``scheduler.step()`` after ``optimizer.step()``.

Each schedule is a closed-form function ``lr_at(group, t)`` of the number of
``step()`` calls made so far, ``t`` (0 at construction, which already sets the
optimiser's lr to the value for t = 0). Whether ``t`` counts epochs or
iterations is up to the caller, and fixes the units of the arguments:

* ``PaperStepLR`` (x0.96 every 8 epochs), ``StepLR``: call once per epoch.
* ``OneCycleLR``: once per iteration (``total_steps`` = epochs x batches per epoch).
* ``CosineAnnealingLR``, ``LinearWarmup``: either; ``T_max``/``warmup_steps`` in the same unit.

``get_last_lr()`` returns the lr of each group; ``state_dict()`` /
``load_state_dict()`` save and restore the position in the schedule.
"""
from __future__ import annotations

import copy
import math

__all__ = ["LRScheduler", "StepLR", "PaperStepLR", "CosineAnnealingLR", "LinearWarmup", "OneCycleLR"]


class LRScheduler:
    """Base class: ``base_lrs`` are the groups' lrs at construction; subclasses define ``lr_at``."""

    _not_saved = ("optimizer",)   # attributes that state_dict leaves out

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def lr_at(self, group: int, t: int) -> float:
        """The lr of parameter group ``group`` after ``t`` calls of ``step()``."""
        raise NotImplementedError

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def _apply(self):
        self._last_lr = [float(self.lr_at(i, self.last_step)) for i in range(len(self.base_lrs))]
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def get_last_lr(self) -> list:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """Every attribute but the optimiser (numbers and lists)."""
        return {key: copy.deepcopy(value) for key, value in self.__dict__.items()
                if key not in self._not_saved}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position and settings, and set the optimiser's lrs to match."""
        _check_state(self, state)
        self.__dict__.update(copy.deepcopy(state))
        self._apply()

    def __repr__(self):
        return f"{type(self).__name__}(last_step={self.last_step}, lr={self._last_lr})"


def _check_state(scheduler, state) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"{type(scheduler).__name__}.load_state_dict: expected a dict (what "
                        f"state_dict() returns), got {type(state).__name__}")


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (t // step_size)``: multiply by ``gamma`` every ``step_size`` steps."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        if not (isinstance(step_size, int) and step_size >= 1):
            raise ValueError(f"{type(self).__name__}: step_size must be a positive integer, got {step_size!r}")
        if not gamma > 0:
            raise ValueError(f"{type(self).__name__}: gamma must be > 0, got {gamma!r}")
        self.step_size, self.gamma = step_size, float(gamma)
        super().__init__(optimizer)

    def lr_at(self, group, t):
        return self.base_lrs[group] * self.gamma ** (t // self.step_size)


class PaperStepLR(StepLR):
    """The GoogLeNet paper's schedule: "decreasing the learning rate by 4% every 8 epochs".

    ``StepLR(step_size=8, gamma=0.96)``; call ``step()`` once per epoch.
    """

    def __init__(self, optimizer, step_size=8, gamma=0.96):
        super().__init__(optimizer, step_size=step_size, gamma=gamma)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``.

    Falls from base_lr to eta_min over ``T_max`` steps (PyTorch's closed form;
    like PyTorch, it rises again if stepped past ``T_max``).
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        if not (isinstance(T_max, int) and T_max >= 1):
            raise ValueError(f"CosineAnnealingLR: T_max must be a positive integer, got {T_max!r}")
        self.T_max, self.eta_min = T_max, float(eta_min)
        super().__init__(optimizer)

    def lr_at(self, group, t):
        base = self.base_lrs[group]
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class LinearWarmup(LRScheduler):
    """Ramp the lr linearly for ``warmup_steps`` steps, then follow ``after``.

    For ``t < warmup_steps``: ``lr = target * (start_factor + (1 - start_factor) * t / warmup_steps)``
    with ``target`` the lr at which ``after`` starts; then ``after``'s lr at
    ``t - warmup_steps`` (as PyTorch's SequentialLR of LinearLR and ``after``).
    Build ``after`` first, on the same optimiser, and step only the wrapper.
    """

    _not_saved = ("optimizer", "after")

    def __init__(self, after: LRScheduler, warmup_steps, start_factor=0.1):
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            raise ValueError(f"LinearWarmup: warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if not 0 < start_factor <= 1:
            raise ValueError(f"LinearWarmup: start_factor must be in (0, 1], got {start_factor!r}")
        self.after, self.warmup_steps, self.start_factor = after, warmup_steps, float(start_factor)
        super().__init__(after.optimizer)

    def lr_at(self, group, t):
        if t >= self.warmup_steps:
            return self.after.lr_at(group, t - self.warmup_steps)
        factor = self.start_factor + (1 - self.start_factor) * t / self.warmup_steps
        return self.after.lr_at(group, 0) * factor

    def state_dict(self):
        state = super().state_dict()
        state["after"] = self.after.state_dict()
        return state

    def load_state_dict(self, state):
        _check_state(self, state)
        state = dict(state)
        self.after.load_state_dict(state.pop("after"))
        super().load_state_dict(state)


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith): warm up to ``max_lr``, then anneal far below it; per iteration.

    Over the first ``pct_start * total_steps - 1`` steps the lr goes from
    ``max_lr / div_factor`` up to ``max_lr``; over the rest, down to
    ``max_lr / div_factor / final_div_factor`` at step ``total_steps - 1``;
    each phase by a half cosine (``anneal_strategy="cos"``) or linearly
    (``"linear"``). The values are PyTorch's. ``max_lr``: one number or one
    per group. Give ``total_steps``, or ``epochs`` and ``steps_per_epoch``.
    Unlike PyTorch, momentum is not cycled.
    """

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", div_factor=25.0, final_div_factor=1e4):
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR: give total_steps, or both epochs and steps_per_epoch")
            total_steps = epochs * steps_per_epoch
        if not (isinstance(total_steps, int) and total_steps >= 2):
            raise ValueError(f"OneCycleLR: total_steps must be an integer >= 2, got {total_steps!r}")
        if not 0 < pct_start < 1:
            raise ValueError(f"OneCycleLR: pct_start must be in (0, 1), got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        groups = len(optimizer.param_groups)
        max_lrs = list(max_lr) if isinstance(max_lr, (list, tuple)) else [max_lr] * groups
        if len(max_lrs) != groups:
            raise ValueError(f"OneCycleLR: {len(max_lrs)} max_lr values for {groups} parameter groups")
        self.max_lrs = [float(lr) for lr in max_lrs]
        self.initial_lrs = [lr / div_factor for lr in self.max_lrs]
        self.min_lrs = [lr / final_div_factor for lr in self.initial_lrs]
        self.total_steps, self.anneal_strategy = total_steps, anneal_strategy
        self.warmup_end = float(pct_start * total_steps) - 1   # the step at which lr == max_lr
        if not 0 < self.warmup_end < total_steps - 1:
            raise ValueError(f"OneCycleLR: pct_start * total_steps = {pct_start * total_steps} leaves "
                             f"no room for one of the two phases; use more steps or another pct_start")
        super().__init__(optimizer)

    def _anneal(self, start, end, fraction):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * fraction) + 1)
        return start + (end - start) * fraction

    def lr_at(self, group, t):
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR: stepped {t} times, but total_steps is {self.total_steps}")
        last = self.total_steps - 1
        if t <= self.warmup_end:
            return self._anneal(self.initial_lrs[group], self.max_lrs[group], t / self.warmup_end)
        fraction = (t - self.warmup_end) / (last - self.warmup_end)
        return self._anneal(self.max_lrs[group], self.min_lrs[group], fraction)
