"""``posenet-train``: from data to the model file the node loads.

  convert    7-Scenes / Cambridge Landmarks / COLMAP -> the canonical poses.csv
  synth      render a synthetic textured room with exact poses
  fit        train a PoseNet on a canonical data set (torchrun for several GPUs)
  export     training checkpoint -> TorchScript model file with its contract
  eval       errors and thresholds on a data set, against the nearest-neighbour baseline
  calibrate  fit the covariance scale on held-out frames and store it in the model
  to-bag     record a data set split as a rosbag2 (images, /tf, ground-truth poses)
  from-bag   training set from a recording with ground truth
  label-sfm  poses for unlabelled images or a bag by structure from motion (pycolmap)
  map        3D map of a data set's training images for refinement (SIFT, known poses)

Mistakes are one line saying what is wrong and what to do, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import fields
from pathlib import Path

from posenet_ros import __version__
from posenet_ros.cli_support import (
    UsageError,
    build_command_parser,
    check_bag_path,
    check_model_file,
    check_new_bag_folder,
    check_output_folder,
    check_seconds,
    run_command_line,
)
from posenet_ros.model_files import torch_file_kind
from posenet_train.datasets import (
    READERS,
    SPLITS,
    VAL_BLOCK_FRAMES,
    VAL_FRACTION,
    VAL_GAP_FRAMES,
    VAL_MIN_BLOCK_FRAMES,
    DatasetError,
)

DISTROS = ("humble", "jazzy", "kilted")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="7-Scenes / Cambridge Landmarks / COLMAP -> the canonical poses.csv")
    p.add_argument("src", help="data set folder (or COLMAP images.txt)")
    p.add_argument("--format", required=True, choices=sorted(READERS), help="layout of SRC")
    p.add_argument("--out", required=True, help="folder to write poses.csv into (images are not copied)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=VAL_FRACTION,
        help="share of the training frames held out as val, in blocks of consecutive frames (0: none)",
    )
    p.add_argument("--val-block-frames", type=int, default=VAL_BLOCK_FRAMES, help="consecutive frames per val block")


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from posenet_train.synth import PRESETS, SynthConfig

    d = SynthConfig()
    p = sub.add_parser(
        "synth",
        help="render a synthetic textured room with exact poses",
        description="Render a synthetic textured room with exact poses. --preset room-benchmark renders a benchmark "
        "instead: OUT/train (train + val, with per-sequence light, exposure, white balance, noise, blur and label "
        "noise) and the test-only sets OUT/test-clean, OUT/test-perturbed (another lens, JPEG, occluders, new "
        "posters, wider nuisances) and OUT/test-unseen (a region training never entered); evaluate with "
        "`posenet-train eval MODEL OUT/test-perturbed --baseline-data OUT/train` (docs/training.md, "
        "'A synthetic benchmark'). --preset room-demo renders the same nuisances over the whole walk box (no "
        "test-unseen): the bundled demo model's training data. The size options below override the preset's.",
    )
    p.add_argument("--out", required=True, help="folder for the images, poses.csv and scene.json")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="render a named benchmark (train/, test-clean/, test-perturbed/, test-unseen/) instead of one data set",
    )
    b = PRESETS["room-benchmark"]
    # None: the option was not given (the plain default, or the preset's).
    p.add_argument(
        "--train-sequences",
        type=int,
        default=None,
        help=f"trajectories in the train split (default {d.train_sequences}; preset {b.train_sequences})",
    )
    p.add_argument(
        "--test-sequences",
        type=int,
        default=None,
        help=f"trajectories in the test split (default {d.test_sequences}; preset {b.test_sequences} per test set)",
    )
    # One by default, so a rendered set has frames to calibrate on (SynthConfig's 0 keeps library
    # callers as they were); val trajectories come after the test ones and change no other frame.
    p.add_argument(
        "--val-sequences",
        type=int,
        default=None,
        help=f"trajectories in the val split, for calibration and tuning (default 1; preset {b.val_sequences})",
    )
    p.add_argument(
        "--frames",
        type=int,
        default=None,
        help=f"frames per sequence (default {d.frames_per_sequence}; preset {b.frames_per_sequence})",
    )
    p.add_argument("--width", type=int, default=None, help=f"image width, pixels (default {d.width}; preset {b.width})")
    p.add_argument(
        "--height", type=int, default=None, help=f"image height, pixels (default {d.height}; preset {b.height})"
    )
    p.add_argument(
        "--hfov", type=float, default=None, help=f"horizontal field of view, degrees (default {d.hfov_deg:g})"
    )
    p.add_argument(
        "--seed", type=int, default=None, help=f"seed of the trajectories (and nuisances) (default {d.seed})"
    )
    p.add_argument(
        "--scene-seed", type=int, default=None, help=f"seed of the room (textures, furniture) (default {d.scene_seed})"
    )
    p.add_argument("--ext", choices=("png", "jpg"), default=d.image_ext, help="image file format (a preset writes png)")
    p.add_argument(
        "--heading-spread",
        type=float,
        default=None,
        help="0: headings turn all the way round; else they sway within +-this many degrees of +x "
        f"(default {d.heading_spread_deg:g}; preset {b.heading_spread_deg:g})",
    )
    p.add_argument("--seven-scenes", action="store_true", help="also write 7-Scenes pose.txt and split files")
    p.add_argument("--jobs", type=int, default=0, help="with --preset: processes rendering sequences (0: one per CPU)")
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="FOLDER",
        help="with --preset: render only these of its folders (train, test-clean, test-perturbed, test-unseen)",
    )


def _add_fit(sub: argparse._SubParsersAction) -> None:
    from posenet_train.train import FIT_OPTION_HELP, OPTIMIZERS, SCHEDULES, TRAIN_PRECISIONS, FitConfig

    p = sub.add_parser("fit", help="train a PoseNet on a canonical data set (torchrun for several GPUs)")
    p.add_argument("data", help="canonical data set folder (poses.csv)")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt and the training history")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt exactly")
    p.add_argument("--export", default="", help="also export the final model to this .pt path")
    p.add_argument("--mc-dropout", action="store_true", help="the export keeps Monte Carlo dropout sampling")
    choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "precision": TRAIN_PRECISIONS}
    for f in fields(FitConfig):
        if f.name in ("data", "out"):
            continue
        flag = "--" + f.name.replace("_", "-")
        text = FIT_OPTION_HELP[f.name]
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            default = f.default if f.default != "" else None  # "" shows as no default
            p.add_argument(flag, type=kind, default=default, choices=choices.get(f.name), help=text)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="errors and thresholds on a data set, against the nearest-neighbour baseline")
    p.add_argument("model", help="exported .pt or a training checkpoint.pt")
    p.add_argument("dataset", help="canonical data set folder")
    p.add_argument("--split", default="test", choices=SPLITS, help="split to evaluate")
    p.add_argument("--out", default="", help="folder for summary.json and plots (default: out/eval/MODEL_SPLIT)")
    p.add_argument("--no-baseline", action="store_true", help="skip the nearest-neighbour baseline")
    p.add_argument(
        "--baseline-data",
        default="",
        help="data set whose train split the nearest-neighbour baseline searches (default: DATASET's own; "
        "for a test-only set such as synth --preset's OUT/test-perturbed, give OUT/train)",
    )
    p.add_argument(
        "--map",
        default="",
        help="also refine each pose against this map (posenet-train map) and report both (docs/refinement.md)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--uncertainty", action="store_true", help="also check the predicted covariance (coverage, NEES)")
    _add_uncertainty_options(p)
    p.add_argument("--ood", help="with --uncertainty: a data set far from the training poses, to compare std")


def _add_uncertainty_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("mc_dropout", "crops"), default="mc_dropout", help="uncertainty mode")
    p.add_argument("--samples", type=int, default=40, help="Monte Carlo dropout samples per frame")
    p.add_argument(
        "--crops", type=int, help="crops per frame (default: crops mode 16; mc_dropout 1, samples pooled over crops)"
    )


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit the covariance scale on held-out frames and store it in the model")
    p.add_argument("model", help="exported .pt (with --mc-dropout for the mc_dropout mode)")
    p.add_argument("dataset", help="canonical data set whose SPLIT the model was not trained on")
    p.add_argument(
        "--split", choices=SPLITS, help="held-out split to calibrate on (default val: the test split stays unseen)"
    )
    p.add_argument("--out", default="", help="calibrated model (default: out/calibrated/MODEL_calibrated.pt)")
    _add_uncertainty_options(p)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="training checkpoint -> TorchScript model file with its contract")
    p.add_argument("checkpoint", help="OUT/checkpoint.pt of posenet-train fit")
    p.add_argument("out", help="model file to write, ending in .pt")
    p.add_argument("--mc-dropout", action="store_true", help="keep Monte Carlo dropout sampling (uncertainty)")


def _add_to_bag(sub: argparse._SubParsersAction) -> None:
    from posenet_train.bags import ToBagConfig

    d = ToBagConfig(Path(), Path())
    p = sub.add_parser("to-bag", help="record a data set split as a rosbag2 (images, /tf, ground-truth poses)")
    p.add_argument("dataset", help="canonical data set folder")
    p.add_argument("--out", required=True, help="new rosbag2 folder")
    p.add_argument("--split", default=d.split, choices=SPLITS, help="split to record")
    p.add_argument("--rate", type=float, default=d.rate_hz, help="frames per second")
    p.add_argument(
        "--sequence-gap", type=float, default=d.sequence_gap_s, help="seconds of silence between two sequences"
    )
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default=d.storage, help="rosbag2 storage plugin")
    p.add_argument("--ros-distro", choices=DISTROS, default=d.ros_distro, help="bag format of this distro")
    p.add_argument("--compressed", action="store_true", help="sensor_msgs/CompressedImage (JPEG) instead of Image")
    p.add_argument("--image-topic", default=d.image_topic, help="image topic (/compressed is appended with it)")


def _add_from_bag(sub: argparse._SubParsersAction) -> None:
    from posenet_ros.groundtruth import add_ground_truth_arguments
    from posenet_train.bags import FromBagConfig

    d = FromBagConfig(Path(), Path(), None)
    p = sub.add_parser("from-bag", help="training set from a recording with ground truth")
    p.add_argument("bag", help="rosbag2 folder, bare .db3/.mcap or ROS 1 .bag")
    p.add_argument("--out", required=True, help="folder for images/ and poses.csv")
    p.add_argument("--image-topic", help="image topic (default: the only one)")
    add_ground_truth_arguments(p)
    p.add_argument("--every", type=int, default=d.every, help="keep every Nth frame")
    p.add_argument("--min-translation", type=float, default=d.min_translation, help="metres since the last kept frame")
    p.add_argument("--min-rotation", type=float, default=d.min_rotation_deg, help="degrees since the last kept frame")
    p.add_argument(
        "--blur-threshold", type=float, default=d.blur_threshold, help="min variance of the Laplacian (0: keep all)"
    )
    p.add_argument("--test-fraction", type=float, default=d.test_fraction, help="share of the frames for test")
    p.add_argument("--block-seconds", type=float, default=d.block_seconds, help="split by time blocks this long")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of the training frames held out as val, by time blocks (0: none)",
    )


def _add_label_sfm(sub: argparse._SubParsersAction) -> None:
    from posenet_train.sfm import MATCHERS, SfmConfig

    d = SfmConfig(Path(), Path())
    p = sub.add_parser("label-sfm", help="poses for unlabelled images or a bag by structure from motion (pycolmap)")
    p.add_argument("source", help="folder of images (name order = time order) or a bag")
    p.add_argument("--out", required=True, help="folder for images/, sfm/ and poses.csv")
    p.add_argument("--image-topic", help="image topic when SOURCE is a bag")
    p.add_argument("--every", type=int, default=d.every, help="use every Nth frame")
    p.add_argument("--matcher", choices=MATCHERS, default=d.matcher, help="auto: sequential for video")
    p.add_argument("--camera-model", default=d.camera_model, help="COLMAP camera model")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--scale", type=float, help="metres per SfM unit")
    scale.add_argument("--align-to", help="poses.csv with known poses of the same image names: similarity fit")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction, help="share of the frames for test")
    p.add_argument("--block-frames", type=int, default=d.block_frames, help="split by blocks of consecutive frames")


def _add_map(sub: argparse._SubParsersAction) -> None:
    from posenet_ros.refine import FeatureConfig
    from posenet_train.scene_map import MapConfig

    d, f = MapConfig(), FeatureConfig()
    p = sub.add_parser("map", help="3D map of a data set's training images for refinement (SIFT, known poses)")
    p.add_argument("data", help="canonical data set folder (poses.csv; intrinsics from cameras.json, else scene.json)")
    p.add_argument("--out", required=True, help="map file to write (.npz)")
    p.add_argument("--every", type=int, default=d.every, help="use every n-th training image")
    p.add_argument("--max-images", type=int, default=d.max_images, help="at most this many images (0: all)")
    p.add_argument("--max-size", type=int, default=f.max_size, help="longer image side features are detected at")
    p.add_argument("--max-features", type=int, default=f.max_features, help="SIFT features per image")
    p.add_argument("--pairs", type=int, default=d.pairs_k, help="nearest images matched per image")
    p.add_argument("--scene", default=None, help="scene name (default: scene.json's, else the folder name)")


SUBCOMMANDS = (
    _add_convert,
    _add_synth,
    _add_fit,
    _add_export,
    _add_eval,
    _add_calibrate,
    _add_to_bag,
    _add_from_bag,
    _add_label_sfm,
    _add_map,
)


def build_parser() -> argparse.ArgumentParser:
    parser, sub = build_command_parser("posenet-train", __doc__, __version__)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


# -- checks before any long work -----------------------------------------------------------------


def _check_dataset(path: str, what: str = "data set") -> None:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} {p} not found; give a canonical data set folder (with poses.csv)")
    if p.is_dir() and not (p / "poses.csv").is_file():
        hint = "convert it first: posenet-train convert SRC --format FORMAT --out FOLDER"
        raise UsageError(f"{p} has no poses.csv; {hint}")


def _check_model_out(path: str, option: str) -> None:
    p = Path(path)
    if p.suffix != ".pt":
        raise UsageError(f"{option} {p} must end in .pt (a TorchScript model file)")
    if p.is_dir():
        raise UsageError(f"{option} {p} is a folder; give a file name ending in .pt")
    check_output_folder(p.parent, option)


def _check(args: argparse.Namespace) -> None:
    cmd = args.command
    if cmd == "convert":
        if not Path(args.src).exists():
            raise UsageError(f"{args.src} not found; give the data set folder (or COLMAP images.txt)")
        check_output_folder(Path(args.out), "--out")
        _check_val_fraction(args.val_fraction)
        _check_at_least(args.val_block_frames, 1, "--val-block-frames")
    elif cmd == "synth":
        check_output_folder(Path(args.out), "--out")
    elif cmd == "fit":
        from posenet_train.train import CHECKPOINT_NAME, check_pretrained

        _check_dataset(args.data)
        check_output_folder(Path(args.out), "--out")
        if args.resume and not (Path(args.out) / CHECKPOINT_NAME).is_file():
            raise UsageError(f"--resume: no {CHECKPOINT_NAME} in {args.out}; start the run without --resume")
        if args.export:
            _check_model_out(args.export, "--export")
        check_pretrained(args.pretrained or "")
    elif cmd in ("eval", "calibrate"):
        _check_dataset(args.dataset)
        if cmd == "eval":
            _check_eval_model(Path(args.model))
            if args.out:
                check_output_folder(Path(args.out), "--out")
            if args.ood and not args.uncertainty:
                raise UsageError("--ood only applies with --uncertainty")
            if args.ood:
                _check_dataset(args.ood, "--ood data set")
        else:
            check_model_file(Path(args.model))
            if args.out:
                _check_model_out(args.out, "--out")
            _check_calibration_split(args)
        if cmd == "eval":
            _check_at_least(args.batch_size, 1, "--batch-size")
        if args.samples < 2:
            raise UsageError(f"--samples must be >= 2, got {args.samples}")
        if args.crops is not None and args.crops < 1:
            raise UsageError(f"--crops must be >= 1, got {args.crops}")
    elif cmd == "export":
        path = Path(args.checkpoint)
        if not path.is_file():
            raise UsageError(f"checkpoint not found: {path} (posenet-train fit writes OUT/checkpoint.pt)")
        if torch_file_kind(path) == "torchscript":
            raise UsageError(f"{path} is already an exported model; export takes the checkpoint.pt of a fit run")
        _check_model_out(args.out, "OUT")
    elif cmd == "to-bag":
        from posenet_train.bags import ToBagConfig

        _check_dataset(args.dataset)
        check_new_bag_folder(Path(args.out), "--out")
        # Bounds that keep every stamp of a long recording inside rosbag2's int64 nanoseconds.
        if not 1e-3 <= args.rate <= 1e6:
            raise UsageError(f"--rate must be between 0.001 and 1e6 frames per second, got {args.rate}")
        check_seconds(args.sequence_gap, "--sequence-gap", zero=True)
        _check_topic(args.image_topic, "--image-topic", reserved=("/tf", "/tf_static", ToBagConfig.gt_topic))
    elif cmd == "from-bag":
        check_bag_path(Path(args.bag))
        check_output_folder(Path(args.out), "--out")
        _check_at_least(args.every, 1, "--every")
        _check_split_options(args.test_fraction, args.block_seconds, "--block-seconds")
        check_seconds(args.block_seconds, "--block-seconds")
        _check_val_fraction(args.val_fraction)
        for option, value in (
            ("--min-translation", args.min_translation),
            ("--min-rotation", args.min_rotation),
            ("--blur-threshold", args.blur_threshold),
        ):
            if not 0 <= value < math.inf:
                raise UsageError(f"{option} must be a finite number >= 0 (0: no such filter), got {value}")
        check_seconds(args.gt_max_gap, "--gt-max-gap")
    elif cmd == "label-sfm":
        src = Path(args.source)
        if not src.exists():
            raise UsageError(f"{src} not found; give a folder of images or a bag")
        check_output_folder(Path(args.out), "--out")
        _check_at_least(args.every, 1, "--every")
        _check_split_options(args.test_fraction, args.block_frames, "--block-frames")
        if args.scale is not None and not 0 < args.scale < math.inf:
            raise UsageError(f"--scale must be a finite number of metres per SfM unit > 0, got {args.scale}")
        if args.align_to is not None and not Path(args.align_to).is_file():
            raise UsageError(f"--align-to {args.align_to} not found; give a poses.csv with known poses")


def _check_at_least(value: int, least: int, option: str) -> None:
    if value < least:
        raise UsageError(f"{option} must be >= {least}, got {value}")


def _check_val_fraction(value: float) -> None:
    if not 0 <= value < 1:
        raise UsageError(f"--val-fraction must be >= 0 and < 1 (the share of training frames for val), got {value}")


def _check_calibration_split(args: argparse.Namespace) -> None:
    """calibrate fits on val unless told otherwise; a data set without val frames is refused before
    the model loads, with the way out (fitting on test would tune on the frames the figures are
    then measured on)."""
    from posenet_train.datasets import read_poses_csv, split_counts

    counts = split_counts(read_poses_csv(args.dataset, check_images=False))
    if args.split is None:
        args.split = "val"
        if not counts["val"]:
            raise UsageError(
                f"no 'val' frames in {args.dataset} ({counts['train']} train, {counts['test']} test); "
                "calibrating on test would fit the frames it is then measured on: convert again "
                "(convert, from-bag and synth --val-sequences write val frames), or give --split explicitly"
            )
    elif not counts[args.split]:
        have = ", ".join(f"{n} {s}" for s, n in counts.items())
        raise UsageError(f"no {args.split!r} frames in {args.dataset} ({have}); give --split a split it has")


def _check_split_options(test_fraction: float, block: float, block_option: str) -> None:
    if not 0 < test_fraction < 1:
        raise UsageError(f"--test-fraction must be between 0 and 1 (the share of frames for test), got {test_fraction}")
    if not 0 < block < math.inf:
        raise UsageError(f"{block_option} must be > 0, got {block}")


# A ROS 2 name: tokens of letters, digits and underscores (none starting with a digit), joined by '/'.
TOPIC_NAME = re.compile(r"/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")


def _check_topic(name: str, option: str, reserved: tuple[str, ...] = ()) -> None:
    if not TOPIC_NAME.fullmatch(name):
        raise UsageError(f"{option} {name!r} is not a ROS topic name (such as /camera/image_raw)")
    if name in reserved or "/" + name in reserved:
        raise UsageError(f"{option} {name} is taken by the recording's own {name} messages; pick another topic")


def _check_eval_model(path: Path) -> None:
    """eval takes an exported model or a training checkpoint."""
    if not path.is_file():
        raise UsageError(f"model file not found: {path}")
    if torch_file_kind(path) not in ("torchscript", "checkpoint"):
        raise UsageError(f"{path} is neither an exported model nor a posenet-train checkpoint")


# -- the commands --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    _check(args)
    if args.command == "convert":
        _run_convert(args)
    elif args.command == "synth":
        from dataclasses import replace

        from posenet_train.synth import PRESETS, SynthConfig, render_benchmark, render_dataset

        given = {
            "train_sequences": args.train_sequences,
            "test_sequences": args.test_sequences,
            "val_sequences": args.val_sequences,
            "frames_per_sequence": args.frames,
            "width": args.width,
            "height": args.height,
            "hfov_deg": args.hfov,
            "seed": args.seed,
            "scene_seed": args.scene_seed,
            "heading_spread_deg": args.heading_spread,
        }
        given = {k: v for k, v in given.items() if v is not None}
        if args.only and not args.preset:
            raise UsageError("--only picks folders of a --preset")
        if args.preset:
            if args.seven_scenes or args.ext != "png":
                raise UsageError("--preset writes png images in the canonical layout only; drop --seven-scenes / --ext")
            if args.jobs < 0:
                raise UsageError(f"--jobs must be >= 0 (0: one per CPU), got {args.jobs}")
            bench = replace(PRESETS[args.preset], **given)
            bench.validate()
            written = render_benchmark(bench, Path(args.out), args.jobs, folders=args.only)
            for folder, records in written.items():
                counts = ", ".join(f"{n} {s}" for s in SPLITS if (n := sum(r.split == s for r in records)))
                print(f"wrote {len(records)} frames ({counts}) to {Path(args.out) / folder / 'poses.csv'}")
        else:
            cfg = replace(SynthConfig(val_sequences=1, image_ext=args.ext, seven_scenes=args.seven_scenes), **given)
            cfg.validate()
            records = render_dataset(cfg, Path(args.out))
            counts = ", ".join(f"{sum(r.split == s for r in records)} {s}" for s in SPLITS)
            print(f"wrote {len(records)} frames ({counts}) to {Path(args.out) / 'poses.csv'}")
    elif args.command == "fit":
        return _run_fit(args)
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
            sequence_gap_s=args.sequence_gap,
        )
        print(f"wrote {dataset_to_bag(cfg)} frames to {args.out}")
    elif args.command == "from-bag":
        _run_from_bag(args)
    elif args.command == "label-sfm":
        _run_label_sfm(args)
    elif args.command == "map":
        _run_map(args)
    return 0


def _run_convert(args: argparse.Namespace) -> None:
    from posenet_train.datasets import convert_dataset

    report = convert_dataset(args.src, args.format, args.out, args.val_fraction, args.val_block_frames)
    path = report.path
    for line in report.lines(args.src):
        print(line)
    if args.format == "7scenes":
        dropped = seven_scenes_images_without_pose(Path(args.src))
        if dropped:
            print(
                f"dropped {len(dropped)} images without a pose.txt (first: {dropped[0]}); "
                "7-Scenes needs frame-XXXXXX.pose.txt next to every frame-XXXXXX.color image"
            )
    for split, n in report.kept.items():
        if n == 0 and split != "val":
            print(f"warning: no {split} frames (fit needs train frames, eval test frames)")
    if report.kept["val"] == 0 and args.val_fraction > 0:
        print(
            "warning: no val frames (each training sequence needs "
            f"{max(2, round(1 / args.val_fraction)) * VAL_MIN_BLOCK_FRAMES} training frames or more for its val "
            "blocks); calibrate needs --split then"
        )
    print(f"wrote {path}")


def seven_scenes_images_without_pose(root: Path) -> list[str]:
    """Colour images of the listed 7-Scenes sequences that have no pose.txt (the reader skips them)."""
    import re

    missing = []
    for fname in ("TrainSplit.txt", "TestSplit.txt"):
        split_file = root / fname
        if not split_file.is_file():
            continue
        for line in split_file.read_text().splitlines():
            m = re.fullmatch(r"\s*sequence(\d+)\s*", line)
            seq = root / f"seq-{int(m.group(1)):02d}" if m else None
            if seq is None or not seq.is_dir():
                continue
            for image in sorted(seq.glob("frame-*.color.*")):
                stem = image.name.split(".color.", 1)[0]
                if not (seq / f"{stem}.pose.txt").is_file():
                    missing.append(str(image.relative_to(root)))
    return missing


def _run_fit(args: argparse.Namespace) -> int:
    from posenet_train.export_model import export_checkpoint
    from posenet_train.train import FitConfig, fit

    values = {f.name: getattr(args, f.name) for f in fields(FitConfig) if f.name not in ("data", "out")}
    values["pretrained"] = values["pretrained"] or ""
    values["scene_name"] = values["scene_name"] or ""
    cfg = FitConfig(data=args.data, out=args.out, **values)
    cfg.validate()
    result = fit(cfg, resume=args.resume)
    state = "interrupted" if result.interrupted else "finished"
    print(f"{state} at step {result.step} after {result.seconds:.0f} s; checkpoint {result.checkpoint}")
    if result.metrics:
        print(json.dumps(result.metrics))
    if args.export and not result.interrupted:
        print(f"exported {export_checkpoint(result.checkpoint, args.export, args.mc_dropout)}")
    return 130 if result.interrupted else 0


def default_calibrated_path(model: Path) -> Path:
    """Under out/, never next to the model: a bundled model sits in the source tree."""
    return Path("out") / "calibrated" / f"{model.stem}_calibrated.pt"


def _run_calibrate(args: argparse.Namespace) -> None:
    from posenet_train.uncertainty import calibrate, format_metrics

    out = Path(args.out) if args.out else default_calibrated_path(Path(args.model))
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
        args.val_fraction,
    )
    records, stats = bag_to_dataset(cfg)
    counts = {s: sum(r.split == s for r in records) for s in SPLITS}
    print(f"{stats.line()}")
    if stats.beside_val:
        print(
            f"dropped {stats.beside_val} training frames beside the val blocks (a gap of {VAL_GAP_FRAMES} "
            "frames each side, so no val frame neighbours a training frame)"
        )
    kept = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"wrote {len(records)} frames ({kept}) to {Path(args.out) / 'poses.csv'}")
    if counts["test"] == 0:
        print("warning: no test frames (too few frames kept for the split)")
    if counts["val"] == 0 and args.val_fraction > 0:
        print("warning: no val frames (too few training frames for val blocks); calibrate needs --split then")


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
    print(result.intrinsics)
    print(f"wrote {Path(args.out) / 'poses.csv'}")


def _run_map(args: argparse.Namespace) -> None:
    from posenet_ros.refine import FeatureConfig
    from posenet_train.scene_map import MapConfig, build_map

    _check_dataset(args.data)
    cfg = MapConfig(
        features=FeatureConfig(max_size=args.max_size, max_features=args.max_features),
        every=args.every,
        max_images=args.max_images,
        pairs_k=args.pairs,
    )
    m = build_map(args.data, args.out, cfg, scene=args.scene, progress=True)
    b = m.build
    size_mb = Path(args.out).stat().st_size / 2**20
    print(f"{b['images']} images, {b['points']} points, {size_mb:.1f} MB in {b['seconds']['total']:.0f} s")
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    from posenet_ros.bagio import BagError
    from posenet_ros.engine import EngineError
    from posenet_train.sfm import SfmError

    user_errors = (DatasetError, BagError, SfmError, EngineError, ValueError, OSError, FloatingPointError)
    return run_command_line(build_parser(), argv, run, user_errors)


if __name__ == "__main__":
    sys.exit(main())
