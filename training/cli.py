"""Command line: `synth`, `stats`, `convert`, `train` (evaluate joins them later).

TensorFlow is imported only by `train`, so the data commands run without the train extra.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from training.data.formats import DataError, load_dataset, save_dataset
from training.data.stats import describe, format_table
from training.sampling import PRESETS
from training.synthetic import MarketConfig, generate, save_market


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, required=True, help="directory with inventory.csv, purchases.csv"
    )
    parser.add_argument(
        "--features", type=Path, default=None, help="features file (default DATA/features.npz)"
    )
    parser.add_argument(
        "--allow-pickle-features",
        action="store_true",
        help="read the original pickled .npy features (runs pickle: only for files you trust)",
    )


def _load(args: argparse.Namespace):
    return load_dataset(
        args.data, features_path=args.features, allow_pickle=args.allow_pickle_features
    )


def _synth(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    market = generate(MarketConfig().scaled(args.scale), seed=args.seed)
    save_market(market, args.out)
    elapsed = time.perf_counter() - started
    print(
        f"wrote a synthetic market (seed {args.seed}, scale {args.scale}) to {args.out} "
        f"in {elapsed:.1f} s"
    )
    print(format_table(describe(market.dataset)))
    return 0


def _stats(args: argparse.Namespace) -> int:
    stats = describe(_load(args))
    if args.json:
        print(json.dumps(stats.as_dict(), indent=2))
    else:
        print(format_table(stats))
    return 0


def _convert(args: argparse.Namespace) -> int:
    save_dataset(_load(args), args.out)
    print(f"wrote {args.out} (inventory.csv, purchases.csv, features.npz)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.pipeline import RunConfig, train_and_export

    config = RunConfig.from_preset(
        args.preset, seed=args.seed, epochs=args.epochs, l2=args.l2, strategy=args.sampling
    )
    started = time.perf_counter()
    run = train_and_export(
        args.data,
        args.out,
        config,
        features_path=args.features,
        allow_pickle=args.allow_pickle_features,
    )
    print(
        f"\n{'epoch':>5}  {'loss':>7}  {'train acc':>9}  {'val acc':>7}  {'lr':>8}  {'seconds':>7}"
    )
    for e in run.result.history:
        print(
            f"{e.epoch:>5}  {e.train_loss:>7.4f}  {e.train_accuracy:>9.4f}  "
            f"{e.validation_accuracy:>7.4f}  {e.learning_rate:>8.2e}  {e.seconds:>7.1f}"
        )
    manifest = run.manifest
    print(
        f"\nwrote {args.out}: best epoch {run.result.best_epoch}, validation pairwise accuracy "
        f"{run.result.best_validation_accuracy:.4f}; {run.triples:,} triples sampled at "
        f"{run.triples_per_second:,.0f}/s; {run.result.seconds_per_epoch:.1f} s per epoch; "
        f"ONNX parity error {manifest['export']['parity_max_abs_diff']:.1e}; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="generate the synthetic art market")
    synth.add_argument("--out", type=Path, required=True, help="directory to write")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="grow or shrink items, users and artists (default 1)",
    )
    synth.set_defaults(run=_synth)

    stats = commands.add_parser("stats", help="describe a data set as the paper does")
    _add_data_arguments(stats)
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(run=_stats)

    convert = commands.add_parser(
        "convert", help="rewrite a UGallery data set in the project format (safe features.npz)"
    )
    _add_data_arguments(convert)
    convert.add_argument("--out", type=Path, required=True)
    convert.set_defaults(run=_convert)

    train = commands.add_parser("train", help="train CuratorNet and export it to a model directory")
    _add_data_arguments(train)
    train.add_argument("--out", type=Path, required=True, help="model directory, e.g. models/NAME")
    train.add_argument(
        "--preset", choices=sorted(PRESETS), default="quick", help="triples per guideline"
    )
    train.add_argument("--epochs", type=int, default=None, help="maximum epochs")
    train.add_argument("--l2", type=float, default=None, help="L2 on kernels (default 1e-4)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--sampling", choices=["guidelines", "random"], default="guidelines")
    train.set_defaults(run=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if getattr(args, "scale", 1.0) <= 0:
        print("error: --scale must be positive", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
