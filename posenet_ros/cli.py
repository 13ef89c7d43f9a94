"""`posenet-ros`: the tools around the node (only `live` needs a ROS 2 installation).

  replay       run the node's per-frame logic on a recorded bag: poses, accuracy, latency, a report
  live         play a recording over ROS 2 into the node (or one it launches) and score its poses
  export-onnx  convert an exported TorchScript model to ONNX (float32 or calibrated int8)
  info         what a model file holds: scene, input, output, uncertainty, training (--json: all of it)
  bench        the benchmark suite, every figure against a baseline of the same run

Mistakes are one line saying what is wrong and what to do, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

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
from posenet_ros.groundtruth import add_ground_truth_arguments
from posenet_ros.relocalizer.params import SPECS

# Node parameters that mean the same offline; replay takes them as --name-with-dashes.
REPLAY_NODE_PARAMETERS = (
    "precision",
    "refine_rate_hz",
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
    if args.model is not None:
        check_model_file(args.model)
    if args.json is not None and args.json.is_dir():
        raise UsageError(f"--json {args.json} is a folder; give a file name such as {args.json / 'bench.json'}")
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

    # Everything the command is given is checked before the model loads or a frame is read.
    try:
        truth = ground_truth_from_arguments(args, required=False)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_seconds(args.gt_max_gap, "--gt-max-gap")
    if args.rate is not None and not args.realtime:
        raise UsageError("--rate only applies with --realtime (without it frames are processed as fast as possible)")
    check_bag_path(args.bag)
    check_model_file(args.model)
    if args.out is not None:
        check_new_bag_folder(args.out, "--out")
    if args.report is not None:
        check_output_folder(args.report, "--report")
    if args.map is not None and not args.map.is_file():
        raise UsageError(f"--map {args.map}: no such map file (build one with posenet-train map DATASET --out FILE)")
    intrinsics = None
    if args.intrinsics is not None:
        if args.map is None:
            raise UsageError("--intrinsics are refinement's camera and need --map")
        intrinsics = _parse_intrinsics(args.intrinsics)
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
        rate=1.0 if args.rate is None else args.rate,
        device=args.device,
        threads=args.threads,
        node_parameters=params,
        progress=not args.no_progress,
        map_path=args.map,
        intrinsics=intrinsics,
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


def _parse_intrinsics(text: str) -> tuple[float, ...]:
    """--intrinsics fx,fy,cx,cy,width,height[,k1,k2,p1,p2[,k3]]: positive focal lengths, whole
    positive sizes, then OpenCV's distortion coefficients where the lens has them."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if not 6 <= len(values) <= 11 or not all(math.isfinite(v) for v in values):
        raise UsageError(
            f"--intrinsics must be fx,fy,cx,cy,width,height and up to five distortion coefficients "
            f"k1,k2,p1,p2,k3 (6 to 11 numbers), got {text!r}"
        )
    fx, fy, cx, cy, w, h, *distortion = values
    if fx <= 0 or fy <= 0 or w < 1 or h < 1 or w != int(w) or h != int(h):
        raise UsageError(f"--intrinsics needs fx, fy > 0 and a whole width and height >= 1, got {text!r}")
    return (fx, fy, cx, cy, int(w), int(h), *distortion)


def _cmd_live(args: argparse.Namespace) -> int:
    from posenet_ros.groundtruth import ground_truth_from_arguments
    from posenet_ros.replay import format_summary, write_report

    try:
        truth = ground_truth_from_arguments(args, required=False)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not args.rate > 0:
        raise UsageError(f"--rate must be > 0, got {args.rate:g}")
    if args.launch_arg and not args.launch:
        raise UsageError("--launch-arg only applies with --launch")
    for arg in args.launch_arg:
        if ":=" not in arg:
            raise UsageError(f"--launch-arg {arg!r}: give name:=value, as ros2 launch takes it")
    check_bag_path(args.bag)
    check_model_file(args.model)
    if args.report is not None:
        check_output_folder(args.report, "--report")
    from posenet_ros.live import LiveConfig, live, require_ros

    require_ros()
    cfg = LiveConfig(
        bag=args.bag,
        model=args.model,
        image_topic=args.image_topic,
        ground_truth=truth,
        launch=args.launch,
        launch_args=tuple(args.launch_arg),
        namespace=args.namespace,
        rate=args.rate,
        clock=not args.no_clock,
        startup_timeout_s=args.startup_timeout,
        log_path=args.node_log,
    )
    result = live(cfg)
    for line in format_summary(result.summary):
        print(line)
    if args.report:
        print(f"report: {write_report(result, args.report)}")
    if result.node_exit_status not in (None, 0):
        print(f"posenet-ros: error: the node exited with status {result.node_exit_status}", file=sys.stderr)
        return 1
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from posenet_ros.engine import ONNX_SUFFIX
    from posenet_ros.onnx_export import calibration_frames, export_onnx, quantize_onnx

    if args.int8 != (args.calibration is not None):
        raise UsageError("--int8 and --calibration go together (int8 needs frames to calibrate on)")
    check_model_file(args.model)
    if args.model.suffix.lower() == ONNX_SUFFIX:
        raise UsageError(f"{args.model} is already ONNX; export-onnx converts a TorchScript .pt model")
    if args.out.suffix.lower() != ONNX_SUFFIX:
        # The engine picks its backend by the file name: an ONNX file named .pt would not load.
        raise UsageError(f"output {args.out} must end in .onnx (the engine picks the backend by the suffix)")
    if args.out.is_dir():
        raise UsageError(f"output {args.out} is a folder; give a file name ending in .onnx")
    if args.calibration is not None and not args.calibration.exists():
        raise UsageError(f"calibration source not found: {args.calibration}; give a folder of images or a bag")
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


def _model_info(path: Path) -> tuple[Any, dict[str, Any] | None]:
    """The contract and, for an int8 ONNX file, how it was quantized (None: float32 weights)."""
    from posenet_ros.engine import ONNX_SUFFIX, load_model, load_onnx_session

    if path.suffix.lower() == ONNX_SUFFIX:
        from posenet_ros.onnx_export import QUANTIZATION_KEY

        session, contract = load_onnx_session(path, threads=1)
        text = session.get_modelmeta().custom_metadata_map.get(QUANTIZATION_KEY)
        try:
            quantization = json.loads(text) if text else None
        except json.JSONDecodeError:
            quantization = {"description": text}
        return contract, quantization
    _, contract = load_model(path)
    return contract, None


def describe_quantization(q: dict[str, Any] | None) -> str:
    if q is None:
        return "float32"
    if set(q) == {"description"}:
        return str(q["description"])
    return (
        f"int8 ({q.get('format', '?')}: weights {q.get('weights', '?')}, activations {q.get('activations', '?')}, "
        f"{q.get('method', '?')} calibration on {q.get('frames', '?')} frames)"
    )


def _numbers(values: Any, digits: int = 2) -> str:
    return " ".join(f"{float(v):.{digits}f}" for v in values)


def info_lines(path: Path, contract: Any, quantization: dict[str, Any] | None) -> list[str]:
    """A human-readable summary of a model's contract."""
    pre, scene, out, train = contract.preprocessing, contract.scene, contract.output, contract.training
    kind = "ONNX" if path.suffix.lower() == ".onnx" else "TorchScript"
    lines = [
        f"{path}: {kind} PoseNet for scene {scene.name!r}",
        f"  scene extent   {' x '.join(f'{v:.2f}' for v in scene.extent)} m around {_numbers(out.position_offset)}",
        f"  input          {pre.input_width}x{pre.input_height} crop of the image resized to shortest side "
        f"{pre.resize_shortest_side} ({pre.interpolation}, {pre.channel_order}, mean {_numbers(pre.mean, 3)}, "
        f"std {_numbers(pre.std, 3)})",
        f"  output         {out.layout}, {contract.camera_convention}",
        f"  weights        {describe_quantization(quantization)}",
        f"  uncertainty    modes {', '.join(contract.uncertainty_modes)}; calibrated: "
        + (", ".join(sorted(contract.calibration)) or "none"),
    ]
    cam = contract.camera
    lines.append(
        f"  camera         {cam.width}x{cam.height}, fx {cam.fx:.1f} fy {cam.fy:.1f}, cx {cam.cx:.1f} cy {cam.cy:.1f}"
        f"{', distortion ' + _numbers(cam.distortion, 4) if cam.distortion else ''}; field of view "
        f"{cam.hfov_deg:.1f} x {cam.vfov_deg:.1f} deg"
        if cam is not None
        else "  camera         not recorded (the node checks no field of view)"
    )
    data = train.get("data") if isinstance(train.get("data"), dict) else None
    if data:
        lines.append(
            f"  trained on     {data.get('path', '?')} ({data.get('train_images', '?')} train, "
            f"{data.get('test_images', '?')} test images)"
        )
    elif "dataset" in train:
        lines.append(f"  trained on     {train['dataset']}")
    if "steps" in train:
        lines.append(
            f"  training       {train['steps']} steps, {train.get('optimizer', '?')}, lr {train.get('lr', '?')}, "
            f"pretrained {train.get('pretrained', '?')}"
        )
    val = train.get("validation")
    if isinstance(val, dict) and "median_position_m" in val:
        lines.append(
            f"  validation     median {val['median_position_m']:.3f} m, "
            f"{val.get('median_rotation_deg', float('nan')):.2f} deg"
        )
    lines.append(f"  code version   {contract.code_version or 'unknown'}; the whole contract: posenet-ros info --json")
    return lines


def _cmd_info(args: argparse.Namespace) -> int:
    check_model_file(args.model)
    contract, quantization = _model_info(args.model)
    if args.json:
        print(json.dumps({**contract.to_dict(), "quantization": quantization}, indent=2, sort_keys=True))
    else:
        print("\n".join(info_lines(args.model, contract, quantization)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, sub = build_command_parser("posenet-ros", __doc__, __version__)

    rp = sub.add_parser(
        "replay", help="run the node's per-frame logic on a recorded bag, with a report", description=_cmd_replay_doc()
    )
    rp.add_argument("bag", type=Path, help="rosbag2 folder (sqlite3 or MCAP), bare .db3/.mcap file, or ROS 1 .bag")
    rp.add_argument("--model", type=Path, required=True, help="exported model: TorchScript .pt or ONNX .onnx")
    rp.add_argument("--image-topic", help="image topic (default: the only Image/CompressedImage topic)")
    add_ground_truth_arguments(rp)
    rp.add_argument("--out", type=Path, help="write poses and /tf to this new rosbag2 (input's storage)")
    rp.add_argument("--ros-distro", choices=("humble", "jazzy", "kilted"), default="jazzy", help="output bag format")
    rp.add_argument("--report", type=Path, help="folder for index.html, summary.json, frames.csv and plots")
    rp.add_argument("--realtime", action="store_true", help="feed frames at the recorded rate, as the node sees them")
    rp.add_argument("--rate", type=float, help="with --realtime: playback rate multiplier (default: 1.0)")
    rp.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    rp.add_argument("--threads", type=int, help="CPU threads, inference and preprocessing (default: torch's)")
    for name in REPLAY_NODE_PARAMETERS:
        spec = SPECS[name]
        kind = type(spec.default)
        rp.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            help=f"node parameter: {spec.description} (default: {spec.default!r})",
        )
    rp.add_argument(
        "--map", type=Path, help="refine each pose against this 3D map (posenet-train map; docs/refinement.md)"
    )
    rp.add_argument(
        "--intrinsics",
        metavar="FX,FY,CX,CY,W,H[,K1,K2,P1,P2[,K3]]",
        help="with --map: the bag camera's intrinsics in pixels and OpenCV distortion coefficients, e.g. where the "
        "recording has no CameraInfo (default: the recording's CameraInfo, else the map's camera)",
    )
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.set_defaults(func=_cmd_replay)

    lv = sub.add_parser(
        "live",
        help="play a recording over ROS 2 into the node (or one it launches) and score its poses",
        description=(
            "Publish a recording's camera topic (and /tf_static) at its recorded rate with /clock, into the "
            "running node or one started with --launch (ros2 launch posenet_ros relocalize.launch.py, "
            "use_sim_time), receive its poses and print/report them as replay does. Needs ROS 2 sourced."
        ),
    )
    lv.add_argument("bag", type=Path, help="rosbag2 folder (sqlite3 or MCAP), bare .db3/.mcap file, or ROS 1 .bag")
    lv.add_argument("--model", type=Path, required=True, help="the node's model file (launched with --launch)")
    lv.add_argument("--image-topic", help="image topic (default: the only Image/CompressedImage topic)")
    add_ground_truth_arguments(lv)
    lv.add_argument("--report", type=Path, help="folder for index.html, summary.json, frames.csv and plots")
    lv.add_argument("--launch", action="store_true", help="start the node with ros2 launch and stop it at the end")
    lv.add_argument(
        "--launch-arg", action="append", default=[], metavar="NAME:=VALUE", help="with --launch: a launch argument"
    )
    lv.add_argument("--namespace", default="", help="the node's namespace (default: none)")
    lv.add_argument("--rate", type=float, default=1.0, help="playback rate multiplier (default: 1.0)")
    lv.add_argument("--no-clock", action="store_true", help="publish no /clock (the node then runs on wall time)")
    lv.add_argument("--startup-timeout", type=float, default=90.0, help="seconds to wait for the node (default: 90)")
    lv.add_argument("--node-log", type=Path, help="with --launch: file for the node's output (default: a temp file)")
    lv.set_defaults(func=_cmd_live)

    onnx = sub.add_parser("export-onnx", help="convert a TorchScript model to ONNX for the onnxruntime backend")
    onnx.add_argument("model", type=Path, help="exported TorchScript .pt with its contract")
    onnx.add_argument("out", type=Path, help="output file ending in .onnx (the contract goes into its metadata)")
    onnx.add_argument("--int8", action="store_true", help="quantize to int8 (1.5-1.7x faster on a CPU, less accurate)")
    onnx.add_argument("--calibration", type=Path, help="with --int8: folder of images or a bag the robot recorded")
    onnx.add_argument("--calibration-frames", type=int, default=64, help="with --int8: frames spread over it")
    onnx.add_argument("--image-topic", help="int8 from a bag: image topic (default: the only one)")
    onnx.set_defaults(func=_cmd_export_onnx)

    info = sub.add_parser("info", help="what a model file holds: scene, input, output, uncertainty, training")
    info.add_argument("model", type=Path, help="exported model: TorchScript .pt or ONNX .onnx")
    info.add_argument("--json", action="store_true", help="print the whole contract as JSON (and the quantization)")
    info.set_defaults(func=_cmd_info)

    bench = sub.add_parser("bench", help="the benchmark suite, every figure against a baseline of the same run")
    bench.add_argument("--model", type=Path, help="TorchScript model (default: a fresh PoseNet at 224x224)")
    bench.add_argument("--iterations", type=int, default=60, help="timed frames per path")
    bench.add_argument("--threads", type=int, default=2, help="intra-op threads for every path")
    bench.add_argument("--cases", default=",".join(BENCH_CASES), help=f"comma list of {', '.join(BENCH_CASES)}")
    bench.add_argument(
        "--backends", default="torchscript,onnxruntime,onnxruntime-int8", help="engine paths to time (comma list)"
    )
    bench.add_argument("--memory-frames", default="1000,10000", help="frame counts at which RSS is read")
    bench.add_argument("--replay-frames", type=int, default=100, help="frames in the generated replay bag")
    bench.add_argument("--paced-frames", type=int, default=50, help="frames per path at 10 Hz")
    bench.add_argument("--gpu-device", default="cuda", help="torch device of the gpu case (cpu checks the case itself)")
    bench.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    bench.set_defaults(func=_cmd_bench)
    return parser


def _cmd_replay_doc() -> str:
    return (
        "Run the node's per-frame logic on a recorded bag. Prints accuracy (with --gt-topic or --gt-frames) "
        "and latency; --out writes the poses as a new bag, --report a folder with index.html. --map refines "
        "each pose against a 3D map and reports the network's and the refined errors side by side."
    )


def main(argv: list[str] | None = None) -> int:
    from posenet_ros.bagio import BagError
    from posenet_ros.engine import EngineError
    from posenet_ros.live import LiveError
    from posenet_ros.replay import ReplayError

    # "posenet-ros: error: ..." without the command: scripts (and the live tests) match that prefix.
    return run_command_line(
        build_parser(),
        argv,
        lambda args: args.func(args),
        (EngineError, BagError, ReplayError, LiveError, OSError),
        command_in_errors=False,
    )


if __name__ == "__main__":
    sys.exit(main())
