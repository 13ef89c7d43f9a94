"""`posenet-ros` command line: tools that need no ROS install (benchmark, model inspection)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from posenet_ros import __version__


def _cmd_bench(args: argparse.Namespace) -> int:
    from posenet_ros.bench import main_bench

    return main_bench(args.model, args.iterations, args.threads, args.json)


def _cmd_info(args: argparse.Namespace) -> int:
    from posenet_ros.engine import load_model

    _, contract = load_model(args.model)
    print(contract.to_json())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posenet-ros", description=__doc__)
    parser.add_argument("--version", action="version", version=f"posenet_ros {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="time the engine against a public-port baseline in one run")
    bench.add_argument("--model", type=Path, help="TorchScript model (default: a freshly exported PoseNet)")
    bench.add_argument("--iterations", type=int, default=60, help="timed frames per path (default 60)")
    bench.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both paths (default 2)")
    bench.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    bench.set_defaults(func=_cmd_bench)

    info = sub.add_parser("info", help="print the contract embedded in a model file")
    info.add_argument("model", type=Path)
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    from posenet_ros.engine import EngineError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EngineError as exc:
        print(f"posenet-ros: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
