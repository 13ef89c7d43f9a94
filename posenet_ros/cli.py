"""`posenet-ros` command line: tools that need no ROS install (benchmark, model inspection)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from posenet_ros import __version__
from posenet_ros.groundtruth import add_ground_truth_arguments
from posenet_ros.relocalizer import SPECS

# Node parameters that mean the same offline; replay takes them as --name-with-dashes.
REPLAY_NODE_PARAMETERS = (
    "map_frame",
    "camera_frame",
    "latency_budget_ms",
    "crops",
    "max_crops",
    "max_frame_age_ms",
    "uncertainty",
    "mc_samples",
    "max_position_std",
    "position_variance",
    "orientation_variance",
    "min_variance",
)


BENCH_CASES = ("e2e", "preprocess", "crops", "replay", "memory", "paced", "gpu")


class UsageError(ValueError):
    """Options that contradict each other."""


def _cmd_bench(args: argparse.Namespace) -> int:
    from posenet_ros.bench import PATH_BACKENDS, BenchConfig, main_bench

    cases = tuple(c.strip() for c in args.cases.split(",") if c.strip())
    unknown = set(cases) - set(BENCH_CASES)
    if unknown or not cases:
        raise UsageError(f"unknown bench case(s) {sorted(unknown)}; use a comma list of {', '.join(BENCH_CASES)}")
    try:
        marks = tuple(int(v) for v in args.memory_frames.split(","))
    except ValueError:
        raise UsageError(f"--memory-frames must be a comma list of integers, got {args.memory_frames!r}") from None
    if min(args.iterations, args.threads, *marks, args.replay_frames, args.paced_frames) < 1:
        raise UsageError("--iterations, --threads, --memory-frames, --replay-frames and --paced-frames must be >= 1")
    backends = tuple(b.strip() for b in args.backends.split(","))
    if not backends or set(backends) - set(PATH_BACKENDS):
        raise UsageError(f"--backends must be a comma list of {', '.join(PATH_BACKENDS)}, got {args.backends!r}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.gpu_device):
        raise UsageError(f"--gpu-device must be cuda, cuda:N or cpu, got {args.gpu_device!r}")
    cfg = BenchConfig(
        args.model,
        args.iterations,
        args.threads,
        backends,
        marks,
        args.replay_frames,
        paced_frames=args.paced_frames,
        gpu_device=args.gpu_device,
    )
    return main_bench(cfg, cases, args.json)


def _cmd_replay(args: argparse.Namespace) -> int:
    from posenet_ros.groundtruth import ground_truth_from_arguments
    from posenet_ros.replay import ReplayConfig, format_summary, replay, write_report

    try:
        truth = ground_truth_from_arguments(args, required=False)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    params = {name: getattr(args, name) for name in REPLAY_NODE_PARAMETERS if getattr(args, name) is not None}
    cfg = ReplayConfig(
        bag=args.bag,
        model=args.model,
        image_topic=args.image_topic,
        ground_truth=truth,
        out_bag=args.out,
        ros_distro=args.ros_distro,
        report=args.report,
        realtime=args.realtime,
        rate=args.rate,
        device=args.device,
        threads=args.threads,
        node_parameters=params,
        progress=not args.no_progress,
    )
    result = replay(cfg)
    for line in format_summary(result.summary):
        print(line)
    if args.out:
        print(f"poses written to {args.out}")
    if args.report:
        print(f"report: {write_report(result, args.report)}")
    if result.read_error:
        print(f"posenet-ros: error: {result.read_error}", file=sys.stderr)
        return 1
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from posenet_ros.onnx_export import calibration_frames, export_onnx, quantize_onnx

    if args.int8 != (args.calibration is not None):
        raise UsageError("--int8 and --calibration go together (int8 needs frames to calibrate on)")
    try:
        if args.int8:
            frames = calibration_frames(args.calibration, args.calibration_frames, args.image_topic)
            out = quantize_onnx(args.model, args.out, frames)
            print(f"wrote {out} (int8, calibrated on {len(frames)} frames from {args.calibration})")
        else:
            print(f"wrote {export_onnx(args.model, args.out)}")
    except ImportError as exc:
        raise UsageError(f"export-onnx needs onnx and onnxruntime (pip install 'posenet_ros[onnx]'): {exc}") from None
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from posenet_ros.engine import ONNX_SUFFIX, load_model, load_onnx_session

    if args.model.suffix == ONNX_SUFFIX:
        from posenet_ros.onnx_export import QUANTIZATION_KEY

        session, contract = load_onnx_session(args.model, threads=1)
        print(contract.to_json())
        quantization = session.get_modelmeta().custom_metadata_map.get(QUANTIZATION_KEY)
        print(f"quantization: {quantization or 'none (float32)'}")
        return 0
    _, contract = load_model(args.model)
    print(contract.to_json())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posenet-ros", description=__doc__)
    parser.add_argument("--version", action="version", version=f"posenet_ros {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="the benchmark suite, every figure against a baseline of the same run")
    bench.add_argument("--model", type=Path, help="TorchScript model (default: a fresh PoseNet at 224x224)")
    bench.add_argument("--iterations", type=int, default=60, help="timed frames per path (default 60)")
    bench.add_argument("--threads", type=int, default=2, help="intra-op threads for every path (default 2)")
    bench.add_argument("--cases", default=",".join(BENCH_CASES), help=f"comma list of {', '.join(BENCH_CASES)}")
    bench.add_argument(
        "--backends", default="torchscript,onnxruntime,onnxruntime-int8", help="engine paths to time (comma list)"
    )
    bench.add_argument("--memory-frames", default="1000,10000", help="frame counts at which RSS is read")
    bench.add_argument("--replay-frames", type=int, default=100, help="frames in the generated replay bag")
    bench.add_argument("--paced-frames", type=int, default=50, help="frames per path at 10 Hz (default 50)")
    bench.add_argument(
        "--gpu-device", default="cuda", help="torch device of the gpu case (default cuda; cpu checks the case itself)"
    )
    bench.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    bench.set_defaults(func=_cmd_bench)

    rp = sub.add_parser("replay", help="run the node's per-frame logic on a recorded bag, with a report")
    rp.add_argument("bag", type=Path, help="rosbag2 folder (sqlite3 or MCAP), bare .db3/.mcap file, or ROS 1 .bag")
    rp.add_argument("--model", type=Path, required=True, help="exported TorchScript model")
    rp.add_argument("--image-topic", help="image topic (default: the only Image/CompressedImage topic)")
    add_ground_truth_arguments(rp)
    rp.add_argument("--out", type=Path, help="write poses and /tf to this new rosbag2 (input's storage)")
    rp.add_argument("--ros-distro", choices=("humble", "jazzy", "kilted"), default="jazzy", help="output bag format")
    rp.add_argument("--report", type=Path, help="folder for summary.json, frames.csv, plots and index.html")
    rp.add_argument("--realtime", action="store_true", help="feed frames at the recorded rate, as the node sees them")
    rp.add_argument("--rate", type=float, default=1.0, help="playback rate multiplier with --realtime (1.0)")
    rp.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    rp.add_argument("--threads", type=int, help="CPU threads, inference and preprocessing (default: torch's)")
    for name in REPLAY_NODE_PARAMETERS:
        spec = SPECS[name]
        kind = type(spec.default)
        rp.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=f"node parameter: {spec.description}")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.set_defaults(func=_cmd_replay)

    onnx = sub.add_parser("export-onnx", help="convert a TorchScript model to ONNX for the onnxruntime backend")
    onnx.add_argument("model", type=Path, help="TorchScript .pt with its contract")
    onnx.add_argument("out", type=Path, help="output .onnx (the contract goes into its metadata)")
    onnx.add_argument("--int8", action="store_true", help="quantize to int8 (1.5-1.7x faster on a CPU, less accurate)")
    onnx.add_argument("--calibration", type=Path, help="int8: folder of images or a bag the robot recorded")
    onnx.add_argument("--calibration-frames", type=int, default=64, help="int8: frames spread over it (64)")
    onnx.add_argument("--image-topic", help="int8 from a bag: image topic (default: the only one)")
    onnx.set_defaults(func=_cmd_export_onnx)

    info = sub.add_parser("info", help="print the contract embedded in a model file")
    info.add_argument("model", type=Path)
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    from posenet_ros.bagio import BagError
    from posenet_ros.engine import EngineError
    from posenet_ros.replay import ReplayError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (EngineError, BagError, ReplayError, UsageError, OSError) as exc:
        print(f"posenet-ros: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
