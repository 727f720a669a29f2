import pytest
import yaml

from simclr.cli import main
from simclr.config import Config, load_config, read_config, save_config
from simclr.errors import ConfigError


@pytest.mark.parametrize("name", ["quickstart", "cifar10_resnet18", "seed_adam", "seed_nag"])
def test_presets_load(name):
    cfg = load_config(name)
    assert cfg.train.batch_size >= 2


def test_overrides_beat_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"epochs": 3}, "optim": {"name": "adam"}}))
    cfg = load_config(str(p), {"train.epochs": "7", "augment.scale": "0.3,0.9"})
    assert cfg.train.epochs == 7 and cfg.optim.name == "adam" and cfg.augment.scale == (0.3, 0.9)


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("train.batch_size", 1, ["train.batch_size", ">= 2"]),
        ("train.temperature", 0, ["train.temperature", "> 0"]),
        ("train.epochs", -1, ["train.epochs"]),
        ("model.backbone", "resnett18", ["model.backbone", "unknown backbone", "Closest: resnet18", "simclr backbones"]),
        ("optim.name", "rmsprop", ["optim.name", "adam, adamw, sgd, lars"]),
        ("train.loss", "infonce", ["train.loss", "nt_xent, dcl"]),
        ("train.precision", "fp8", ["train.precision", "auto, fp32, bf16, fp16, fp64"]),
        ("train.epochs", "ten", ["train.epochs", "int"]),
        ("augment.gray_p", 1.5, ["augment.gray_p"]),
    ],
)
def test_invalid_values_name_key_and_allowed(key, value, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, {key: value})
    for w in words:
        assert w in str(e.value)


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'.*'epochs'"):
        load_config(None, {"train.epoch": 3})
    with pytest.raises(ConfigError, match="unknown config key 'nosuch'"):
        load_config(None, {"nosuch": 3})


def test_unknown_key_in_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  backbone: resnet18\n  widht: 3\n")
    with pytest.raises(ConfigError, match="model.widht"):
        load_config(str(p))


def test_roundtrip(tmp_path):
    cfg = load_config("seed_nag")
    save_config(cfg, tmp_path / "config.yaml", {"command": "simclr x", "kind": "simclr"})
    again = read_config(tmp_path / "config.yaml")
    assert again == cfg
    assert isinstance(Config(), Config)


def test_cli_bad_value_exit_2(capsys, tmp_path):
    rc = main(["pretrain", "--batch-size", "1", "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and ">= 2" in err
    assert not (tmp_path / "r").exists()  # rejected before any work started


def test_cli_unknown_flag_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--epoch", "3", "--no-such-flag"])
    assert e.value.code == 2


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "exit codes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "exit codes" in capsys.readouterr().out
