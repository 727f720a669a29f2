"""The ``simclr`` command: thin subcommands that parse flags, build a config and call one library function."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from .config import FLAG_KEYS, Config, load_config
from .errors import EXIT_CODES_HELP, ConfigError, SimCLRError

DESCRIPTION = """SimCLR: self-supervised pretraining of image encoders, evaluation with labels, and reports.

Start with:  simclr run --config quickstart            (pretrain + evaluate + report, CIFAR-10)
             simclr pretrain --config quickstart --data path/to/images
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: usage + message, exit code 2
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n(see '{self.prog} --help')\n")


def _common(p: argparse.ArgumentParser, training: bool = True) -> None:
    """Flags shared by the commands; each maps to a config key (see ``FLAG_KEYS``)."""
    g = p.add_argument_group("common options (override the config file)")
    g.add_argument("--config", help="YAML config file or preset name (quickstart, cifar10_resnet18, seed_adam, seed_nag)")
    g.add_argument("--data", help="cifar10 | cifar100 | stl10 | path to an image folder")
    g.add_argument("--data-root", help="where datasets are downloaded (default: ~/.cache/simclr/data)")
    g.add_argument("--out", help="output run directory")
    g.add_argument("--limit", type=int, help="use only the first N images of a seeded permutation")
    g.add_argument("--seed", type=int, help="the one seed behind data order, splits and augmentation")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    g.add_argument("--batch-size", type=int, help="global batch size")
    g.add_argument("--precision", help="auto | bf16 | fp32")
    g.add_argument("--strict", action="store_true", default=None, help="unreadable image files are an error, not a warning")
    g.add_argument("--split", dest="split", help="standard (pretrain on all training images) | seed (the notebook's 8,000/42,000 split)")
    if training:
        g.add_argument("--epochs", type=int, help="number of epochs")
        g.add_argument("--backbone", help="resnet18 | resnet34 | resnet50")
        g.add_argument("--image-size", type=int, help="side in pixels of the images fed to the encoder")
        g.add_argument("--optimizer", help="adam | sgd | lars")
        g.add_argument("--lr", type=float, help="base learning rate (per 256 images when optim.scale_lr is true)")
        g.add_argument("--temperature", type=float, help="NT-Xent temperature")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. --set optim.weight_decay=1e-4 (repeatable)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag, key in FLAG_KEYS.items():
        v = getattr(args, flag, None)
        if v is not None:
            out[key] = v
    if getattr(args, "strict", None):
        out["data.strict"] = True
    if getattr(args, "split", None):
        out["data.split"] = args.split
    for flag, key in (("sync_bn", "train.sync_bn"), ("compile", "train.compile"), ("skip_nonfinite", "train.skip_nonfinite")):
        v = getattr(args, flag, None)
        if v is not None:
            out[key] = v
    for item in getattr(args, "set", []) or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=10")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def _parse_value(v: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(v)
    except yaml.YAMLError:
        return v


def build_config(args: argparse.Namespace) -> Config:
    return load_config(args.config, _overrides(args))


def _command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["simclr", *sys.argv[1:]])


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .train import pretrain

    cfg = build_config(args)
    pretrain(cfg, resume=args.resume, command=_command_line())
    return 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    from . import augment
    from .data import load_split

    cfg = build_config(args)
    data = load_split(cfg.data, "unlabeled" if cfg.data.name == "stl10" else "train", cfg.model.image_size, seed=cfg.train.seed)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    augment.save_preview(data.images[: args.n], cfg.augment, cfg.model.image_size, out, seed=cfg.train.seed)
    print(f"wrote {out}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="simclr", description=DESCRIPTION, epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("pretrain", help="train a SimCLR encoder; leaves a run directory", description="Train a SimCLR encoder (also under torchrun).", epilog=EXIT_CODES_HELP, formatter_class=_Formatter)
    _common(p)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--sync-bn", action="store_true", default=None, help="synchronised BatchNorm across processes (global BN)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--skip-nonfinite", type=int, help="tolerate up to N steps with a non-finite loss")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("augment-preview", help="write a PNG grid: originals and two augmented views each", epilog=EXIT_CODES_HELP, formatter_class=_Formatter)
    _common(p)
    p.add_argument("--output", default="augment_preview.png", help="PNG file to write")
    p.add_argument("-n", type=int, default=8, help="number of images")
    p.set_defaults(func=cmd_augment_preview)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except SimCLRError as e:
        print(f"simclr {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"simclr {args.command}: interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
