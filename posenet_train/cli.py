"""``posenet-train``: convert | synth | fit | eval | export | to-bag | from-bag | label-sfm.
Errors are one line and exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from posenet_train.datasets import READERS, DatasetError


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert 7-Scenes / Cambridge / COLMAP to the canonical poses.csv")
    p.add_argument("src", help="data set folder (or COLMAP images.txt)")
    p.add_argument("--format", required=True, choices=sorted(READERS))
    p.add_argument("--out", required=True, help="folder to write poses.csv into")


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from posenet_train.synth import SynthConfig

    d = SynthConfig()
    p = sub.add_parser("synth", help="render a synthetic textured room with exact poses")
    p.add_argument("--out", required=True)
    p.add_argument("--train-sequences", type=int, default=d.train_sequences)
    p.add_argument("--test-sequences", type=int, default=d.test_sequences)
    p.add_argument("--frames", type=int, default=d.frames_per_sequence, help="frames per sequence")
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--hfov", type=float, default=d.hfov_deg, help="horizontal field of view, degrees")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--scene-seed", type=int, default=d.scene_seed)
    p.add_argument("--ext", choices=("png", "jpg"), default=d.image_ext)
    p.add_argument("--heading-spread", type=float, default=d.heading_spread_deg, help="0: full turns; else +-deg")
    p.add_argument("--seven-scenes", action="store_true", help="also write 7-Scenes pose.txt and split files")


def _add_fit(sub: argparse._SubParsersAction) -> None:
    from posenet_train.train import OPTIMIZERS, SCHEDULES, FitConfig

    p = sub.add_parser("fit", help="train a PoseNet on a canonical data set (torchrun for several GPUs)")
    p.add_argument("data", help="canonical data set folder (poses.csv)")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, model.pt")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt exactly")
    p.add_argument("--export", default="", help="also export the final model to this .pt path")
    p.add_argument("--mc-dropout", action="store_true", help="the export keeps Monte Carlo dropout sampling")
    choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES}
    for f in fields(FitConfig):
        if f.name in ("data", "out"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            p.add_argument(flag, type=kind, default=f.default, choices=choices.get(f.name))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="errors, thresholds, nearest-neighbour baseline, JSON and plots")
    p.add_argument("model", help="exported .pt or a checkpoint.pt")
    p.add_argument("dataset", help="canonical data set folder")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--out", default="", help="folder for summary.json and plots (default: next to the model)")
    p.add_argument("--no-baseline", action="store_true", help="skip the nearest-neighbour baseline")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--uncertainty", action="store_true", help="also check the predicted covariance (coverage, NEES)")
    _add_uncertainty_options(p)
    p.add_argument("--ood", help="with --uncertainty: a data set far from the training poses, to compare std")


def _add_uncertainty_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("mc_dropout", "crops"), default="mc_dropout", help="uncertainty mode")
    p.add_argument("--samples", type=int, default=40, help="Monte Carlo dropout samples per frame (40)")
    p.add_argument(
        "--crops", type=int, help="crops per frame (crops mode: 16; mc_dropout: 1, samples pooled over crops)"
    )


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit the covariance scale on held-out frames; store it in the model")
    p.add_argument("model", help="exported .pt (with --mc-dropout for the mc_dropout mode)")
    p.add_argument("dataset", help="canonical data set whose SPLIT the model was not trained on")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--out", default="", help="calibrated model (default: MODEL_calibrated.pt)")
    _add_uncertainty_options(p)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="checkpoint -> TorchScript file with its contract")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--mc-dropout", action="store_true", help="keep Monte Carlo dropout sampling (uncertainty)")


def _add_to_bag(sub: argparse._SubParsersAction) -> None:
    from posenet_train.bags import ToBagConfig

    d = ToBagConfig(Path(), Path())
    p = sub.add_parser("to-bag", help="record a data set split as a rosbag2 (images, /tf, ground-truth poses)")
    p.add_argument("dataset", help="canonical data set folder")
    p.add_argument("--out", required=True, help="new rosbag2 folder")
    p.add_argument("--split", default=d.split, choices=("train", "test"))
    p.add_argument("--rate", type=float, default=d.rate_hz, help="frames per second (10)")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default=d.storage)
    p.add_argument("--ros-distro", choices=("humble", "jazzy", "kilted"), default=d.ros_distro)
    p.add_argument("--compressed", action="store_true", help="sensor_msgs/CompressedImage (JPEG) instead of Image")
    p.add_argument("--image-topic", default=d.image_topic)


def _add_from_bag(sub: argparse._SubParsersAction) -> None:
    from posenet_ros.groundtruth import add_ground_truth_arguments
    from posenet_train.bags import FromBagConfig

    d = FromBagConfig(Path(), Path(), None)
    p = sub.add_parser("from-bag", help="training set from a recording with ground truth")
    p.add_argument("bag", help="rosbag2 folder, bare .db3/.mcap or ROS 1 .bag")
    p.add_argument("--out", required=True, help="folder for images/ and poses.csv")
    p.add_argument("--image-topic", help="image topic (default: the only one)")
    add_ground_truth_arguments(p)
    p.add_argument("--every", type=int, default=d.every, help="keep every Nth frame (1)")
    p.add_argument("--min-translation", type=float, default=d.min_translation, help="metres since the last kept frame")
    p.add_argument("--min-rotation", type=float, default=d.min_rotation_deg, help="degrees since the last kept frame")
    p.add_argument("--blur-threshold", type=float, default=d.blur_threshold, help="min variance of the Laplacian")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--block-seconds", type=float, default=d.block_seconds, help="split by time blocks this long")


def _add_label_sfm(sub: argparse._SubParsersAction) -> None:
    from posenet_train.sfm import MATCHERS, SfmConfig

    d = SfmConfig(Path(), Path())
    p = sub.add_parser("label-sfm", help="poses for unlabelled images or a bag by structure from motion (pycolmap)")
    p.add_argument("source", help="folder of images (name order = time order) or a bag")
    p.add_argument("--out", required=True, help="folder for images/, sfm/ and poses.csv")
    p.add_argument("--image-topic", help="image topic when SOURCE is a bag")
    p.add_argument("--every", type=int, default=d.every, help="use every Nth frame (1)")
    p.add_argument("--matcher", choices=MATCHERS, default=d.matcher, help="auto: sequential for video")
    p.add_argument("--camera-model", default=d.camera_model, help="COLMAP camera model (SIMPLE_RADIAL)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--scale", type=float, help="metres per SfM unit")
    scale.add_argument("--align-to", help="poses.csv with known poses of the same image names: similarity fit")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--block-frames", type=int, default=d.block_frames, help="split by blocks of consecutive frames")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posenet-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_convert,
        _add_synth,
        _add_fit,
        _add_eval,
        _add_calibrate,
        _add_export,
        _add_to_bag,
        _add_from_bag,
        _add_label_sfm,
    ):
        add(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "convert":
        from posenet_train.datasets import convert

        path = convert(args.src, args.format, args.out)
        print(f"wrote {path}")
    elif args.command == "synth":
        from posenet_train.synth import SynthConfig, render_dataset

        cfg = SynthConfig(
            scene_seed=args.scene_seed,
            train_sequences=args.train_sequences,
            test_sequences=args.test_sequences,
            frames_per_sequence=args.frames,
            width=args.width,
            height=args.height,
            hfov_deg=args.hfov,
            seed=args.seed,
            image_ext=args.ext,
            heading_spread_deg=args.heading_spread,
            seven_scenes=args.seven_scenes,
        )
        records = render_dataset(cfg, Path(args.out))
        print(f"wrote {len(records)} frames to {Path(args.out) / 'poses.csv'}")
    elif args.command == "fit":
        from posenet_train.export_model import export_checkpoint
        from posenet_train.train import FitConfig, fit

        values = {f.name: getattr(args, f.name) for f in fields(FitConfig) if f.name not in ("data", "out")}
        result = fit(FitConfig(data=args.data, out=args.out, **values), resume=args.resume)
        state = "interrupted" if result.interrupted else "finished"
        print(f"{state} at step {result.step} after {result.seconds:.0f} s; checkpoint {result.checkpoint}")
        if result.metrics:
            print(json.dumps(result.metrics))
        if args.export and not result.interrupted:
            print(f"exported {export_checkpoint(result.checkpoint, args.export, args.mc_dropout)}")
        return 130 if result.interrupted else 0
    elif args.command == "eval":
        from posenet_train.evaluate import main_eval

        main_eval(args)
    elif args.command == "export":
        from posenet_train.export_model import export_checkpoint

        print(f"wrote {export_checkpoint(args.checkpoint, args.out, args.mc_dropout)}")
    elif args.command == "calibrate":
        _run_calibrate(args)
    elif args.command == "to-bag":
        from posenet_train.bags import ToBagConfig, dataset_to_bag

        cfg = ToBagConfig(
            Path(args.dataset),
            Path(args.out),
            args.split,
            args.rate,
            storage=args.storage,
            ros_distro=args.ros_distro,
            compressed=args.compressed,
            image_topic=args.image_topic,
        )
        print(f"wrote {dataset_to_bag(cfg)} frames to {args.out}")
    elif args.command == "from-bag":
        _run_from_bag(args)
    elif args.command == "label-sfm":
        _run_label_sfm(args)
    return 0


def _run_calibrate(args: argparse.Namespace) -> None:
    from posenet_train.uncertainty import calibrate, format_metrics

    out = Path(args.out) if args.out else Path(args.model).with_name(Path(args.model).stem + "_calibrated.pt")
    cal, before, after = calibrate(args.model, args.dataset, out, args.split, args.mode, args.samples, args.crops)
    print(f"{args.mode} on {args.dataset} ({args.split}, {cal.frames} frames)")
    print(f"before: {format_metrics(before)}")
    print(
        f"variance scale: position {cal.position_scale:.4g}, orientation {cal.orientation_scale:.4g}; "
        f"reference position std {cal.reference_position_std:.3f} m"
    )
    print(f"after:  {format_metrics(after)}")
    print(f"wrote {out}")


def _run_from_bag(args: argparse.Namespace) -> None:
    from posenet_ros.groundtruth import ground_truth_from_arguments
    from posenet_train.bags import FromBagConfig, bag_to_dataset

    truth = ground_truth_from_arguments(args, required=True)
    cfg = FromBagConfig(
        Path(args.bag),
        Path(args.out),
        truth,
        args.image_topic,
        args.every,
        args.min_translation,
        args.min_rotation,
        args.blur_threshold,
        args.test_fraction,
        args.block_seconds,
    )
    records, stats = bag_to_dataset(cfg)
    tests = sum(r.split == "test" for r in records)
    print(f"{stats.line()}")
    print(f"wrote {len(records)} frames ({len(records) - tests} train, {tests} test) to {Path(args.out) / 'poses.csv'}")
    if tests == 0:
        print("warning: no test frames (too few frames kept for the split)")


def _run_label_sfm(args: argparse.Namespace) -> None:
    from posenet_train.sfm import SfmConfig, label_sfm

    cfg = SfmConfig(
        Path(args.source),
        Path(args.out),
        args.image_topic,
        args.every,
        args.matcher,
        args.camera_model,
        args.scale,
        Path(args.align_to) if args.align_to else None,
        args.test_fraction,
        args.block_frames,
    )
    result = label_sfm(cfg)
    line = f"registered {result.registered} of {result.images} images"
    if result.alignment_rms_m is not None:
        line += f"; aligned to {args.align_to} with RMS position residual {result.alignment_rms_m:.3f} m"
    elif args.scale is None:
        line += "; poses are in SfM units (no --scale or --align-to)"
    print(line)
    print(f"wrote {Path(args.out) / 'poses.csv'}")


def main(argv: list[str] | None = None) -> int:
    from posenet_ros.bagio import BagError
    from posenet_train.sfm import SfmError

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (DatasetError, BagError, SfmError, ValueError, FileNotFoundError, FloatingPointError) as exc:
        print(f"posenet-train {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
