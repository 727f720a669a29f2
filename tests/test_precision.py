"""The precision rule (train.precision: auto) as a pure function of (device type, capability, probe), the probe, and
what a run records; nothing here depends on which processor runs the suite."""

import json

import pytest
import torch
from torch import nn

from simclr import precision as P
from simclr.config import load_config
from simclr.errors import ConfigError

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "device_type,capability,expected",
    [
        ("cpu", "x86_64 AVX512 AVX512_BF16 AMX", "bf16"),  # Intel Sapphire Rapids and newer
        ("cpu", "x86_64 AVX512 AMX", "bf16"),
        ("cpu", "x86_64 AVX512 AVX512_BF16", "bf16"),  # AMD Zen 4, Intel Cooper Lake
        ("cpu", "x86_64 AVX512", "fp32"),  # Skylake-X: AVX-512 without its bf16 instructions
        ("cpu", "x86_64 AVX2", "fp32"),  # AMD Zen 3, most laptops
        ("cpu", "AMD64 AVX2", "fp32"),  # Windows spells the machine AMD64
        ("cpu", "x86_64 DEFAULT", "fp32"),
        ("cpu", "x86_64 NO AVX", "fp32"),
        ("cuda", "sm_90", "bf16"),  # H100
        ("cuda", "sm_80", "bf16"),  # A100
        ("cuda", "sm_86", "bf16"),
        ("cuda", "sm_75", "fp16"),  # T4
        ("cuda", "sm_70", "fp16"),  # V100
        ("cuda", "sm_52", "fp32"),  # Maxwell
        ("cuda", "sm_100", "bf16"),  # three digits
        ("mps", "mps", "fp32"),
    ],
)
def test_rule_decides_without_probe(device_type, capability, expected):
    assert P.probe_candidates(device_type, capability) == ()
    name, reason = P.auto_precision(device_type, capability)
    assert name == expected and reason


@pytest.mark.parametrize(
    "device_type,capability,candidates",
    [("cpu", "aarch64 DEFAULT", ("bf16",)), ("cpu", "aarch64 SVE256", ("bf16",)), ("cpu", "ppc64le VSX", ("bf16",)),
     ("cuda", "sm_60", ("fp16",)), ("cuda", "sm_61", ("fp16",)), ("cuda", "gpu", ("bf16", "fp16"))],
)
def test_probe_decides_where_the_hardware_does_not_tell(device_type, capability, candidates):
    assert P.probe_candidates(device_type, capability) == candidates
    with pytest.raises(ValueError, match="needs a probe"):
        P.auto_precision(device_type, capability)
    fast = {"fp32": 1.0, **{c: 0.5 for c in candidates}}  # 2x: the reduced precision wins
    name, reason = P.auto_precision(device_type, capability, fast)
    assert name == candidates[0] and "probe" in reason and "2.00x" in reason
    slow = {"fp32": 1.0, **{c: 20.0 for c in candidates}}  # emulated: fp32
    assert P.auto_precision(device_type, capability, slow)[0] == "fp32"
    tie = {"fp32": 1.0, **{c: 1.0 / (P.PROBE_MARGIN - 0.05) for c in candidates}}  # within the margin: fp32
    assert P.auto_precision(device_type, capability, tie)[0] == "fp32"


def test_probe_picks_the_fastest_of_several():
    assert P.auto_precision("cuda", "gpu", {"fp32": 1.0, "bf16": 0.6, "fp16": 0.4})[0] == "fp16"
    assert P.auto_precision("cuda", "gpu", {"fp32": 1.0, "bf16": 0.4, "fp16": 0.6})[0] == "bf16"


def test_capability_of_this_cpu_is_one_the_rule_reads():
    cap = P.capability(CPU)
    assert cap.split()[0]  # the machine
    assert torch.backends.cpu.get_cpu_capability() in cap
    if cap.split()[0] in ("x86_64", "AMD64"):
        assert P.probe_candidates("cpu", cap) == ()
    assert P.hardware(CPU).startswith("cpu: ")


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_probe_times_each_candidate_and_leaves_the_model_as_it_was():
    model = _tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    figures = P.probe(model, 8, CPU, ("bf16",))
    assert set(figures["seconds_per_pass"]) == {"fp32", "bf16"}
    assert all(s > 0 for s in figures["seconds_per_pass"].values())
    assert figures["batch"] == P.PROBE_BATCH and figures["image_size"] == 8
    assert model.training
    for k, v in model.state_dict().items():  # BatchNorm statistics untouched
        assert torch.equal(v, before[k]), k


def test_auto_on_this_machine_records_a_valid_choice():
    lines = []
    choice = P.choose_precision("auto", CPU, _tiny_model(), 8, log=lines.append)
    cap = P.capability(CPU)
    assert choice.name in ("fp32", "bf16") and choice.requested == "auto" and choice.hardware == P.hardware(CPU)
    if not P.probe_candidates("cpu", cap):
        assert choice.name == P.auto_precision("cpu", cap)[0] and choice.probe is None
    else:
        assert choice.probe is not None
    assert len(lines) == 1 and choice.name in lines[0] and choice.reason in lines[0]


def test_uncertain_hardware_is_probed(monkeypatch):
    monkeypatch.setattr(P, "capability", lambda device: "aarch64 DEFAULT")
    choice = P.choose_precision("auto", CPU, _tiny_model(), 8)
    assert choice.probe is not None and set(choice.probe["seconds_per_pass"]) == {"fp32", "bf16"}
    assert choice.name == P.auto_precision("cpu", "aarch64 DEFAULT", choice.probe["seconds_per_pass"])[0]
    no_model = P.choose_precision("auto", CPU)  # nothing to probe: the safe choice
    assert no_model.name == "fp32" and "no model to probe" in no_model.reason


def test_explicit_bf16_without_native_bf16_warns_once_with_the_cost(monkeypatch):
    monkeypatch.setattr(P, "capability", lambda device: "x86_64 AVX2")
    lines = []
    choice = P.choose_precision("bf16", CPU, _tiny_model(), 8, log=lines.append)
    assert choice.name == "bf16" and choice.requested == "bf16"
    warnings = [x for x in lines if x.startswith("warning")]
    assert len(warnings) == 1
    assert "x as long in bf16 as in fp32" in warnings[0] and "--precision auto or fp32" in warnings[0]
    lines.clear()
    P.choose_precision("bf16", CPU, log=lines.append)  # no model: the recorded measurement is quoted
    assert P.EMULATED_BF16_NOTE in [x for x in lines if x.startswith("warning")][0]
    monkeypatch.setattr(P, "capability", lambda device: "x86_64 AVX512 AVX512_BF16")
    lines.clear()
    P.choose_precision("bf16", CPU, log=lines.append)
    assert not [x for x in lines if x.startswith("warning")]


def test_bad_precisions_exit_2():
    with pytest.raises(ConfigError) as e:
        load_config(None, {"train.precision": "fp8"})
    assert "train.precision" in str(e.value) and "auto, fp32, bf16, fp16, fp64" in str(e.value)
    with pytest.raises(ConfigError) as e:
        P.choose_precision("fp16", CPU)
    assert "fp16 on the CPU" in str(e.value) and "--precision auto" in str(e.value)


def test_fp16_on_the_cpu_stops_a_run_before_any_work(tiny_folder, tmp_path):
    from simclr.cli import main

    out = tmp_path / "run"
    code = main(["pretrain", "--data", str(tiny_folder), "--out", str(out), "--precision", "fp16", "--epochs", "1"])
    assert code == 2 and not out.exists()


def test_a_run_records_its_precision_and_why(tiny_folder, tmp_path):
    from simclr.train import pretrain

    out = tmp_path / "run"
    cfg = load_config(None, {"data.name": str(tiny_folder), "out": str(out), "model.image_size": 16,
                             "model.proj_hidden": [16], "model.proj_dim": 8, "train.batch_size": 12, "train.epochs": 1,
                             "train.knn_every": 0, "train.progress": False, "train.preview": False, "data.n_val": 0})
    pretrain(cfg)
    info = json.loads((out / "run.json").read_text())
    choice = info["precision_choice"]
    assert info["precision"] == choice["name"] in ("fp32", "bf16")
    assert choice["requested"] == "auto" and choice["reason"] and choice["hardware"] == P.hardware(CPU)
