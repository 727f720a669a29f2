"""The ``simclr`` command: thin subcommands that parse flags, build a config and call one library function."""

from __future__ import annotations

import argparse
import difflib
import shlex
import sys
from pathlib import Path
from typing import Any

from .config import FLAG_KEYS, LOSSES, Config, load_config
from .errors import EXIT_CODES_HELP, ConfigError, SimCLRError

DESCRIPTION = """SimCLR: self-supervised pretraining of image encoders, evaluation with labels, and reports.

Start with:  simclr run --config quickstart            (pretrain + evaluate + report, CIFAR-10)
             simclr pretrain --config quickstart --data path/to/images
"""


BACKBONE_HELP = ("any torchvision classification model (resnet18, mobilenet_v3_small, efficientnet_b0, convnext_tiny, "
                 "vit_b_16, ...) or timm:NAME; `simclr backbones [PATTERN]` lists them")


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
    g.add_argument("--precision", help="auto (from the hardware: bf16 where native, else fp32) | fp32 | bf16 | fp16 (CUDA) | fp64 (numerical checks)")
    g.add_argument("--strict", action="store_true", default=None, help="unreadable image files are an error, not a warning")
    g.add_argument("--split", dest="split", help="standard (pretrain on all training images) | seed (the seed notebook project's 8,000/42,000 split)")
    if training:
        g.add_argument("--epochs", type=int, help="number of epochs (replaces a train.budget or train.total_budget of the config file)")
        g.add_argument("--budget", metavar="DURATION",
                       help="pretraining time (6m, 90s, 2h, 1h30m): the run measures its speed and plans the steps and the "
                            "learning-rate schedule to end then; replaces --epochs (giving both is an error) and a "
                            "train.total_budget of the config file")
        g.add_argument("--total-budget", metavar="DURATION",
                       help="simclr run: time for the whole job (6m, 10m, 1h): pretraining ends early enough for the "
                            "evaluation and report to finish within it (their forwards timed and counted before pretraining)")
        g.add_argument("--backbone", help=BACKBONE_HELP)
        g.add_argument("--image-size", type=int, help="side in pixels of the images fed to the encoder")
        g.add_argument("--optimizer", help="adam | adamw | sgd | lars")
        g.add_argument("--lr", type=float, help="base learning rate (per 256 images when optim.scale_lr is true)")
        g.add_argument("--temperature", type=float, help="the contrastive loss's temperature")
        g.add_argument("--loss", choices=LOSSES, help="nt_xent (SimCLR) | dcl (decoupled: the positive out of the denominator)")
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


def build_config(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Config:
    """The config of a training command: the file, then the flags (``extra``: a command's own keys), with the rules
    between the length flags and a file's budgets."""
    if getattr(args, "budget", None) is not None and getattr(args, "epochs", None) is not None:
        raise ConfigError("--budget and --epochs both given: a budgeted run decides its own number of steps; "
                          "give one of them")
    over = {**_overrides(args), **(extra or {})}
    if getattr(args, "epochs", None) is not None:
        over["train.budget"] = None  # --epochs replaces a budget of the config file (the quickstart has one)
    if getattr(args, "total_budget", None) is None and (
            getattr(args, "epochs", None) is not None or getattr(args, "budget", None) is not None):
        # an explicit pretraining length is what the user asked for: a preset's job budget must not cut it
        over.setdefault("train.total_budget", None)
    return load_config(args.config, over)


def _command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["simclr", *sys.argv[1:]])


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .train import pretrain

    if getattr(args, "total_budget", None) is not None:
        raise ConfigError("--total-budget: the time of a whole `simclr run` job; `simclr pretrain` has no "
                          "evaluation to keep time for: give its pretraining time with --budget")
    cfg = build_config(args)
    pretrain(cfg, resume=args.resume, command=_command_line(), log=_log)
    return 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    from . import augment
    from .data import load_split

    cfg = build_config(args)
    data = load_split(cfg.data, "unlabeled" if cfg.data.name == "stl10" else "train", cfg.model.image_size, seed=cfg.train.seed)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.train.seed))[: args.n]
    augment.save_preview(data.images[pick], cfg.augment, cfg.model.image_size, out, seed=cfg.train.seed)
    print(f"wrote {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from .bench import BenchOptions, format_table, run_bench

    over = _overrides(args)
    if args.batch_size is None and not args.config:
        over["train.batch_size"] = 256  # the CPU comparison of benchmarks/RESULTS.md; GPUs: pass --batch-size 512
    cfg = load_config(args.config, over)
    parts = tuple(x.strip() for x in args.parts.split(",") if x.strip())
    opts = BenchOptions(steps=args.steps, rounds=args.rounds, warmup=args.warmup, aug_images=args.aug_images, epoch_images=args.epoch_images,
                        workers=args.workers, compile=bool(args.compile), parts=parts, baseline=not args.no_baseline,
                        stream=args.stream, real_data=args.data is not None, isolate=False if args.in_process else None)
    log = (lambda *a, **k: print(*a, **k, file=sys.stderr, flush=True)) if args.json else print

    def save(result: dict) -> None:  # after each part, so a run stopped by a time limit keeps what it measured
        result["command"] = _command_line()
        if args.output:
            out = Path(args.output)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")

    try:
        result = run_bench(cfg, opts, log=log, on_part=save)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    save(result)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def _log(*args, **kwargs) -> None:
    print(*args, **kwargs, flush=True)  # progress stays visible when stdout is a pipe or a log file


def _labels(text: str | None) -> list[int | None] | None:
    """``--labels 100,1000,all`` -> ``[100, 1000, None]`` (None: every labeled training image)."""
    if not text:
        return None
    out: list[int | None] = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        if item.lower() == "all":
            out.append(None)
            continue
        try:
            n = int(item.replace("_", ""))
        except ValueError:
            raise ConfigError(f"--labels {text!r}: expected label counts such as 100,1000,6500 (or all)") from None
        if n < 1:
            raise ConfigError(f"--labels {text!r}: label counts must be >= 1")
        out.append(n)
    return out or None


def _eval_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Overrides for the evaluation commands: --batch-size is the evaluation batch, --epochs the heads' epochs."""
    out = _overrides(args)
    out.pop("out", None)  # --out is an output path here, not the run directory
    if "train.batch_size" in out:
        out["eval.batch_size"] = out.pop("train.batch_size")
    if getattr(args, "head_epochs", None) is not None:
        for key in ("eval.mlp_epochs", "eval.linear_epochs", "eval.finetune_epochs"):
            out[key] = args.head_epochs
    return out


def _print_results(results: dict[str, dict]) -> None:
    from .stats import describe_bootstrap, format_metric

    intervals = None  # how the intervals were made: named once, after the figures
    for protocol, m in results.items():
        if "accuracy" in m:
            print(f"{protocol}: test accuracy {format_metric(m)}, F1 (weighted) {format_metric(m, 'f1_weighted')}, "
                  f"F1 (macro) {format_metric(m, 'f1_macro')} on {m['n_test']} test images")
            if "note" in (m.get("seed_runs") or {}):
                print(f"{protocol}: {m['seed_runs']['note']}")
            if m.get("bootstrap"):
                intervals = describe_bootstrap(m["bootstrap"], m["n_test"])
        else:
            for method, points in m.items():
                print(f"{method}: " + ", ".join(f"{n} labels {a:.4f}" for n, a in points))
    if intervals:
        print(f"{intervals}; ± over seeds: sample standard deviation")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run, run_config

    cfg = run_config(args.run, args.config, _eval_overrides(args))
    results = evaluate_run(args.run, args.protocol or cfg.eval.protocols, cfg=cfg, labels=_labels(args.labels),
                           out_dir=args.out, log=_log)
    _print_results(results)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .evaluate.compare import compare_runs, format_comparison

    result = compare_runs(args.run_a, args.run_b, args.protocol, args.resamples, args.seed, out=args.out)
    print(format_comparison(result))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_supervised(args: argparse.Namespace) -> int:
    from .baselines import supervised

    over = _eval_overrides(args)
    cfg = load_config(args.config, over)
    weights = args.weights or cfg.eval.imagenet_weights
    if not args.out and not args.config:
        name = {"imagenet": "imagenet", "none": "scratch"}.get(weights, Path(weights).stem)
        cfg.out = f"runs/supervised_{name}"
    elif args.out:
        cfg.out = args.out
    results = supervised(cfg, weights, args.protocol, labels=_labels(args.labels), image_size=args.image_size,
                         command=_command_line(), log=_log)
    _print_results(results)
    print(f"run directory: {cfg.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    md, html = write_report([Path(r) for r in args.runs], Path(args.out))
    print(f"wrote {md}\nwrote {html}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run_experiment

    over = {}
    if args.protocols:
        over["eval.protocols"] = args.protocols
    if args.baselines is not None:
        over["eval.baselines"] = args.baselines
    cfg = build_config(args, over)
    result = run_experiment(cfg, resume=args.resume, command=_command_line(), log=_log)
    if result is None:  # a torchrun process other than rank 0: pretraining done, rank 0 evaluates and reports
        return 0
    for name, err in result.failures:
        print(f"simclr run: warning: baseline {name} was skipped: {err}", file=sys.stderr)
    return result.failures[0][1].exit_code if result.failures else 0


def cmd_embed(args: argparse.Namespace) -> int:
    from .evaluate import embed, run_config

    over = _eval_overrides(args)
    data = over.pop("data.name", None) or run_config(args.run).data.name
    embed(args.run, data, args.out, split=args.subset, overrides=over, log=_log)
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from . import backbones

    names = backbones.available(args.pattern)
    if not names:
        close = difflib.get_close_matches(args.pattern or "", backbones.available(), n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ConfigError(f"no backbone matches {args.pattern!r}{hint}")
    print("\n".join(names))
    try:
        backbones.timm_names()
    except ConfigError:
        print(f"({len(names)} torchvision models; {backbones.TIMM_EXTRA})", file=sys.stderr)
    return 0


def cmd_neighbors(args: argparse.Namespace) -> int:
    from .evaluate import neighbors_for_files

    over = _eval_overrides(args)
    data = over.pop("data.name", None)
    if not data:
        raise ConfigError("--data: give the image folder (or dataset name) to search")
    if not args.out:
        raise ConfigError("--out: give the PNG file to write, e.g. --out neighbours.png")
    neighbors_for_files(args.run, data, args.query, args.out, k=args.k, overrides=over, log=_log)
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

    p = sub.add_parser("bench", help="throughput: augmentation, training step and epoch, ours vs the torchvision + fp32 baseline",
                       description="Throughput in source images/s (two views each) and peak memory of our pipeline beside the "
                       "peers' default (torchvision per-image transforms in a DataLoader, fp32 eager model), in one run. "
                       "Random uint8 images unless --data is given.", epilog=EXIT_CODES_HELP, formatter_class=_Formatter)
    _common(p)
    p.add_argument("--steps", type=int, default=3, help="timed training steps per pipeline")
    p.add_argument("--rounds", type=int, default=1, help="repeat the step comparison this many times, ours and the "
                   "peers alternating; report the totals and each round's ratio (for machines shared with other jobs)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps first")
    p.add_argument("--aug-images", type=int, default=4096, help="source images through each augmentation pipeline")
    p.add_argument("--epoch-images", type=int, help="images in the timed epoch (default: 2 batches on CPU, 50,000 on a GPU)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the per-image baseline and the streaming path")
    p.add_argument("--parts", default="augment,step,epoch", help="comma-separated: augment, step, epoch, ablation")
    p.add_argument("--compile", action="store_true", default=None, help="also time our step with torch.compile")
    p.add_argument("--stream", action="store_true", help="also time an epoch of the streaming path (--data must be an image folder)")
    p.add_argument("--no-baseline", action="store_true", help="time our pipeline only")
    p.add_argument("--in-process", action="store_true", help="time every pipeline in this process; by default each "
                   "runs in a fresh process on the CPU, where a pipeline's speed depends on what ran before it in its process")
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress goes to stderr)")
    p.add_argument("--output", help="also write the JSON results to this file")
    p.set_defaults(func=cmd_bench)

    protocol_help = "knn | linear | mlp | finetune, a comma-separated list, or all; if omitted, eval.protocols of the config"
    labels_help = ("labeled training images: N, or a label-efficiency sweep such as 100,1000,6500,all "
                   "(if omitted: all for knn/linear, data.n_train_labels for mlp/finetune)")

    p = sub.add_parser("evaluate", help="evaluate a run's frozen encoder: knn, linear, mlp or finetune",
                       description="Evaluate the encoder of a run directory; writes RUN/eval/<protocol>/ (metrics.json, "
                       "predictions.csv, confusion matrix, curves, t-SNE plots, head weights). Model selection uses the "
                       "validation split only.", epilog=EXIT_CODES_HELP, formatter_class=_Formatter)
    p.add_argument("--run", required=True, help="run directory (the --out of simclr pretrain / simclr run)")
    p.add_argument("--protocol", help=protocol_help)
    p.add_argument("--labels", help=labels_help)
    _common(p, training=False)
    p.add_argument("--epochs", dest="head_epochs", type=int, help="epochs of the trained heads (mlp, linear, finetune)")
    p.add_argument("--seeds", type=int, help="repeat the trained heads (linear, mlp, finetune) with this many seeds on "
                   "the same frozen features: mean ± standard deviation beside the bootstrap interval (if omitted: "
                   "eval.seeds, 1); knn has no seed")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="is A better than B? paired difference on the same test images, McNemar's test",
                       description="Pair the stored test predictions of two evaluated runs image by image: A - B in "
                       "accuracy and F1 with a paired bootstrap interval, and McNemar's p-value (exact binomial for "
                       "few discordant images). Runs tested on different images are refused (exit 2).",
                       epilog=EXIT_CODES_HELP, formatter_class=_Formatter)
    p.add_argument("run_a", metavar="RUN_A", help="run directory (RUN/eval/<protocol>/) or eval folder")
    p.add_argument("run_b", metavar="RUN_B", help="run directory or eval folder")
    p.add_argument("--protocol", default="knn", help="knn | linear | mlp | finetune")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the test images")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    p.add_argument("--out", help="also write the result as JSON to this file")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("supervised", help="supervised baselines: ImageNet features, or ResNet trained from scratch",
                       description="ImageNet-pretrained ResNet as a frozen feature extractor (--weights imagenet, or a local "
                       "state dict with --weights PATH) under the same protocols and outputs as evaluate, or the network "
                       "trained from scratch on the labeled split (--weights none).", epilog=EXIT_CODES_HELP,
                       formatter_class=_Formatter)
    p.add_argument("--weights", help="imagenet | none | PATH to a ResNet state dict (.pth, .pt, .safetensors) "
                   "(if omitted: eval.imagenet_weights of the config, imagenet)")
    p.add_argument("--protocol", help=protocol_help + "; finetune for --weights none")
    p.add_argument("--labels", help=labels_help)
    _common(p, training=False)
    p.add_argument("--epochs", dest="head_epochs", type=int, help="epochs of the trained heads / of training from scratch")
    p.add_argument("--backbone", help="a torchvision model name with ImageNet weights (resnet18, ...)")
    p.add_argument("--image-size", type=int, help="input side in pixels (if omitted: 224 for ImageNet weights)")
    p.set_defaults(func=cmd_supervised)

    p = sub.add_parser("report", help="write report.md and a self-contained report.html over run directories",
                       epilog=EXIT_CODES_HELP, formatter_class=_Formatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (complete or partial)")
    p.add_argument("--out", default="report", help="folder for report.md, report.html and images/")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("run", help="pretrain, evaluate, run the baselines and write the report (the main job)",
                       description="Pretrain SimCLR, evaluate it (eval.protocols), run eval.baselines under the same "
                       "protocols, and write OUT/report/report.html.", epilog=EXIT_CODES_HELP, formatter_class=_Formatter)
    _common(p)
    p.add_argument("--protocols", help="evaluation protocols, e.g. knn,mlp (if omitted: eval.protocols)")
    p.add_argument("--baselines", help="comma-separated: random, imagenet, scratch; '' for none (if omitted: eval.baselines)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted pretraining in OUT, then evaluate")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("embed", help="write one feature vector per image (NumPy .npz or Parquet)",
                       description="Features of every image of DATA from a run's frozen encoder, with its path (image "
                       "folders) or index, label and split: for search, clustering or labelling.", epilog=EXIT_CODES_HELP,
                       formatter_class=_Formatter)
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--subset", default="all", choices=("all", "train", "test"), help="which images of DATA")
    _common(p, training=False)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("backbones", help="list the backbone names --backbone accepts (torchvision, timm:NAME)",
                       description="Every torchvision classification model, and every timm model as timm:NAME when "
                       "timm is installed (pip install 'simclr[timm]'). PATTERN: shell wildcards (mobilenet*) or a "
                       "substring.", epilog=EXIT_CODES_HELP, formatter_class=_Formatter)
    p.add_argument("pattern", nargs="?", metavar="PATTERN", help="e.g. resnet, 'timm:vit_small*'")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("neighbors", help="picture: the nearest images of a collection to your query images",
                       description="For each query image, the K most similar images of DATA (exact cosine similarity of "
                       "the run's frozen features, computed and searched in chunks on the run's device) as a PNG, and "
                       "their paths and similarities in a .json beside it (--out: the PNG file).", epilog=EXIT_CODES_HELP,
                       formatter_class=_Formatter)
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--query", required=True, nargs="+", metavar="IMG", help="query image files")
    p.add_argument("-k", "--k", type=int, default=8, help="neighbours per query")
    _common(p, training=False)
    p.set_defaults(func=cmd_neighbors)
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
