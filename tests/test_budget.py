"""--budget: durations, the plan and its re-plans, the schedule it drives, and a budgeted run that stops and resumes."""

import json
import math

import pytest
import torch

from simclr import budget as budget_module
from simclr.budget import BudgetClock, BudgetPlan, parse_duration
from simclr.checkpoint import load_checkpoint
from simclr.cli import main
from simclr.config import OptimConfig, load_config
from simclr.errors import ConfigError
from simclr.optim import Schedule
from simclr.train import pretrain


@pytest.mark.parametrize(("text", "seconds"), [("6m", 360), ("90s", 90), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400),
                                               ("2m30s", 150), (" 45 ", 45), (12, 12), ("0.5m", 30)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "6x", "0", "-5m", "m", "5ms", "inf", True])
def test_parse_duration_rejects(text):
    with pytest.raises(ConfigError, match="90s, 6m"):
        parse_duration(text)


def test_replan_keeps_the_schedule_continuous():
    plan = BudgetPlan(budget_s=100, warmup_steps=2)
    assert not plan.planned and plan.progress(5) == 0 and not plan.done(10**6)
    plan.replan(step=5, remaining_s=95, steps_per_s=2.0, images_per_step=8)  # 190 more steps
    assert plan.total_steps == 195 and plan.images_per_s == 16
    assert plan.progress(5) == 0 and plan.progress(195) == 1 and plan.done(195) and not plan.done(194)
    before = plan.progress(100)
    plan.replan(step=100, remaining_s=10, steps_per_s=1.0, images_per_step=8)  # slower: 10 more steps, not 95
    assert plan.total_steps == 110 and plan.progress(100) == pytest.approx(before)  # no jump
    assert plan.progress(105) == pytest.approx(before + (1 - before) / 2) and plan.progress(110) == 1
    plan.replan(step=110, remaining_s=-3, steps_per_s=1.0, images_per_step=8)  # over time: one more step at most
    assert plan.total_steps == 111


def test_schedule_follows_the_plan_without_jumps():
    cfg = OptimConfig(lr=0.4, scale_lr=False, warmup_epochs=1, schedule="cosine")
    plan = BudgetPlan(budget_s=100, warmup_steps=4)
    sched = Schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), cfg, 256, 4, 1, plan=plan)
    assert [sched(s) for s in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4])  # warm-up in steps, plan or not
    assert sched(4) == pytest.approx(0.4)  # before the first plan: the peak
    plan.replan(step=6, remaining_s=40, steps_per_s=1.0, images_per_step=1)
    lrs = [sched(s) for s in range(6, plan.total_steps + 1)]
    # smooth: no step larger than the half-cosine's steepest slope over the planned steps
    assert max(abs(a - b) for a, b in zip(lrs, lrs[1:])) <= 0.4 * math.pi / 2 / (plan.total_steps - 6) * 1.001
    plan.replan(step=20, remaining_s=100, steps_per_s=1.0, images_per_step=1)
    assert sched(20) == pytest.approx(lrs[20 - 6])  # a re-plan does not move the learning rate
    assert sched(plan.total_steps) == pytest.approx(0.0, abs=1e-12)  # the cosine ends where the plan ends


def test_first_plan_shortens_a_long_warmup_without_a_jump():
    cfg = OptimConfig(lr=1.0, scale_lr=False, warmup_epochs=10, schedule="cosine")
    plan = BudgetPlan(budget_s=100, warmup_steps=100)  # 10 epochs of 10 steps: longer than the budget allows
    sched = Schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), cfg, 256, 10, 10, plan=plan)
    lrs = [sched(s) for s in range(5)]
    assert lrs == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])  # the configured warm-up until the plan
    plan.replan(step=5, remaining_s=195, steps_per_s=1.0, images_per_step=1)  # 200 steps in all
    assert plan.total_steps == 200 and plan.warmup_steps == 20  # 10 % of the plan
    lrs += [sched(s) for s in range(5, plan.total_steps + 1)]
    end = plan.warmup_steps - 1  # the warm-up's last step reaches the peak, the decay starts there
    assert lrs[end] == pytest.approx(1.0) and lrs[end + 1] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(lrs[:end], lrs[1 : end + 1]))  # rising, from where it was ...
    assert max(b - a for a, b in zip(lrs[:end], lrs[1 : end + 1])) < 0.07  # ... without a jump (0.95 / 15 a step)
    assert all(b <= a for a, b in zip(lrs[end:], lrs[end + 1 :])) and lrs[-1] == pytest.approx(0.0, abs=1e-12)


class FakeTime:
    """Each reading of the budget's clock advances by ``tick`` seconds: steps of a known, constant cost."""

    def __init__(self, tick: float):
        self.t, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.t += self.tick
        return self.t


def test_clock_plans_after_the_measured_steps_and_stops(monkeypatch):
    fake = FakeTime(0.5)
    monkeypatch.setattr(budget_module, "time", fake)
    plan = BudgetPlan(budget_s=60, warmup_steps=0)
    clock = BudgetClock(plan, images_per_step=10, spent_s=0)
    steps = 0
    while not clock.after_step(steps + 1):
        steps += 1
        assert steps < 1000
        if steps == budget_module.MEASURE_STEPS:  # the first step is not timed: no plan yet
            assert not plan.planned
    steps += 1
    # each step reads the clock once (0.5 s), and twice at a re-plan: about 60 / 0.5 steps, minus the re-plans' reads
    assert plan.planned and plan.total_steps == steps and 90 <= steps <= 120, steps
    assert 15 < plan.images_per_s <= 20 and plan.replans > 3  # 10 images per 0.5-0.6 s


SMALL = {"model.image_size": 8}  # where the size does not matter: a quarter of the 16 px step's work


def tiny(folder, out, **over):
    base = {"data.name": str(folder), "out": str(out), "model.image_size": 16, "model.proj_hidden": [32], "model.proj_dim": 16,
            "train.batch_size": 12, "train.knn_every": 0, "train.knn_k": 5, "data.n_val": 6, "train.progress": False,
            "train.preview": False, "optim.warmup_epochs": 0, "train.precision": "fp32", "train.channels_last": False}
    base.update(over)
    return load_config(None, base)


def test_budgeted_run_stops_at_its_plan_and_records_it(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(budget_module, "time", FakeTime(2.0))  # 2-4 s per step whatever the machine: ~10 steps
    run = pretrain(tiny(tiny_folder, tmp_path / "run", **{"train.budget": "30s", "train.epochs": 1, **SMALL}))
    info = json.loads((run / "run.json").read_text())
    plan = info["budget"]
    assert plan["budget_s"] == 30 and plan["total_steps"] == plan["steps"] > 3  # stopped where the plan ends
    ck = load_checkpoint(run / "checkpoints/last.pt")
    assert ck["state"]["global_step"] == plan["steps"] and ck["state"]["budget"]["total_steps"] == plan["steps"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(1, len(lines) + 1)) and len(lines) == math.ceil(plan["steps"] / 3)
    assert lines[-1]["step"] == plan["steps"]  # the last (partial) epoch has its line
    assert info["epochs"] == len(lines)  # train.epochs (1) was not used


def test_budgeted_run_resumes_with_its_plan(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(budget_module, "time", FakeTime(2.0))
    out = tmp_path / "run"
    cfg = tiny(tiny_folder, out, **{"train.budget": "40s", "train.checkpoint_every": 1, **SMALL})
    import simclr.train as train

    original = train.BudgetClock.after_step

    def interrupted(self, step):  # the process dies after 8 steps (the plan exists by then)
        if step > 8:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(train.BudgetClock, "after_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg)
    saved = load_checkpoint(out / "checkpoints/last.pt")["state"]["budget"]
    assert saved["total_steps"] > 0
    monkeypatch.setattr(train.BudgetClock, "after_step", original)
    pretrain(tiny(tiny_folder, out, **{"train.checkpoint_every": 1, **SMALL}), resume=True)  # no --budget: the plan decides
    info = json.loads((out / "run.json").read_text())
    assert info["budget"]["budget_s"] == 40 and info["budget"]["steps"] == info["budget"]["total_steps"]
    assert info["budget"]["replans"] > saved["replans"]  # the resumed process went on planning the same budget


def test_budget_and_epochs_together_is_an_error(tiny_folder, tmp_path, capsys):
    rc = main(["pretrain", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), "--budget", "6m", "--epochs", "3"])
    assert rc == 2 and "--budget and --epochs" in capsys.readouterr().err
    rc = main(["pretrain", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), "--budget", "soon"])
    assert rc == 2 and "train.budget" in capsys.readouterr().err


def test_epochs_flag_replaces_a_budget_of_the_config_file(tmp_path):
    from simclr.cli import build_config, make_parser

    preset = tmp_path / "budgeted.yaml"
    preset.write_text("train:\n  budget: 5m\n  epochs: 7\n")
    args = make_parser().parse_args(["pretrain", "--config", str(preset)])
    assert build_config(args).train.budget == "5m"  # the file's budget decides
    args = make_parser().parse_args(["pretrain", "--config", str(preset), "--epochs", "3"])
    cfg = build_config(args)
    assert cfg.train.budget is None and cfg.train.epochs == 3  # the command line asked for epochs


def test_plan_travels_as_numbers_and_back():
    plan = BudgetPlan(budget_s=360.0, warmup_steps=20, low_res_fraction=0.75, low_res_speedup=2.8)
    plan.replan(step=5, remaining_s=300, steps_per_s=1.3, images_per_step=128, low_res=True)
    copy = BudgetPlan(budget_s=1.0, warmup_steps=1)
    copy.set_numbers(plan.to_numbers())
    assert copy == plan and isinstance(copy.total_steps, int) and isinstance(copy.budget_s, float)


# ----------------------------------------------------------------------------- train.total_budget (simclr run)


def _clock_steps(plan, deadline, tick=0.5):
    """Steps a clock with ``deadline`` lets run when every reading of the clock costs ``tick`` seconds."""
    clock = BudgetClock(plan, images_per_step=10, spent_s=0, deadline=deadline)
    steps = 1
    while not clock.after_step(steps):
        steps += 1
        assert steps < 1000
    return steps


def test_deadline_keeps_the_evaluation_out_of_pretraining(monkeypatch):
    from simclr.budget import Deadline

    monkeypatch.setattr(budget_module, "time", FakeTime(0.5))
    alone = _clock_steps(BudgetPlan(budget_s=60, warmup_steps=0), None)
    # the job must end at 60 s and its evaluation is predicted at 20 s (2,000 forwards at 100 images/s): the plan
    # leaves about a third of the steps out
    plan = BudgetPlan(budget_s=60, warmup_steps=0)
    cut = _clock_steps(plan, Deadline(at_s=60, images=2000, images_per_s=100.0))
    assert plan.after_s == pytest.approx(20.0) and cut == plan.total_steps
    assert 0.45 * alone < cut < 0.75 * alone, (cut, alone)  # (60 - 20) / 60 of the steps, less re-plans' readings
    # fixed costs count as well; a far deadline does not bind: the budget decides
    assert _clock_steps(BudgetPlan(budget_s=60, warmup_steps=0), Deadline(at_s=60, fixed_s=20.0)) == cut
    assert _clock_steps(BudgetPlan(budget_s=60, warmup_steps=0), Deadline(at_s=600, images=2000,
                                                                          images_per_s=100.0)) == alone
    # without a measured speed, the forwards are predicted from the training speed (10 images per 0.5-0.6 s:
    # 100 forwards/s at 6 forwards per training image)
    plan = BudgetPlan(budget_s=60, warmup_steps=0)
    assert abs(_clock_steps(plan, Deadline(at_s=60, images=2000)) - cut) <= 0.1 * cut
    assert 17 < plan.after_s < 21


def test_deadline_past_leaves_a_minimal_run(monkeypatch):
    from simclr.budget import Deadline

    monkeypatch.setattr(budget_module, "time", FakeTime(0.5))
    plan = BudgetPlan(budget_s=60, warmup_steps=0)
    steps = _clock_steps(plan, Deadline(at_s=60, fixed_s=600.0))  # the evaluation alone would outlast the job
    assert steps == plan.total_steps <= budget_module.MEASURE_STEPS + 2


@pytest.mark.parametrize(("over", "names"), [
    ({"eval.protocols": ["knn", "finetune"]}, "eval.protocols: finetune"),
    ({"eval.baselines": ["random", "imagenet"]}, "eval.baselines: imagenet"),
    ({"eval.labels": [100, 1000]}, "eval.labels"),
])
def test_total_budget_refuses_what_it_cannot_plan(over, names):
    with pytest.raises(ConfigError, match=f"train.total_budget: cannot plan the time of {names}"):
        load_config(None, {"train.total_budget": "10m", **over})


def test_total_budget_flags(tmp_path, tiny_folder, capsys):
    from simclr.cli import build_config, make_parser

    with pytest.raises(ConfigError, match="train.total_budget: cannot read 'soon'"):
        load_config(None, {"train.total_budget": "soon"})
    preset = tmp_path / "job.yaml"
    preset.write_text("train:\n  budget: 5m\n  total_budget: 9m30s\n")
    assert build_config(make_parser().parse_args(["run", "--config", str(preset)])).train.total_budget == "9m30s"
    # an explicit pretraining length is what the user asked for: the preset's job budget does not cut it ...
    for flags in (["--budget", "6m"], ["--epochs", "3"]):
        assert build_config(make_parser().parse_args(["run", "--config", str(preset), *flags])).train.total_budget is None
    # ... unless the command line sets one too
    cfg = build_config(make_parser().parse_args(["run", "--config", str(preset), "--budget", "6m", "--total-budget", "20m"]))
    assert (cfg.train.budget, cfg.train.total_budget) == ("6m", "20m")
    rc = main(["pretrain", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), "--total-budget", "5m"])
    assert rc == 2 and "--total-budget" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_run_under_a_total_budget_plans_the_evaluation_in(tiny_folder, tmp_path, monkeypatch):
    from simclr import pipeline

    monkeypatch.setattr(budget_module, "time", FakeTime(2.0))  # 2-4 s per step: ~15 steps in 60 s
    monkeypatch.setattr(pipeline, "EVAL_FIXED_S", 10.0)  # 2 encoders (SimCLR, random init): 20 s + their forwards
    monkeypatch.setattr(pipeline, "REPORT_S", 0.0)
    cfg = tiny(tiny_folder, tmp_path / "run", **{"train.total_budget": "60s", "eval.protocols": ["knn"],
                                                 "eval.baselines": ["random"], **SMALL})
    pipeline.run_experiment(cfg, log=lambda *a, **k: None)
    plan = json.loads((tmp_path / "run" / "run.json").read_text())["budget"]
    assert plan["total_budget_s"] == 60 and plan["budget_s"] <= 60
    assert 20 < plan["after_s"] < 25  # the fixed part and a few dozen measured forwards of a tiny network
    assert plan["steps"] == plan["total_steps"] and 3 < plan["steps"] <= 40 / 2  # the rest of the 60 s at >= 2 s a step
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "Total budget" in report and "kept for the evaluation and report" in report


def test_run_command_applies_the_length_rules(tmp_path, monkeypatch, capsys):
    """`simclr run` builds its config with the same rules as `simclr pretrain` (it once bypassed them: a preset's
    job budget cut a `--budget 6m` run to 7 steps, and `--epochs` left a preset's budget in place)."""
    import simclr.pipeline

    seen = []
    monkeypatch.setattr(simclr.pipeline, "run_experiment", lambda cfg, **kw: seen.append(cfg) or None)
    preset = tmp_path / "job.yaml"
    preset.write_text("train:\n  budget: 5m\n  total_budget: 9m30s\n")
    assert main(["run", "--config", str(preset), "--budget", "6m"]) == 0
    assert (seen[-1].train.budget, seen[-1].train.total_budget) == ("6m", None)
    assert main(["run", "--config", str(preset), "--epochs", "3", "--baselines", "random"]) == 0
    assert (seen[-1].train.budget, seen[-1].train.total_budget, seen[-1].train.epochs) == (None, None, 3)
    assert seen[-1].eval.baselines == ["random"]
    assert main(["run", "--config", str(preset)]) == 0 and seen[-1].train.total_budget == "9m30s"
    assert main(["run", "--config", str(preset), "--budget", "6m", "--epochs", "3"]) == 2
    assert "--budget and --epochs" in capsys.readouterr().err and len(seen) == 3
