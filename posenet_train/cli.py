"""``posenet-train``: convert | synth | fit | eval | export. Errors are one line and exit 2."""

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


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="checkpoint -> TorchScript file with its contract")
    p.add_argument("checkpoint")
    p.add_argument("out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posenet-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_convert, _add_synth, _add_fit, _add_eval, _add_export):
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
            print(f"exported {export_checkpoint(result.checkpoint, args.export)}")
        return 130 if result.interrupted else 0
    elif args.command == "eval":
        from posenet_train.evaluate import main_eval

        main_eval(args)
    elif args.command == "export":
        from posenet_train.export_model import export_checkpoint

        print(f"wrote {export_checkpoint(args.checkpoint, args.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (DatasetError, ValueError, FileNotFoundError, FloatingPointError) as exc:
        print(f"posenet-train {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
