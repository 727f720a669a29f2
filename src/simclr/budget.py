"""Time-budgeted pretraining (``--budget 6m``): how many steps fit, measured as the run goes, and where the learning
rate schedule stands.

The user says how long pretraining may take; the run measures its own speed after a few warm-up steps, plans the
number of optimizer steps that fit (the checkpoints, the kNN monitor and the final exports included), and fits the
schedule to that many steps, so the cosine reaches its end when the time does instead of being cut off. The plan is
re-checked every few percent of the run: if the speed drifts, the remaining steps are re-sized and the schedule's
*progress* (a fraction in [0, 1]) continues from where it is at a new slope, so the learning rate never jumps.
The plan is part of the training state: a resumed run keeps it and spends what is left of the same budget.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, astuple, dataclass, fields

from .errors import ConfigError

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?$")

MEASURE_STEPS = 4  # steps timed (after the first) before the first plan
REPLAN_FRACTION = 0.05  # re-plan every 5 % of the planned steps
WARMUP_MAX_FRACTION = 0.1  # the warm-up takes at most this share of the planned steps
# Progressive resizing (train.low_res_size): before the full-resolution steps have been timed, their cost is
# predicted from the low-resolution speed as (full / low) ** LOW_RES_COST_EXPONENT times a low-resolution step's.
# Below 2 because a step's fixed costs do not shrink with the pixels: on 2 AMD EPYC Zen 4 cores, 16 px views ran
# at 2.8x the images/s of 32 px ones in the training loop (153 vs 54 at batch 128; benchmarks/RESULTS.md, "Accuracy
# per minute"). A wrong guess costs only a bend in the cosine: the plan is redone once the full size is timed.
LOW_RES_COST_EXPONENT = 1.5
# Work after training that the plan keeps time for (the final kNN monitor; under train.total_budget the evaluation of
# `simclr run`) is predicted from the training speed: a training step runs forward and backward (about 3 forwards) on
# 2 views of each image, a frozen encoder 1 forward per image. On the fp32 AMD EPYC Zen 3 the features came at 8x
# the training images/s at 32 px (105-113 against 13), so the prediction errs on the safe side.
FORWARDS_PER_TRAINING_IMAGE = 6.0


def low_res_speedup(low: int, full: int) -> float:
    """Predicted steps/s at ``low`` px over steps/s at ``full`` px, until the full-resolution steps are timed."""
    return (full / low) ** LOW_RES_COST_EXPONENT


def parse_duration(text: str | float | int, key: str = "train.budget") -> float:
    """``"6m"``, ``"90s"``, ``"2h"``, ``"1h30m"``, ``"1.5h"`` or a number of seconds -> seconds (> 0); ``key``
    names the setting in the error."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        m = _DURATION.match(s) if s else None
        if s and re.fullmatch(r"\d+(\.\d+)?", s):
            seconds = float(s)
        elif m and any(m.groups()):
            seconds = sum(float(v) * _UNITS[u] for v, u in zip(m.groups(), "hms") if v)
        else:
            raise ConfigError(f"{key}: cannot read {text!r} as a duration; use e.g. 90s, 6m, 2h or 1h30m")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"{key}: {text!r} is not a positive duration; use e.g. 90s, 6m, 2h or 1h30m")
    return seconds


@dataclass
class BudgetPlan:
    """The plan of a budgeted run; saved in every checkpoint (plain numbers only).

    ``progress(step)`` is the schedule's position after warm-up: it runs linearly from ``anchor_progress`` at
    ``anchor_step`` to 1 at ``total_steps``. A re-plan moves the anchor to the current step and progress, so the
    progress (and the learning rate) is continuous in the step.
    """

    budget_s: float
    warmup_steps: int
    total_steps: int = 0  # 0 until the speed has been measured
    warmup_from_step: int = 0  # where a shortened warm-up continues from (0: the configured warm-up unchanged) ...
    warmup_from: float = 0.0  # ... and the fraction of the peak learning rate reached there
    steps_per_s: float = 0.0
    images_per_s: float = 0.0
    reserve_s: float = 0.0  # time kept for the final kNN monitor, checkpoint and exports
    low_res_fraction: float = 0.0  # progressive resizing: the share of the steps at low resolution (0: none)
    low_res_speedup: float = 1.0  # predicted low- over full-resolution steps/s, used while only low-res is timed
    anchor_step: int = 0
    anchor_progress: float = 0.0
    replans: int = 0
    total_budget_s: float = 0.0  # train.total_budget: the whole `simclr run` ends by then (0: no such limit) ...
    after_s: float = 0.0  # ... and the time its evaluation after pretraining is predicted to take

    @property
    def planned(self) -> bool:
        return self.total_steps > 0

    def progress(self, step: int) -> float:
        """Fraction of the post-warm-up schedule done at optimizer step ``step`` (0 before the first plan)."""
        if not self.planned or step <= self.anchor_step:
            return self.anchor_progress
        span = max(1, self.total_steps - self.anchor_step)
        return min(1.0, self.anchor_progress + (1.0 - self.anchor_progress) * (step - self.anchor_step) / span)

    def warmup_fraction(self, step: int) -> float | None:
        """The learning rate at ``step`` as a fraction of the peak during the warm-up; None after it.

        Linear from 0 as configured; when the first plan shortens the warm-up, linear from where it was to the peak
        at the new end, so the learning rate stays continuous.
        """
        if step >= self.warmup_steps:
            return None
        if not self.warmup_from_step or step < self.warmup_from_step:
            return (step + 1) / self.warmup_steps
        return self.warmup_from + (1.0 - self.warmup_from) * (step - self.warmup_from_step + 1) / (
            self.warmup_steps - self.warmup_from_step)

    def replan(self, step: int, remaining_s: float, steps_per_s: float, images_per_step: int,
               low_res: bool = False) -> None:
        """Size the steps still to run from the time left and the measured speed; the progress stays continuous.

        The first plan also caps the warm-up at ``WARMUP_MAX_FRACTION`` of the planned steps (a warm-up of 10 epochs
        would otherwise outlast a budget of minutes). ``low_res``: ``steps_per_s`` was measured at low resolution
        (progressive resizing), so the last ``1 - low_res_fraction`` of the steps will run ``low_res_speedup`` times
        slower: N with ``(f N - step) / s + (1 - f) N r / s = remaining``.
        """
        remaining = max(remaining_s, 0.0) * steps_per_s  # steps at the measured speed
        if low_res and self.low_res_fraction:
            f, r = self.low_res_fraction, self.low_res_speedup
            total = max(step, int((remaining + step) / (f + (1.0 - f) * r)))
        else:
            total = step + int(remaining)
        if not self.planned and self.warmup_steps > step:
            cap = max(step + 1, round(WARMUP_MAX_FRACTION * total))
            if cap < self.warmup_steps:
                self.warmup_from = self.warmup_fraction(step - 1) if step else 0.0
                self.warmup_from_step, self.warmup_steps = step, cap
        start = max(step, self.warmup_steps)
        progress = self.progress(step) if step >= self.warmup_steps else 0.0
        # never below the warm-up, and at least one step so that a schedule exists
        self.total_steps = max(step + 1, self.warmup_steps + 1, total)
        self.anchor_step, self.anchor_progress = start, progress
        self.steps_per_s = steps_per_s
        self.images_per_s = steps_per_s * images_per_step
        self.replans += 1

    def done(self, step: int) -> bool:
        return self.planned and step >= self.total_steps

    def to_dict(self) -> dict:
        return asdict(self)

    def to_numbers(self) -> list[float]:
        return [float(v) for v in astuple(self)]

    def set_numbers(self, numbers: list[float]) -> None:
        """The inverse of :meth:`to_numbers` (for sending a plan between processes as one tensor)."""
        for f, v in zip(fields(self), numbers):
            setattr(self, f.name, int(round(v)) if f.type in ("int", int) else float(v))


@dataclass
class Deadline:
    """When a whole ``simclr run`` job must end (``train.total_budget``) and the work after pretraining that must
    fit before then; :class:`BudgetClock` keeps that work's predicted time out of the steps it plans."""

    at_s: float  # on the pretraining clock (BudgetClock.elapsed): total_s less what the job spent before pretraining
    total_s: float = 0.0  # train.total_budget in seconds, for the plan's record (the clock needs only at_s)
    images: int = 0  # images the evaluation passes through a frozen encoder (every encoder it evaluates)
    fixed_s: float = 0.0  # the rest of the evaluation, predicted in seconds (heads, t-SNE maps, report)
    images_per_s: float = 0.0  # the frozen encoder's measured forward speed (0: predicted from the training speed)


class BudgetClock:
    """Runs a :class:`BudgetPlan` during training: times the steps, plans, re-plans, and says when to stop.

    ``elapsed`` counts the budget already spent when the clock is made (``spent_s``: this process's set-up, such as
    loading the data, plus the time of earlier processes of the same run, so a resumed run spends only what is
    left) and then the time since. ``overhead`` is what the run spent outside training steps (checkpoints, kNN
    monitor); the final one of each is kept in reserve.
    """

    def __init__(self, plan: BudgetPlan, images_per_step: int, spent_s: float, final_monitor_images: int = 0,
                 share: Callable[[BudgetPlan], None] | None = None, deadline: Deadline | None = None):
        self.plan = plan
        self.deadline = deadline
        self.share = share  # under torchrun: makes every process hold rank 0's plan after each (re-)plan
        self.images_per_step = images_per_step
        self.started = time.perf_counter() - spent_s
        self.final_monitor_images = final_monitor_images
        self.step_time = 0.0  # seconds spent in timed training steps (since the last plan: the speed now)
        self.timed_steps = 0
        self.overhead_s = 0.0  # checkpoints and monitors of this process so far
        self.steps_done = 0  # steps run by this process
        self.last_mark: float | None = None
        self.replan_due = False  # re-plan as soon as the speed is measured again (after a change of resolution)
        self.low_res = False  # the steps run at low resolution (progressive resizing)
        self.checkpoint_s = 0.0  # the last checkpoint's duration
        self.monitor_s: float | None = None  # the last kNN monitor's duration

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def note(self, kind: str, seconds: float) -> None:
        """Record an overhead that will recur at the end (``checkpoint`` or ``monitor``)."""
        self.overhead_s += seconds
        if kind == "checkpoint":
            self.checkpoint_s = max(self.checkpoint_s, seconds)
        elif kind == "monitor":
            self.monitor_s = seconds
        if self.last_mark is not None:
            self.last_mark += seconds  # the next step's time excludes the overhead

    def set_low_res(self, low_res: bool) -> None:
        """The steps from now on run at low (True) or full resolution: the speed is measured afresh (the first step
        at the new size is not timed: new shapes allocate) and the plan is redone as soon as it is."""
        if low_res != self.low_res:
            self.low_res = low_res
            self.step_time, self.timed_steps, self.last_mark = 0.0, 0, None
            self.replan_due = self.plan.planned

    def _forward_s(self, images: int) -> float:
        """Predicted seconds for ``images`` forwards of the frozen encoder at full resolution."""
        rate = self.plan.images_per_s or (self.timed_steps * self.images_per_step / max(self.step_time, 1e-9))
        if self.low_res:
            rate /= self.plan.low_res_speedup  # evaluation runs at full resolution
        return images / max(FORWARDS_PER_TRAINING_IMAGE * rate, 1e-9)

    def _reserve(self) -> float:
        # before a monitor has run, its cost is predicted from the training speed
        monitor = self.monitor_s if self.monitor_s is not None else self._forward_s(self.final_monitor_images)
        return monitor + 2.0 * self.checkpoint_s  # the final checkpoint and the exports

    def _remaining(self) -> float:
        """Seconds left for training steps: to the end of the budget, or to the deadline less the evaluation."""
        plan = self.plan
        plan.reserve_s = self._reserve()
        elapsed = self.elapsed()
        remaining = plan.budget_s - elapsed - plan.reserve_s
        if self.deadline is not None:
            d = self.deadline
            forward = d.images / d.images_per_s if d.images_per_s > 0 else self._forward_s(d.images)
            plan.after_s = forward + d.fixed_s
            remaining = min(remaining, d.at_s - elapsed - plan.reserve_s - plan.after_s)
        return remaining

    def after_step(self, step: int) -> bool:
        """Call after optimizer step ``step`` (1-based count of steps done). Returns True when the run must stop."""
        now = time.perf_counter()
        self.steps_done += 1
        if self.last_mark is not None:
            self.step_time += now - self.last_mark
            self.timed_steps += 1
        self.last_mark = now  # the first step after a start or an overhead is not timed (warm-up, allocation)
        plan = self.plan
        every = max(1, int(REPLAN_FRACTION * plan.total_steps))
        if self.timed_steps >= MEASURE_STEPS and (not plan.planned or step % every == 0 or self.replan_due):
            # seconds per step now, plus this process's checkpoints and monitors spread over its steps so far: the
            # ones still to come before the end cost about as much per step
            per_step = self.step_time / self.timed_steps + self.overhead_s / self.steps_done
            plan.replan(step, self._remaining(), 1.0 / per_step, self.images_per_step, low_res=self.low_res)
            if self.share is not None:  # every process times its own steps; they must stop (and resize) together
                self.share(plan)
            self.step_time, self.timed_steps, self.replan_due = 0.0, 0, False  # the next plan uses the speed since this one
        return plan.done(step)
