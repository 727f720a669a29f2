"""SimCLR pretraining: ``pretrain(cfg)`` sets things up once, ``train_one_epoch`` is the loop, top to bottom."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from . import augment, rundir
from .batches import device_batches
from .budget import MEASURE_STEPS, BudgetClock, BudgetPlan, Deadline, low_res_speedup, parse_duration
from .checkpoint import atomic_save, config_differences, load_checkpoint, save_weights
from .config import Config, TrainConfig, save_config, to_dict
from .data import ImageData
from .errors import CheckpointError, ConfigError, NonFiniteLossError
from .evaluate.features import extract_features
from .evaluate.knn import knn_accuracy
from .hardware import to_device_checked
from .loss import multicrop_nt_xent, nt_xent
from .models import SimCLR, build_model, convert_sync_batchnorm
from .optim import Schedule, build_optimizer, warmup_steps
from .precision import PRECISIONS, Precision, check_explicit, choose_precision
from .runlock import lock_for_training
from .runtime import (
    Dist,
    Log,
    autocast,
    barrier,
    configure_device,
    init_distributed,
    local_main_first,
    seed_everything,
)
from .splits import StreamedImages, pretraining_sets, preview_images
from .stream import stream_batches


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint so that a resumed run continues exactly."""

    epoch: int = 0  # current epoch, 0-based
    step_in_epoch: int = 0  # next step to run within the epoch
    global_step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    epoch_loss_sum: float = 0.0  # sum of finite step losses in the current epoch
    epoch_loss_steps: int = 0
    epoch_time: float = 0.0  # seconds spent in the current epoch before the last checkpoint
    nonfinite_skipped: int = 0
    wall_time: float = 0.0  # seconds of training before this process started
    history: list[dict] = field(default_factory=list)  # metrics lines of finished epochs
    budget: dict | None = None  # the BudgetPlan of a run with train.budget (simclr.budget)
    full_res_from: int | None = None  # progressive resizing: the global step from which the views are full size


# ----------------------------------------------------------------------------- the run


def pretrain(cfg: Config, resume: bool = False, command: str | None = None, log: Log = print,
             backbone: nn.Module | None = None, deadline: Deadline | None = None) -> Path:
    """Train a SimCLR encoder as configured and leave a self-describing run directory ``cfg.out``.

    The run directory holds ``config.yaml``, ``metrics.jsonl``, ``checkpoints/last.pt``, ``backbone.safetensors``,
    ``projection_head.safetensors``, ``run.json``, TensorBoard events and ``plots/`` (see :mod:`simclr.rundir`).
    ``backbone``: your own encoder module instead of the registry's ``model.backbone`` (trained in place).
    ``deadline``: from ``simclr run`` under ``train.total_budget``, when the whole job must end and what follows
    pretraining (:class:`simclr.budget.Deadline`); the plan then ends pretraining early enough for both.
    Returns its path.
    """
    rt = init_distributed(cfg.train.device)
    lock = None
    try:
        check_explicit(cfg.train.precision, rt.device)  # before any work: fp16 on a CPU is refused
        lock = lock_for_training(cfg.out, rt)  # one writer per run directory
        return _pretrain(cfg, rt, resume, command, log if rt.is_main else (lambda *a, **k: None), backbone, deadline)
    finally:
        if lock is not None:
            lock.release()
        if rt.owns_group:  # a group the caller made (several runs in one launch) stays theirs
            dist.destroy_process_group()


def _pretrain(cfg: Config, rt: Dist, resume: bool, command: str | None, log: Log, backbone: nn.Module | None = None,
              deadline: Deadline | None = None) -> Path:
    started = time.perf_counter()
    device, B, run_dir = rt.device, cfg.train.batch_size, Path(cfg.out)
    configure_device(device, cfg.train.reuse_memory, cfg.train.deterministic)
    if B % rt.world_size:
        raise ConfigError(f"train.batch_size: {B} is not divisible by the {rt.world_size} processes; use a multiple of {rt.world_size}")
    saved = _saved_run(run_dir, cfg, resume)

    seed_everything(cfg.train.seed)
    with local_main_first(rt):  # local rank 0 downloads / decodes into the cache; the others then read it
        pre, bank, queries = pretraining_sets(cfg, cfg.train.seed, log)
    steps_per_epoch = len(pre) // B
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size: {B} is larger than the {len(pre)} pretraining images; use a batch size <= {len(pre)}")
    # Streaming (data.stream): the files are decoded and cropped by DataLoader workers each step (simclr.stream).
    images = to_device_checked(pre.images, device) if isinstance(pre, ImageData) else None

    model, net, optimizer, state, scaler = _build(cfg, rt, saved, log, backbone)
    choice = _choose_precision(cfg.train, model, cfg.model.image_size, rt, log)
    precision = choice.name
    if scaler is None and precision == "fp16":  # loss scaling: fp16 gradients would otherwise underflow
        scaler = torch.amp.GradScaler(device.type)
    log(f"pretraining on {len(pre)} images ({steps_per_epoch} steps of {B} per epoch) on {device} in {precision}"
        + (f", {rt.world_size} processes" if rt.distributed else ""))
    if deadline is not None and deadline.images:
        deadline = dataclasses.replace(deadline, images_per_s=_forward_speed(model.backbone, cfg, device, precision))
        log(f"train.total_budget {cfg.train.total_budget}: the evaluation's {deadline.images} forwards at "
            f"{deadline.images_per_s:.0f} images/s (measured) + {deadline.fixed_s:.0f} s are kept out of pretraining")
    plan = budget_plan(cfg, state, steps_per_epoch, log, deadline)
    schedule = Schedule(optimizer, cfg.optim, B, steps_per_epoch, cfg.train.epochs, plan=plan)
    clock = None
    if plan is not None:
        monitor_images = len(bank) + len(queries) if bank is not None and cfg.train.knn_every else 0
        clock = BudgetClock(plan, B, state.wall_time + time.perf_counter() - started, monitor_images,
                            share=(lambda p: _share_plan(p, device)) if rt.distributed else None, deadline=deadline)
    total_steps = (lambda: plan.total_steps) if plan is not None else (lambda: cfg.train.epochs * steps_per_epoch)
    view_size = ViewSize(cfg, state, total_steps, clock, log)
    writer = _open_run_dir(run_dir, cfg, pre, state, command, fresh=saved is None) if rt.is_main else None
    since = [time.perf_counter()]  # wall time not yet added to state.wall_time

    def checkpoint() -> None:
        if plan is not None:
            state.budget = plan.to_dict()
        if rt.is_main:
            state.wall_time += time.perf_counter() - since[0]
            since[0] = time.perf_counter()
            if not save_checkpoint(run_dir / rundir.CHECKPOINT, model, optimizer, state, cfg, scaler):
                log(f"warning: weights are not finite at global step {state.global_step}; kept the previous checkpoint")
        barrier()

    def finished(epochs_done: int) -> bool:
        return plan.done(state.global_step) if plan is not None else epochs_done >= cfg.train.epochs

    while not finished(state.epoch):
        first_step = state.step_in_epoch
        if isinstance(pre, StreamedImages):
            batches = stream_batches(pre.paths, cfg, state.epoch, state.step_in_epoch, rt, size=pre.size)
        else:
            batches = device_batches(images, cfg, state.epoch, state.step_in_epoch, rt, size=view_size)
        train_one_epoch(net, optimizer, schedule, batches, steps_per_epoch, cfg, state, rt, precision, on_checkpoint=checkpoint,
                        log=log, clock=clock, scaler=scaler)
        line = _epoch_line(state, optimizer, (state.step_in_epoch - first_step) * B)
        if bank is not None and _knn_due(line["epoch"], cfg.train, finished(line["epoch"])):
            t0 = time.perf_counter()
            if rt.is_main:
                line["knn_accuracy"] = knn_accuracy(
                    unwrap(net).backbone, bank, queries, cfg.model.image_size, cfg.augment, device, precision,
                    k=cfg.train.knn_k, t=cfg.train.knn_t, batch_size=max(B, 256),
                )
            barrier()
            if clock is not None:
                clock.note("monitor", time.perf_counter() - t0)
        state.history.append(line)
        state.epoch, state.step_in_epoch = line["epoch"], 0
        state.epoch_loss_sum, state.epoch_loss_steps, state.epoch_time = 0.0, 0, 0.0
        t0 = time.perf_counter()
        checkpoint()
        line["checkpoint_time_s"] = time.perf_counter() - t0  # wall time of an epoch: epoch_time_s + this
        if clock is not None:
            clock.note("checkpoint", line["checkpoint_time_s"])
        if rt.is_main:
            _record_epoch(run_dir, state.history, _epochs_label(cfg, plan, steps_per_epoch), writer, log)

    if rt.is_main:
        finish_run(run_dir, unwrap(net), cfg, state, choice)
        if writer is not None:
            writer.close()
    barrier()
    log(f"pretraining done in {time.perf_counter() - started:.0f} s: {run_dir}")
    return run_dir


def _saved_run(run_dir: Path, cfg: Config, resume: bool) -> dict | None:
    """The checkpoint to resume from (None for a new run); refuses a config that changes the model or data, and a
    new run over an existing one."""
    ckpt_path = run_dir / rundir.CHECKPOINT
    if not resume:
        if ckpt_path.exists():
            raise ConfigError(f"{run_dir} already holds a run (checkpoints/last.pt); continue it with --resume or choose another --out")
        return None
    saved = load_checkpoint(ckpt_path)
    diffs = config_differences(saved["config"], to_dict(cfg))
    if diffs:
        raise CheckpointError(
            f"--resume refused: the config differs from the run in {run_dir} in keys that change the model or data: "
            + "; ".join(diffs) + ". Use the original values, or start a new run with another --out"
        )
    return saved


def _build(cfg: Config, rt: Dist, saved: dict | None, log: Log, backbone: nn.Module | None = None):
    """(model, the module to train (DDP / compiled wrapper), optimizer, state, fp16 loss scaler or None), restored
    from ``saved``."""
    device, B = rt.device, cfg.train.batch_size
    model = build_model(cfg.model, backbone).to(device, torch.float64 if cfg.train.precision == "fp64" else torch.float32)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.sync_bn and rt.distributed:
        model = convert_sync_batchnorm(model, device, cfg.train.sync_bn_impl)
    optimizer = build_optimizer(cfg.optim, model, B)
    state, scaler = TrainState(), None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = TrainState(**saved["state"])
        if saved.get("scaler"):  # an fp16 run: its loss scale goes on where it was
            scaler = torch.amp.GradScaler(device.type)
            scaler.load_state_dict(saved["scaler"])
        log(f"resumed from {Path(cfg.out) / rundir.CHECKPOINT} at epoch {state.epoch + 1}, step {state.step_in_epoch}")
    net: nn.Module = model
    if rt.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        net = torch.compile(net)
    return model, net, optimizer, state, scaler


def _choose_precision(tc: TrainConfig, model: nn.Module, image_size: int, rt: Dist, log: Log) -> Precision:
    """``train.precision`` for this hardware (:func:`simclr.precision.choose_precision`, probing ``model`` where the
    hardware does not tell); under torchrun every process takes rank 0's choice, since a probe on each could differ
    and the processes must run the same arithmetic."""
    choice = choose_precision(tc.precision, rt.device, model, image_size, tc.channels_last, log)
    if rt.distributed:
        index = torch.tensor([PRECISIONS.index(choice.name)], device=rt.device)
        dist.broadcast(index, 0)
        if PRECISIONS[int(index)] != choice.name:
            choice.reason = f"rank 0's choice (this process's: {choice.name}, {choice.reason})"
            choice.name = PRECISIONS[int(index)]
    return choice


def _forward_speed(encoder: nn.Module, cfg: Config, device: torch.device, precision: str) -> float:
    """Images/s of ``encoder``'s frozen forward as the evaluation runs it (eval mode, its batch size, resolution and
    precision), on random pixels: the speed does not depend on them. Two batches; the second is timed (the first
    allocates)."""
    size = cfg.model.image_size
    x = torch.randint(0, 256, (cfg.eval.batch_size, 3, size, size), dtype=torch.uint8)
    for _ in range(2):
        t0 = time.perf_counter()
        extract_features(encoder, x, size, cfg.augment.mean, cfg.augment.std, device, precision, len(x))
    return len(x) / max(time.perf_counter() - t0, 1e-9)


def budget_plan(cfg: Config, state: TrainState, steps_per_epoch: int, log: Log,
                deadline: Deadline | None = None) -> BudgetPlan | None:
    """The run's :class:`BudgetPlan`: the saved one when resuming a budgeted run (with or without ``--budget``
    again), a new one for ``train.budget`` or a ``deadline`` (``simclr run`` under ``train.total_budget``), else
    None."""
    if state.budget:
        plan = BudgetPlan(**state.budget)
        log(f"budget: resuming the plan of {plan.total_steps} steps, {max(plan.budget_s - state.wall_time, 0):.0f} s "
            f"of {plan.budget_s:.0f} s left")
        return plan
    if deadline is None and cfg.train.total_budget is not None:
        log("train.total_budget: applies to `simclr run` (pretraining, evaluation and report); pretraining alone "
            "follows train.budget")
    if cfg.train.budget is None and deadline is None:
        return None
    if state.global_step:
        raise ConfigError("train.budget: this run was started without a budget; resume it without --budget "
                          "(or start a new run with another --out)")
    budget_s = parse_duration(cfg.train.budget) if cfg.train.budget is not None else deadline.at_s
    if deadline is not None:  # pretraining cannot outlast the job
        budget_s = min(budget_s, deadline.at_s)
    log(f"budget {cfg.train.budget or cfg.train.total_budget} ({budget_s:.0f} s): the number of steps is planned "
        f"after {MEASURE_STEPS + 1} measured steps (train.epochs is not used)"
        + (f"; the whole run ends within train.total_budget {cfg.train.total_budget}, its evaluation included"
           if deadline is not None else ""))
    plan = BudgetPlan(budget_s=budget_s, warmup_steps=warmup_steps(cfg.optim, steps_per_epoch))
    if deadline is not None:
        plan.total_budget_s = deadline.total_s
    if cfg.train.low_res_size:
        plan.low_res_fraction = cfg.train.low_res_fraction
        plan.low_res_speedup = low_res_speedup(cfg.train.low_res_size, cfg.model.image_size)
    return plan


def _share_plan(plan: BudgetPlan, device: torch.device) -> None:
    """Rank 0's plan on every process (one broadcast): each process times its own steps, and plans that differed by
    a step would leave one process waiting in a collective for another that has stopped."""
    numbers = torch.tensor(plan.to_numbers(), dtype=torch.float64, device=device)
    dist.broadcast(numbers, 0)
    plan.set_numbers(numbers.tolist())


class ViewSize:
    """Progressive resizing (``train.low_res_size``): the side of the next batch's views.

    Low resolution until ``train.low_res_fraction`` of the steps (of the budget's plan, or of ``train.epochs``), then
    ``model.image_size`` for good: the switch step is kept in ``state.full_res_from`` (and in the checkpoint), so
    neither a re-plan nor a resume switches back. A budget ``clock`` is told, so that it times the new speed.
    """

    def __init__(self, cfg: Config, state: TrainState, total_steps: Callable[[], int], clock: BudgetClock | None,
                 log: Log):
        self.low, self.full, self.fraction = cfg.train.low_res_size, cfg.model.image_size, cfg.train.low_res_fraction
        self.state, self.total_steps, self.clock, self.log = state, total_steps, clock, log
        if clock is not None:
            clock.set_low_res(self.low_res)

    @property
    def low_res(self) -> bool:
        return bool(self.low) and self.state.full_res_from is None

    def __call__(self) -> int:
        if not self.low_res:
            return self.full
        total, step = self.total_steps(), self.state.global_step
        if total and step >= self.fraction * total:  # total is 0 while a budget's first plan is pending
            self.state.full_res_from = step
            if self.clock is not None:
                self.clock.set_low_res(False)
            self.log(f"progressive resizing: {self.full} px views from step {step + 1} of {total} ({self.low} px before)")
            return self.full
        return self.low


def _open_run_dir(run_dir: Path, cfg: Config, pre: ImageData | StreamedImages, state: TrainState, command: str | None,
                  fresh: bool):
    """Folders, ``config.yaml``, ``skipped_files.txt``, ``metrics.jsonl`` as of ``state``, the augmentation preview
    (new runs) and a TensorBoard writer (None if tensorboard cannot be imported). Main process only."""
    (run_dir / rundir.PLOTS).mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / rundir.CHECKPOINT
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    rundir.remove_temporaries(ckpt_path)
    save_config(cfg, run_dir / rundir.CONFIG, {"command": command or "", "kind": "simclr"})
    if isinstance(pre, ImageData) and pre.skipped:  # unreadable files were skipped with one warning; keep the list
        rundir.atomic_write_bytes("".join(p + "\n" for p in pre.skipped).encode(), run_dir / rundir.SKIPPED_FILES)
    rundir.write_metrics(run_dir, state.history)
    if cfg.train.preview and fresh:
        shown = preview_images(pre, cfg.train.seed)
        if len(shown):
            augment.save_preview(shown, cfg.augment, cfg.model.image_size, run_dir / rundir.PLOTS / "augment_preview.png",
                                 seed=cfg.train.seed)
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(run_dir / "tb"))
    except ImportError:  # tensorboard is a declared dependency; a broken install should not stop training
        return None


def _epoch_line(state: TrainState, optimizer: torch.optim.Optimizer, seen: int) -> dict:
    """The metrics.jsonl record of the epoch just trained (``seen`` images in this process's run of it)."""
    return {
        "epoch": state.epoch + 1,
        "step": state.global_step,
        "loss": state.epoch_loss_sum / max(state.epoch_loss_steps, 1) if state.epoch_loss_steps else float("nan"),
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_sec": seen / max(state.epoch_time, 1e-9),
        "epoch_time_s": state.epoch_time,
    }


def _knn_due(epoch: int, tc: TrainConfig, last: bool) -> bool:
    """Whether the kNN monitor runs after ``epoch`` (1-based): every ``train.knn_every`` epochs and after the
    ``last`` one; never with ``train.knn_every: 0``."""
    k = tc.knn_every
    return bool(k) and (epoch % k == 0 or last)


def _epochs_label(cfg: Config, plan: BudgetPlan | None, steps_per_epoch: int) -> str:
    """How many epochs the run will have, for log lines: the configured ones or the budget's plan."""
    if plan is None:
        return str(cfg.train.epochs)
    return f"{plan.total_steps / steps_per_epoch:.1f} planned" if plan.planned else "(planning)"


def _record_epoch(run_dir: Path, history: list[dict], epochs: str, writer, log: Log) -> None:
    """The epoch just finished (``history[-1]``) into metrics.jsonl, TensorBoard and the log. metrics.jsonl is
    rewritten whole and atomically, so a reader (evaluate, report on a run still training) never sees half a line."""
    rundir.write_metrics(run_dir, history)
    line = history[-1]
    done = line["epoch"]
    if writer is not None:
        for key in ("loss", "lr", "images_per_sec", "knn_accuracy"):
            if key in line and math.isfinite(line[key]):
                writer.add_scalar(f"pretrain/{key}", line[key], done)
        writer.flush()
    knn = f", kNN {line['knn_accuracy']:.4f}" if "knn_accuracy" in line else ""
    log(f"epoch {done}/{epochs}: loss {line['loss']:.4f}, lr {line['lr']:.4g}, {line['images_per_sec']:.0f} img/s{knn}")


# ----------------------------------------------------------------------------- the loop


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    cfg: Config,
    state: TrainState,
    rt: Dist,
    precision: str,
    on_checkpoint=None,
    log: Log = print,
    clock: BudgetClock | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Train on ``batches`` (pairs of views [b,3,H,W], this process's rows) for steps ``state.step_in_epoch..steps``.

    ``steps`` is the number of global batches in the epoch; ``state`` is advanced step by step so that a checkpoint
    taken at any step boundary resumes exactly. The loss is read from the device every :func:`sync_interval` steps,
    before each checkpoint and at the end of the epoch; a non-finite loss stops training there (the error names the
    first bad step; its weights are never checkpointed), or is skipped before its update with
    ``train.skip_nonfinite``. With a budget ``clock`` the epoch also ends where the budget's plan ends. An fp16 run
    passes its loss ``scaler``.
    """
    tc = cfg.train
    device = next(model.parameters()).device
    model.train()
    every = sync_interval(tc, device)
    tally = _LossTally(device, rt, reduce=every > 1)
    progress = Progress(steps, state.step_in_epoch, tc.batch_size, f"epoch {state.epoch + 1}",
                        tc.progress and rt.is_main, log)
    lr = float("nan")

    def settle() -> None:
        bad = tally.settle(state)
        if bad is not None:
            raise _nonfinite_error("non-finite (nan or inf)", state, bad, lr, cfg, precision)

    for it, (v0, v1, *small) in zip(range(state.step_in_epoch, steps), batches):
        lr = schedule(state.global_step)
        loss = simclr_loss(model, v0, v1, device, precision, tc.channels_last, tc.temperature, small,
                           decoupled=tc.loss == "dcl")
        optimizer.zero_grad(set_to_none=True)
        if every == 1 and not _finite_on_every_rank(loss, rt):  # read before the update: a bad step can be skipped
            state.nonfinite_skipped += 1
            if state.nonfinite_skipped > tc.skip_nonfinite:
                raise _nonfinite_error(loss.item(), state, state.global_step + 1, lr, cfg, precision)
            log(f"warning: non-finite loss at global step {state.global_step + 1} skipped ({state.nonfinite_skipped}/{tc.skip_nonfinite})")
        elif scaler is not None:  # fp16: scaled backward; a step with inf/nan gradients is skipped by the scaler
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            tally.add(loss.detach(), state.global_step + 1)
        else:
            loss.backward()
            optimizer.step()
            tally.add(loss.detach(), state.global_step + 1)
        state.global_step += 1
        state.step_in_epoch = it + 1
        if state.global_step % every == 0:
            settle()
        progress.step(tally.mean, lr, settled=tally.count == 0)
        if clock is not None and clock.after_step(state.global_step):
            break
        if on_checkpoint is not None and tc.checkpoint_every and state.global_step % tc.checkpoint_every == 0 and state.step_in_epoch < steps:
            settle()
            state.epoch_time += progress.restart_clock()
            t0 = time.perf_counter()
            on_checkpoint()
            if clock is not None:
                clock.note("checkpoint", time.perf_counter() - t0)
    settle()  # also waits for the device, so the epoch time below is the time the work took
    state.epoch_time += progress.restart_clock()
    progress.close()


def simclr_loss(model: nn.Module, v0: torch.Tensor, v1: torch.Tensor, device: torch.device, precision: str,
                channels_last: bool, temperature: float, small: list[torch.Tensor] | tuple = (),
                decoupled: bool = False) -> torch.Tensor:
    """NT-Xent of one step, not yet read from the device: both views [b,3,H,W] in one forward [2b,3,H,W] (BatchNorm
    sees both views, as in the paper), under ``precision`` autocast; the projections and the loss in fp32 (fp64 with
    ``precision="fp64"``, where the model runs in float64). With multi-crop, the ``small`` crops [b,3,h,h] go through
    the encoder in a second batch of the same module call and into :func:`~simclr.loss.multicrop_nt_xent`.
    ``decoupled``: the decoupled contrastive loss (``train.loss: dcl``) instead of NT-Xent."""

    def prepared(x: torch.Tensor) -> torch.Tensor:
        x = x.double() if precision == "fp64" else x
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    views = prepared(torch.cat([v0, v1]))
    with autocast(device, precision):
        _, z = model(views if not small else [views, prepared(torch.cat(list(small)))])
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    if not small:
        z0, z1 = z.chunk(2)
        return nt_xent(z0, z1, temperature, decoupled=decoupled)
    return multicrop_nt_xent(z.chunk(2 + len(small)), temperature, decoupled=decoupled)


def sync_interval(tc: TrainConfig, device: torch.device) -> int:
    """Steps between reads of the loss: 1 where reading is free (CPU) or a bad step must be skipped before its
    update (``train.skip_nonfinite``); else ``train.sync_every``, 0 meaning 50 on GPUs."""
    if tc.skip_nonfinite:
        return 1
    if tc.sync_every:
        return tc.sync_every
    return 1 if device.type == "cpu" else 50


def _finite_on_every_rank(loss: torch.Tensor, rt: Dist) -> bool:
    """Whether the step's loss is finite on every process (one host-device synchronisation)."""
    finite = torch.isfinite(loss.detach()).float()
    if rt.distributed:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank skips (or stops) together
    return finite.item() >= 1


class _LossTally:
    """Step losses kept on the device and read every few steps, so the loop does not wait for the device each step.

    ``add`` queues a step's loss (no synchronisation); ``settle`` reads the queued losses (one host-device
    synchronisation, plus one all_reduce under torchrun so every process agrees), moves them into ``state`` and
    returns the global step of the first non-finite loss since the last settle (1-based; None if all were finite).
    """

    NONE = 2**62  # "no bad step yet"

    def __init__(self, device: torch.device, rt: Dist, reduce: bool):
        self.reduce = reduce and rt.distributed  # False when every step was already checked on every process
        self.sum = torch.zeros((), device=device)
        self.count = 0
        self.first_bad = torch.full((), self.NONE, dtype=torch.long, device=device)
        self.mean = float("nan")  # mean loss of the last settled steps (for progress lines)

    def add(self, loss: torch.Tensor, global_step: int) -> None:
        finite = torch.isfinite(loss)
        self.sum += torch.where(finite, loss, 0.0)
        self.first_bad = torch.where(finite, self.first_bad, self.first_bad.clamp(max=global_step))
        self.count += 1

    def settle(self, state: TrainState) -> int | None:
        if self.reduce:
            dist.all_reduce(self.first_bad, op=dist.ReduceOp.MIN)
        first_bad, total = int(self.first_bad), float(self.sum)
        if self.count:
            self.mean = total / self.count
        state.epoch_loss_sum += total
        state.epoch_loss_steps += self.count
        self.sum.zero_()
        self.count = 0
        return None if first_bad == self.NONE else first_bad


def _nonfinite_error(value: float | str, state: TrainState, global_step: int, lr: float, cfg: Config, precision: str) -> NonFiniteLossError:
    step = global_step - (state.global_step - state.step_in_epoch)  # step within the current epoch, 1-based
    return NonFiniteLossError(
        f"the loss became {value} at epoch {state.epoch + 1}, step {step} (global step {global_step}); "
        f"likely causes: learning rate too high (optim.lr={cfg.optim.lr}, now {lr:.4g}), temperature too low "
        f"(train.temperature={cfg.train.temperature}) or reduced precision (train.precision={precision}; try --precision fp32). "
        "The last good checkpoint is kept: change the setting and continue with --resume, or allow a few bad "
        "steps with --skip-nonfinite N"
    )


class Progress:
    """An epoch's progress for a person, and its clock: a tqdm bar on a terminal, else a plain line every 30 s
    (log files, CI); nothing when ``enabled`` is false (``train.progress`` off, or not the main process)."""

    LINE_EVERY_S = 30

    def __init__(self, steps: int, first_step: int, batch_size: int, desc: str, enabled: bool, log: Log):
        self.steps, self.done, self.batch_size, self.desc, self.enabled, self.log = steps, first_step, batch_size, desc, enabled, log
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=first_step, desc=desc, leave=False, dynamic_ncols=True)
        self.t0 = self.last_line = time.perf_counter()
        self.images = 0  # images of this process's steps since t0

    def restart_clock(self) -> float:
        """Seconds since the clock last started (the epoch's start or the last checkpoint); restarts it."""
        now = time.perf_counter()
        elapsed, self.t0, self.images = now - self.t0, now, 0
        return elapsed

    def step(self, loss: float, lr: float, settled: bool) -> None:
        """One step done; ``loss`` is the mean of the last settled steps, fresh when ``settled``."""
        self.done += 1
        self.images += self.batch_size
        now = time.perf_counter()
        rate = self.images / max(now - self.t0, 1e-9)
        if self.bar is not None:
            if settled:  # the loss is known without waiting for the device
                self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}", refresh=False)
            self.bar.update(1)
        elif self.enabled and now - self.last_line > self.LINE_EVERY_S:
            self.last_line = now
            eta = (self.steps - self.done) * self.batch_size / max(rate, 1e-9)
            self.log(f"  {self.desc} step {self.done}/{self.steps}: loss {loss:.4f}, lr {lr:.3g}, {rate:.0f} img/s, "
                     f"epoch ETA {eta:.0f} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- checkpoints and exports


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState, cfg: Config,
                    scaler: torch.amp.GradScaler | None = None) -> bool:
    """Write the checkpoint atomically; weights that are no longer finite are never written over a good one."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return False
    atomic_save(
        {
            "version": 1,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": {k: v for k, v in state.__dict__.items()},
            "config": to_dict(cfg),
            "scaler": scaler.state_dict() if scaler is not None else None,
        },
        path,
    )
    return True


def unwrap(model: nn.Module) -> SimCLR:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def finish_run(run_dir: Path, model: SimCLR, cfg: Config, state: TrainState, precision: Precision) -> None:
    """Exports (safetensors), plots and ``run.json`` for a finished run (``precision``: the run's choice and why)."""
    from . import plots

    meta = {"config": json.dumps(to_dict(cfg)), "format": "simclr-1"}
    save_weights(model.backbone, run_dir / rundir.BACKBONE, meta)
    save_weights(model.head, run_dir / rundir.PROJECTION_HEAD, meta)
    hist = state.history
    if hist:
        plots.plot_loss([h["epoch"] for h in hist], [h["loss"] for h in hist], run_dir / "plots" / "loss.png")
        knn = [(h["epoch"], h["knn_accuracy"]) for h in hist if "knn_accuracy" in h]
        if knn:
            plots.plot_knn([e for e, _ in knn], [a for _, a in knn], run_dir / "plots" / "knn.png")
    info = {
        "kind": "simclr",
        "method": cfg.name,
        "backbone": cfg.model.backbone,
        "batch_size": cfg.train.batch_size,
        "proj_dim": cfg.model.proj_dim,
        "epochs": len(hist) if state.budget else cfg.train.epochs,
        "optimizer": cfg.optim.name,
        "loss": {"name": cfg.train.loss, "temperature": cfg.train.temperature},
        "precision": precision.name,
        "precision_choice": precision.to_dict(),  # requested, reason, hardware, probe figures
        "wall_time_s": state.wall_time,
        "data": cfg.data.name,
        "finished": True,
    }
    if state.budget:  # the plan of a budgeted run beside what it took
        info["budget"] = {**state.budget, "steps": state.global_step, "hardware": precision.hardware}
    if cfg.train.low_res_size:
        low_steps = state.global_step if state.full_res_from is None else state.full_res_from  # never switched: all
        info["low_res"] = {"size": cfg.train.low_res_size, "steps": low_steps,
                           "full_size": cfg.model.image_size, "full_size_steps": state.global_step - low_steps}
    if cfg.augment.small_crops:  # multi-crop: what each image contributed per step
        a = cfg.augment
        info["multicrop"] = {"small_crops": a.small_crops, "small_size": a.small_size, "small_scale": list(a.small_scale),
                             "views_per_image": 2 + a.small_crops}
    rundir.write_run_json(run_dir, info)
