"""`simclr bench` runs end to end on a tiny configuration and reports what benchmarks/ relies on (no timing claims)."""

import json
import os

import pytest
import torch
from conftest import make_image_folder

from simclr.bench import PipelineError, format_table, run_pipeline
from simclr.cli import main
from simclr.precision import auto_precision, capability

TINY = ["--device", "cpu", "--batch-size", "8", "--image-size", "8", "--steps", "1", "--warmup", "1",
        "--aug-images", "16", "--epoch-images", "16", "--workers", "0", "--set", "model.proj_hidden=[16]",
        "--set", "model.proj_dim=8"]
MEASUREMENT_KEYS = {"images_per_s", "seconds", "images", "steps", "step_ms", "peak_memory_mb", "memory_method"}


@pytest.mark.slow  # six pipeline processes: about 8 s
def test_bench_json_has_every_part(capsys, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--json", "--output", str(out), *TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    assert {"machine", "settings", "augment", "step", "epoch", "command"} <= set(result)
    assert {"date", "cpu", "cpu_count", "load_average", "torch", "device"} <= set(result["machine"])
    s = result["settings"]
    assert s["batch_size"] == 8 and s["baseline_precision"] == "fp32"
    assert s["precision"] == auto_precision("cpu", capability(torch.device("cpu")))[0]  # x86: from the hardware
    assert s["precision_reason"] and s["hardware"].startswith("cpu: ")
    for part in ("augment", "step", "epoch"):
        assert {"ours", "baseline", "speedup"} <= set(result[part]), part
        for name in ("ours", "baseline"):
            m = result[part][name]
            assert MEASUREMENT_KEYS <= set(m), (part, name)
            assert m["images_per_s"] > 0 and m["images"] > 0
    assert result["step"]["ours"]["peak_memory_mb"] is not None
    assert result["epoch"]["ours"]["images"] == 16
    # every pipeline ran in a fresh process of its own, none in this one
    pids = [result[part][name]["pid"] for part in ("augment", "step", "epoch") for name in ("ours", "baseline")]
    assert len(set(pids)) == 6 and os.getpid() not in pids
    assert result["settings"]["fresh_process_per_pipeline"] is True
    assert "augment" in format_table(result)


def test_bench_stream_and_ablation_parts(capsys, tmp_path):
    folder = make_image_folder(tmp_path / "data", n_per_class=8)
    args = ["bench", "--json", *TINY, "--data", str(folder), "--stream", "--parts", "epoch,ablation", "--no-baseline",
            "--in-process"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"ours", "stream"} <= set(result["epoch"]) and "baseline" not in result["epoch"]
    p = result["settings"]["precision"]  # the hardware's choice: its rows, and bf16 ones only where it is bf16
    assert {"fp32", "fp32+channels_last", f"{p}+channels_last+fused_sgd"} <= set(result["ablation"])
    assert ("bf16+channels_last" in result["ablation"]) == (p == "bf16")
    assert result["settings"]["data"] == str(folder)
    assert result["epoch"]["stream"]["pid"] == os.getpid()  # --in-process


def test_bench_rejects_unknown_part(capsys):
    assert main(["bench", *TINY, "--parts", "augment,warp"]) == 2
    assert "warp" in capsys.readouterr().err


def test_bench_step_rounds_alternate_and_merge(capsys):
    """--rounds 2: two rounds of ours then the peers; the figure is the total over both, each round kept."""
    assert main(["bench", "--json", *TINY, "--parts", "step", "--rounds", "2", "--in-process"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert out.err.count("step     round") == 2
    step = result["step"]
    for name in ("ours", "baseline"):
        m = step[name]
        assert m["steps"] == 2 and m["images"] == 16  # 1 timed step of batch 8 per round
        assert len(m["images_per_s_per_round"]) == 2
        assert abs(m["images_per_s"] - m["images"] / m["seconds"]) < 1e-3 * m["images_per_s"] + 1e-3
    assert len(step["speedup_per_round"]) == 2
    assert abs(step["speedup"] - step["ours"]["images_per_s"] / step["baseline"]["images_per_s"]) < 1e-3 * step["speedup"]
    assert result["settings"]["rounds"] == 2
    assert "in each round" in format_table(result)


@pytest.mark.parametrize("flag", [["--rounds", "0"], ["--steps", "0"], ["--warmup", "-1"]])
def test_bench_rejects_counts_below_their_minimum(capsys, flag):
    assert main(["bench", *TINY, "--parts", "step", *flag]) == 2
    assert flag[0] in capsys.readouterr().err


def _fails():
    raise ValueError("no such thing")


def test_a_failing_pipeline_names_its_error():
    with pytest.raises(PipelineError, match="ValueError: no such thing"):
        run_pipeline(_fails)
