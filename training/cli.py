"""Command line: `synth`, `stats`, `convert`, `train`, `evaluate`, `export-encoder`.

TensorFlow is imported only by `train` and `evaluate`, so the data commands run without
the train extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from curatornet.model_format import ARCHITECTURES, MANIFEST_FILE
from curatornet.synthetic import MarketConfig, generate
from training.data.formats import DataError, load_dataset, save_dataset, save_market
from training.data.stats import describe, format_table
from training.sampling import PRESETS


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
    market = generate(MarketConfig().scaled(args.scale), seed=args.seed, features=not args.images)
    if args.images:
        from tqdm import tqdm

        from curatornet.image_encoder import load_image_encoder
        from curatornet.painter import paint_market

        encoder = load_image_encoder(args.encoder)
        ids = market.dataset.item_ids
        with tqdm(total=len(ids), desc="painting", unit="work", disable=None) as bar:
            features = paint_market(
                market.truth.item_style,
                ids,
                encoder,
                args.out / "images",
                on_batch=lambda done: bar.update(done - bar.n),
            )
        market = dataclasses.replace(
            market, dataset=dataclasses.replace(market.dataset, features=features)
        )
    save_market(market, args.out)
    elapsed = time.perf_counter() - started
    painted = f", painted in pixels and encoded by {args.encoder.stem}" if args.images else ""
    print(
        f"wrote a synthetic market (seed {args.seed}, scale {args.scale}{painted}) to {args.out} "
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
        args.preset,
        architecture=args.architecture,
        seed=args.seed,
        epochs=args.epochs,
        l2=args.l2,
        strategy=args.sampling,
    )
    started = time.perf_counter()
    run = train_and_export(
        args.data,
        args.out,
        config,
        features_path=args.features,
        allow_pickle=args.allow_pickle_features,
        image_encoder=args.image_encoder,
    )
    print(f"\n{'epoch':>5}  {'loss':>7}  {'train acc':>9}  {'val':>7}  {'lr':>8}  {'seconds':>7}")
    for e in run.result.history:
        print(
            f"{e.epoch:>5}  {e.train_loss:>7.4f}  {e.train_accuracy:>9.4f}  "
            f"{e.validation:>7.4f}  {e.learning_rate:>8.2e}  {e.seconds:>7.1f}"
        )
    manifest = run.manifest
    print(
        f"\nwrote {args.out}: best epoch {run.result.best_epoch}, validation "
        f"{run.result.validation_metric} {run.result.best_validation:.4f}; "
        f"{run.triples:,} triples sampled at "
        f"{run.triples_per_second:,.0f}/s; {run.result.seconds_per_epoch:.1f} s per epoch; "
        f"ONNX parity error {manifest['export']['parity_max_abs_diff']:.1e}; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    return 0


METHODS = (
    "random",
    "popular",
    "visrank",
    "vbpr",
    "vbpr-random",
    "curatornet",
    "curatornet-paper",
    "curatornet-random",
    "ceiling",
    "ceiling-features",
)
ORACLES = ("ceiling", "ceiling-features")  # need the synthetic market's hidden tastes


def _companion_model(
    args: argparse.Namespace, main_manifest: dict, given: Path | None, name: str, strategy: str
) -> Path:
    """A paper-architecture CuratorNet to compare with: given, already built in OUT/name, or
    trained now with the main model's preset and seed (guidelines, or uniform negatives for
    the ablation of the paper's Figure 3)."""
    from training.pipeline import RunConfig, train_and_export

    directory = given or args.out / name
    if not (directory / MANIFEST_FILE).is_file():
        preset = main_manifest.get("training", {}).get("preset", "quick")
        seed = main_manifest.get("training", {}).get("seed", 0)
        print(f"training the paper's CuratorNet ({strategy}, {preset} preset) into {directory}")
        config = RunConfig.from_preset(preset, architecture="paper", seed=seed, strategy=strategy)
        train_and_export(
            args.data,
            directory,
            config,
            features_path=args.features,
            allow_pickle=args.allow_pickle_features,
        )
    return directory


def _evaluate(args: argparse.Namespace) -> int:
    from curatornet.synthetic import TASTES_FILE, load_truth
    from training import baselines
    from training.clusters import ClusterConfig, load_or_compute_clusters
    from training.evaluate import evaluate_methods
    from training.report import markdown_report, summarise, write_report
    from training.split import split_last_basket

    keys = list(METHODS) if args.methods == "all" else args.methods.split(",")
    unknown = sorted(set(keys) - set(METHODS))
    if unknown:
        print(f"error: unknown method(s) {unknown}; choose from {list(METHODS)}", file=sys.stderr)
        return 2
    oracles = [key for key in keys if key in ORACLES]
    if oracles and not (args.data / TASTES_FILE).is_file():
        if args.methods != "all":
            print(f"error: {', '.join(oracles)} need {args.data / TASTES_FILE}", file=sys.stderr)
            return 2
        keys = [key for key in keys if key not in ORACLES]
    dataset = _load(args)
    truth = load_truth(args.data, dataset) if set(keys) & set(ORACLES) else None
    train, held_out = split_last_basket(dataset)
    main_manifest = json.loads((args.model / MANIFEST_FILE).read_text())
    methods: list[baselines.Method] = []
    architecture = main_manifest.get("model", {}).get("architecture", "paper")
    subject = f"CuratorNet, {architecture} (--model)"
    clusters = None
    if {"vbpr", "vbpr-random"} & set(keys):
        clusters = load_or_compute_clusters(
            dataset.features, ClusterConfig(seed=args.seed), args.data
        )
    for key in keys:
        if key == "random":
            methods.append(baselines.RandomMethod(seed=args.seed))
        elif key == "popular":
            methods.append(baselines.MostPopular())
        elif key == "visrank":
            methods += [baselines.VisRank("max"), baselines.VisRank("avg")]
        elif key in ("vbpr", "vbpr-random"):
            strategy = "guidelines" if key == "vbpr" else "random"
            assert clusters is not None  # computed above whenever a VBPR is asked for
            config = baselines.VBPRConfig(seed=args.seed)
            methods.append(baselines.VBPR(clusters.labels, clusters.reduced, strategy, config))
        elif key == "curatornet":
            methods.append(baselines.CuratorNetOnnx(args.model, subject))
        elif key == "curatornet-paper":
            directory = _companion_model(
                args, main_manifest, args.paper_model, "curatornet-paper", "guidelines"
            )
            methods.append(baselines.CuratorNetOnnx(directory, "CuratorNet, paper (guidelines)"))
        elif key == "curatornet-random":
            directory = _companion_model(
                args, main_manifest, args.ablation_model, "curatornet-random", "random"
            )
            methods.append(
                baselines.CuratorNetOnnx(directory, "CuratorNet, paper (uniform negatives)")
            )
        elif key in ORACLES:
            assert truth is not None  # loaded above whenever an oracle is asked for
            if key == "ceiling":
                methods.append(baselines.Ceiling(truth))
            else:
                reading = baselines.StyleReadingConfig(seed=args.seed)
                methods.append(baselines.FeatureCeiling(truth, reading))
    results, cases = evaluate_methods(dataset, train, held_out, methods, seed=args.seed)
    summary = summarise(
        results,
        cases,
        seed=args.seed,
        subject=subject if "curatornet" in keys else None,
        user_ids=dataset.user_ids,
    )
    summary["setup"] = {
        "data": str(args.data),
        "model": str(args.model),
        "model_sha256": main_manifest["item_tower"]["sha256"],
        "seed": args.seed,
        "methods": keys,
    }
    title = f"Offline evaluation: {args.model.name} on {args.data.name}"
    write_report(summary, args.out, title)
    print(markdown_report(summary, title))
    print(f"wrote {args.out}/results.json, table.md, recall_at_k.png")
    return 0


def _export_encoder(args: argparse.Namespace) -> int:
    from training.image_encoder import export_encoder

    manifest = export_encoder(args.out)
    print(f"wrote {args.out / manifest['file']} ({manifest['output_dim']}-d features)")
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
    synth.add_argument(
        "--images",
        action="store_true",
        help="paint every artwork (OUT/images/<id>.png) and use the image encoder's features",
    )
    synth.add_argument(
        "--encoder",
        type=Path,
        default=Path("models/encoders/efficientnet-lite0.json"),
        help="image encoder manifest for --images",
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
    train.add_argument(
        "--architecture",
        choices=ARCHITECTURES,
        default=ARCHITECTURES[0],
        help="multi-interest (default: K interests per customer, VisRank-initialised metric) "
        "or paper (CuratorNet as published: one user vector, BPR)",
    )
    train.add_argument("--epochs", type=int, default=None, help="maximum epochs")
    train.add_argument("--l2", type=float, default=None, help="L2 on kernels (default 1e-4)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--sampling", choices=["guidelines", "random"], default="guidelines")
    train.add_argument(
        "--image-encoder",
        type=Path,
        default=None,
        help="the encoder manifest the features came from (synth --images): named in the "
        "exported manifest so the service accepts pictures",
    )
    train.set_defaults(run=_train)

    evaluate = commands.add_parser(
        "evaluate", help="replay held-out baskets: CuratorNet against the baselines"
    )
    _add_data_arguments(evaluate)
    evaluate.add_argument("--model", type=Path, required=True, help="exported model directory")
    evaluate.add_argument("--out", type=Path, required=True, help="report directory")
    evaluate.add_argument(
        "--methods", default="all", help=f"'all' or a comma list of {', '.join(METHODS)}"
    )
    evaluate.add_argument(
        "--paper-model",
        type=Path,
        default=None,
        help="the paper's CuratorNet (--architecture paper) for curatornet-paper "
        "(default: OUT/curatornet-paper, trained there if missing)",
    )
    evaluate.add_argument(
        "--ablation-model",
        type=Path,
        default=None,
        help="the paper's CuratorNet trained with --sampling random, for curatornet-random "
        "(default: OUT/curatornet-random, trained there if missing)",
    )
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.set_defaults(run=_evaluate)

    encoder = commands.add_parser(
        "export-encoder", help="export the ImageNet-pretrained image encoder to ONNX"
    )
    encoder.add_argument("--out", type=Path, default=Path("models/encoders"))
    encoder.set_defaults(run=_export_encoder)
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
