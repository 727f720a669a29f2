"""`simclr bench` runs end to end on a tiny configuration and reports what benchmarks/ relies on (no timing claims)."""

import json

from conftest import make_image_folder

from simclr.bench import format_table
from simclr.cli import main

TINY = ["--device", "cpu", "--batch-size", "8", "--image-size", "16", "--steps", "1", "--warmup", "1",
        "--aug-images", "16", "--epoch-images", "16", "--workers", "0", "--set", "model.proj_hidden=[16]",
        "--set", "model.proj_dim=8"]
MEASUREMENT_KEYS = {"images_per_s", "seconds", "images", "steps", "step_ms", "peak_memory_mb", "memory_method"}


def test_bench_json_has_every_part(capsys, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--json", "--output", str(out), *TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    assert {"machine", "settings", "augment", "step", "epoch", "command"} <= set(result)
    assert {"date", "cpu", "cpu_count", "load_average", "torch", "device"} <= set(result["machine"])
    assert result["settings"]["batch_size"] == 8 and result["settings"]["precision"] == "bf16"
    for part in ("augment", "step", "epoch"):
        assert {"ours", "baseline", "speedup"} <= set(result[part]), part
        for name in ("ours", "baseline"):
            m = result[part][name]
            assert MEASUREMENT_KEYS <= set(m), (part, name)
            assert m["images_per_s"] > 0 and m["images"] > 0
    assert result["step"]["ours"]["peak_memory_mb"] is not None
    assert result["epoch"]["ours"]["images"] == 16
    assert "augment" in format_table(result)


def test_bench_stream_and_ablation_parts(capsys, tmp_path):
    folder = make_image_folder(tmp_path / "data", n_per_class=8)
    args = ["bench", "--json", *TINY, "--data", str(folder), "--stream", "--parts", "epoch,ablation", "--no-baseline"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"ours", "stream"} <= set(result["epoch"]) and "baseline" not in result["epoch"]
    assert {"fp32", "bf16+channels_last"} <= set(result["ablation"])
    assert result["settings"]["data"] == str(folder)


def test_bench_rejects_unknown_part(capsys):
    assert main(["bench", *TINY, "--parts", "augment,warp"]) == 2
    assert "warp" in capsys.readouterr().err
