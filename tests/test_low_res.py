"""Progressive resizing (train.low_res_size): the plan that knows full-resolution steps cost more, the one-way
switch, and runs (budgeted and by epochs) that train at both sizes and say so in run.json."""

import json

import pytest

from simclr import augment
from simclr import budget as budget_module
from simclr.budget import BudgetClock, BudgetPlan, low_res_speedup
from simclr.checkpoint import load_checkpoint
from simclr.cli import main
from simclr.errors import ConfigError
from simclr.report import write_report
from simclr.train import TrainState, ViewSize, pretrain
from tests.test_budget import FakeTime, tiny


def test_low_res_plan_leaves_time_for_the_slower_full_resolution_steps():
    plan = BudgetPlan(budget_s=110, warmup_steps=0, low_res_fraction=0.5, low_res_speedup=3.0)
    plan.replan(step=10, remaining_s=100, steps_per_s=1.0, images_per_step=8, low_res=True)
    # N/2 - 10 low-res steps at 1 s and N/2 full-resolution ones at 3 s fill the 100 s: N = 55
    assert plan.total_steps == 55
    assert (0.5 * 55 - 10) * 1.0 + 0.5 * 55 * 3.0 == pytest.approx(100)
    before = plan.progress(30)
    plan.replan(step=30, remaining_s=60, steps_per_s=1 / 3, images_per_step=8)  # at full size, measured: 20 more
    assert plan.total_steps == 50 and plan.progress(30) == pytest.approx(before)  # the schedule does not jump
    assert low_res_speedup(16, 32) == pytest.approx(2 ** budget_module.LOW_RES_COST_EXPONENT)


def test_clock_replans_as_soon_as_the_full_resolution_speed_is_measured(monkeypatch):
    monkeypatch.setattr(budget_module, "time", FakeTime(1.0))
    plan = BudgetPlan(budget_s=1000, warmup_steps=0, low_res_fraction=0.5, low_res_speedup=2.0)
    clock = BudgetClock(plan, images_per_step=10, spent_s=0)
    clock.set_low_res(True)
    step = 0
    while not plan.planned:
        step += 1
        clock.after_step(step)
    replans = plan.replans
    clock.set_low_res(False)  # the switch: the next step is not timed, then MEASURE_STEPS are
    for _ in range(budget_module.MEASURE_STEPS + 1):
        step += 1
        clock.after_step(step)
    assert plan.replans == replans + 1 and not clock.replan_due


class _Spy:
    """Records the side of the views of each batch, and makes a step cost 1 s of the budget's clock at low
    resolution and 3 s at full resolution (the clock is read about once a step)."""

    def __init__(self, monkeypatch, fake: FakeTime, low: int):
        self.sizes: list[int] = []
        original = augment.simclr_views

        def views(images, cfg, out_size, *args, **kwargs):
            self.sizes.append(out_size)
            fake.tick = 1.0 if out_size == low else 3.0
            return original(images, cfg, out_size, *args, **kwargs)

        monkeypatch.setattr(augment, "simclr_views", views)


def test_budgeted_run_trains_low_then_full_resolution(tiny_folder, tmp_path, monkeypatch):
    fake = FakeTime(1.0)
    monkeypatch.setattr(budget_module, "time", fake)
    spy = _Spy(monkeypatch, fake, low=8)
    over = {"train.budget": "40s", "train.low_res_size": 8, "train.low_res_fraction": 0.5}
    run = pretrain(tiny(tiny_folder, tmp_path / "run", **over))
    info = json.loads((run / "run.json").read_text())
    switch = info["low_res"]["steps"]
    assert spy.sizes == [8] * switch + [16] * (len(spy.sizes) - switch)  # low first, then full size for good
    assert info["budget"]["steps"] == len(spy.sizes) == info["budget"]["total_steps"]
    assert info["low_res"]["full_size_steps"] == len(spy.sizes) - switch > 0
    assert switch == pytest.approx(0.5 * len(spy.sizes), abs=2)  # half the steps (of the final plan) at 8 px
    ck = load_checkpoint(run / "checkpoints/last.pt")
    assert ck["state"]["full_res_from"] == switch and ck["state"]["budget"]["low_res_fraction"] == 0.5
    md = write_report([run], tmp_path / "report")[0].read_text()  # the report says what the budget bought
    assert f"{info['budget']['total_steps']} steps planned, {info['budget']['steps']} run" in md
    assert f"8 px for {switch} steps, then 16 px for {len(spy.sizes) - switch}" in md


def test_epoch_run_switches_at_its_fraction_of_the_steps(tiny_folder, tmp_path, monkeypatch):
    spy = _Spy(monkeypatch, FakeTime(1.0), low=8)
    run = pretrain(tiny(tiny_folder, tmp_path / "run", **{"train.epochs": 4, "train.low_res_size": 8,
                                                            "train.low_res_fraction": 0.25}))
    total = len(spy.sizes)
    assert spy.sizes == [8] * (total // 4) + [16] * (total - total // 4)
    assert json.loads((run / "run.json").read_text())["low_res"]["steps"] == total // 4


def test_the_switch_is_one_way():
    state = TrainState()
    cfg = tiny("unused", "unused", **{"train.low_res_size": 8, "train.low_res_fraction": 0.5})
    total = [10]
    size = ViewSize(cfg, state, lambda: total[0], None, lambda *a: None)
    assert size() == 8
    state.global_step = 5
    assert size() == 16 and state.full_res_from == 5
    total[0] = 100  # a re-plan that puts the switch later does not go back to low resolution
    assert size() == 16
    assert ViewSize(cfg, TrainState(), lambda: 0, None, lambda *a: None)() == 8  # no plan yet: low resolution


@pytest.mark.parametrize(("over", "message"), [
    ({"train.low_res_size": 16}, "between 8 and model.image_size - 1"),
    ({"train.low_res_size": 4}, "between 8"),
    ({"train.low_res_size": 8, "train.low_res_fraction": 1.0}, "train.low_res_fraction"),
    ({"train.low_res_size": 8, "data.stream": True}, "data.stream: false"),
])
def test_bad_low_res_settings_are_config_errors(over, message):
    with pytest.raises(ConfigError, match=message):
        tiny("unused", "unused", **over)


def test_cli_reports_a_bad_low_res_size(tiny_folder, tmp_path, capsys):
    rc = main(["pretrain", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), "--set", "train.low_res_size=40"])
    assert rc == 2 and "train.low_res_size" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
