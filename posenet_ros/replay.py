"""``posenet-ros replay BAG --model MODEL.pt``: the node's per-frame logic on a recorded bag, offline.

Every frame goes through ``relocalizer.frames.localize_frame``, the function the node calls, so a replay
shows what the node would publish. Two modes:
- as fast as possible: each frame is processed the moment it is read (the node's clock reads the
  frame's recording time, so nothing is stale and nothing is skipped);
- ``--realtime``: frames are fed at the recorded rate (times ``--rate``) into the node's newest-frame
  slot while a worker thread localizes, so frames the node would have skipped (replaced while the
  network ran) or dropped (older than ``max_frame_age_ms`` by the bag clock) are counted as such.
Outputs: an optional rosbag2 with the poses and /tf, a report folder, and a printed summary.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posenet_ros.bagio import (
    BagMessage,
    BagWriter,
    TopicQos,
    open_bag,
    pick_image_topic,
    read_messages,
    storage_of,
    warn_stderr,
)
from posenet_ros.engine import Engine
from posenet_ros.errors import first_line
from posenet_ros.geometry import Pose, position_error, rotation_error_deg
from posenet_ros.groundtruth import GroundTruth, GroundTruthSource
from posenet_ros.image_codec import decode
from posenet_ros.relocalizer.diagnostics import NodeStats
from posenet_ros.relocalizer.frames import (
    PUBLISHED,
    REJECTED,
    Frame,
    FrameOutcome,
    LatestFrameSlot,
    localize_frame,
    stamp_to_ns,
)
from posenet_ros.relocalizer.messages import covariance_list
from posenet_ros.relocalizer.params import NodeSettings
from posenet_ros.report import (
    THRESHOLDS,
    SceneBox,
    Table,
    error_stats,
    plausibility_warnings,
    plot_error_cdf,
    plot_error_over_time,
    plot_latency_histogram,
    plot_trajectory_top,
    threshold_key,
    threshold_label,
    time_segments,
    write_index_html,
)

NODE_NAMESPACE = "/posenet_relocalizer"
SKIPPED = "skipped"
SKIPPED_REASON = "replaced by a newer frame while the network ran (the node processes only the newest)"


class ReplayError(RuntimeError):
    """A replay option is unusable; the message is one line."""


@dataclass(frozen=True)
class ReplayConfig:
    bag: Path
    model: Path
    image_topic: str | None = None
    ground_truth: GroundTruthSource | None = None
    out_bag: Path | None = None
    ros_distro: str = "jazzy"
    report: Path | None = None
    realtime: bool = False
    rate: float = 1.0
    device: str = "auto"
    threads: int | None = None
    # Node parameters the replay honours (same names, ranges and checks as the node's).
    node_parameters: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


@dataclass
class FrameRecord:
    """One image message and what became of it."""

    log_time_ns: int
    stamp_ns: int
    status: str
    reason: str = ""
    pose: Pose | None = None
    covariance: np.ndarray | None = None
    crops: int = 0
    latency_ms: float = float("nan")
    position_std: float | None = None  # of the published covariance (m)
    uncertainty_score: float | None = None
    truth: Pose | None = None


@dataclass
class ReplayResult:
    records: list[FrameRecord]
    summary: dict[str, Any]
    read_error: str | None = None


class _Run:
    """State of one replay: the engine, the node's settings and counters, the outputs."""

    def __init__(self, cfg: ReplayConfig, reader: Any) -> None:
        self.cfg = cfg
        self.settings = NodeSettings()
        reason = self.settings.update(cfg.node_parameters)
        if reason:
            raise ReplayError(f"bad parameter: {reason}")
        if not cfg.rate > 0:
            raise ReplayError(f"--rate must be > 0, got {cfg.rate}")
        self.topic = pick_image_topic(reader, cfg.image_topic)
        self.frames_total = sum(c.msgcount for c in reader.connections if c.topic == self.topic)
        self.truth = GroundTruth(reader, cfg.ground_truth) if cfg.ground_truth else None
        self.engine = Engine(cfg.model, self.settings.engine_config(device=cfg.device, threads=cfg.threads))
        self.stats = NodeStats(window=1 << 30)
        self.records: list[FrameRecord] = []
        self.skipped_records: dict[int, FrameRecord] = {}  # realtime: read, replaced before inference
        self.writer = self._open_writer() if cfg.out_bag else None

    def _open_writer(self) -> BagWriter:
        writer = BagWriter(self.cfg.out_bag, storage_of(self.cfg.bag), self.cfg.ros_distro)
        writer.add_topic(f"{NODE_NAMESPACE}/pose", "geometry_msgs/msg/PoseStamped")
        writer.add_topic(f"{NODE_NAMESPACE}/pose_with_covariance", "geometry_msgs/msg/PoseWithCovarianceStamped")
        writer.add_topic("/tf", "tf2_msgs/msg/TFMessage", TopicQos(depth=100))
        return writer

    def handle(self, msg: BagMessage, now_ns: int) -> FrameRecord:
        """Localize one image message (the node's logic), record it and write its outputs."""
        if msg.msg is None:  # undecodable CDR: counted like any other unusable frame
            self.stats.count(REJECTED)
            rec = FrameRecord(msg.log_time_ns, msg.log_time_ns, REJECTED, msg.error)
            self.records.append(rec)
            return rec
        frame = Frame(msg.msg, stamp_to_ns(msg.msg.header.stamp), msg.msg.header.frame_id)
        outcome = localize_frame(self.engine, self.settings, decode, frame, now_ns, self.stats)
        rec = self._record(msg, frame, outcome)
        self.records.append(rec)
        if outcome.status == PUBLISHED and self.writer is not None:
            self._write(msg.log_time_ns, frame, outcome)
        return rec

    def all_records(self) -> list[FrameRecord]:
        """Every frame read, in reading order: the ones localized and the ones skipped."""
        if not self.skipped_records:
            return self.records
        return sorted([*self.records, *self.skipped_records.values()], key=lambda r: r.log_time_ns)

    def _record(self, msg: BagMessage, frame: Frame, outcome: FrameOutcome) -> FrameRecord:
        rec = FrameRecord(msg.log_time_ns, frame.stamp_ns, outcome.status, outcome.reason)
        if outcome.loc is not None:
            rec.pose, rec.covariance = outcome.loc.pose, outcome.covariance
            rec.crops, rec.latency_ms = outcome.loc.crops, outcome.loc.latency.total_ms
            rec.position_std = outcome.position_std
            rec.uncertainty_score = outcome.loc.uncertainty_score
            rec.truth = self.truth.at(frame.stamp_ns) if self.truth else None
        return rec

    def _write(self, log_time_ns: int, frame: Frame, outcome: FrameOutcome) -> None:
        w, s, pose = self.writer, self.settings, outcome.loc.pose
        camera = s.camera_frame or frame.frame_id
        # TF before the pose, as the node sends them.
        w.write("/tf", log_time_ns, w.tf_message(frame.stamp_ns, s.map_frame, camera, pose))
        w.write(f"{NODE_NAMESPACE}/pose", log_time_ns, w.pose_stamped(frame.stamp_ns, s.map_frame, pose))
        cov = covariance_list(outcome.covariance)
        msg = w.pose_with_covariance_stamped(frame.stamp_ns, s.map_frame, pose, cov)
        w.write(f"{NODE_NAMESPACE}/pose_with_covariance", log_time_ns, msg)


def _image_messages(reader: Any, topic: str, run_error: list[str]) -> Iterator[BagMessage]:
    """Image messages in order; a storage failure mid-way ends the stream and is reported, so the
    frames read before it still make it into the outputs."""
    try:
        yield from read_messages(reader, [topic])
    except Exception as exc:  # a truncated file or corrupt page surfaces from the storage layer
        run_error.append(f"bag read failed: {first_line(exc)}")


def _progress(cfg: ReplayConfig, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="replay", unit="frame", disable=not cfg.progress)


def _run_fast(run: _Run, messages: Iterator[BagMessage]) -> None:
    with _progress(run.cfg, run.frames_total) as bar:
        for msg in messages:
            run.stats.count("received")
            run.handle(msg, msg.log_time_ns)
            bar.update()


def _run_realtime(run: _Run, messages: Iterator[BagMessage]) -> int:
    """Feed frames at the recorded rate into the node's slot; a worker localizes the newest one.
    Returns the number of frames replaced before they were processed (skipped)."""
    slot = LatestFrameSlot()
    clock: dict[str, float] = {}

    def bag_now_ns() -> int:
        return int(clock["bag0"] + (time.perf_counter() - clock["wall0"]) * 1e9 * run.cfg.rate)

    failure: list[BaseException] = []
    taken: set[int] = set()
    # Each frame read gets a "skipped" row; the worker's row replaces it when the frame is localized.
    placeholders: dict[int, FrameRecord] = {}

    def worker() -> None:
        while True:
            item = slot.take(timeout=0.1)
            if item is None:
                if slot.closed:
                    return
                continue
            index, msg = item.msg
            try:
                run.handle(msg, bag_now_ns())
                taken.add(index)
            except BaseException as exc:  # surfaced in the caller's thread below, not lost
                failure.append(exc)
                slot.close()
                return

    thread = threading.Thread(target=worker, name="replay_inference", daemon=True)
    thread.start()
    try:
        with _progress(run.cfg, run.frames_total) as bar:
            for msg in messages:
                if failure:
                    break
                if not clock:
                    clock.update(bag0=msg.log_time_ns, wall0=time.perf_counter())
                delay = (msg.log_time_ns - clock["bag0"]) / 1e9 / run.cfg.rate - (time.perf_counter() - clock["wall0"])
                if delay > 0:
                    time.sleep(delay)
                run.stats.count("received")
                index = len(placeholders)
                stamp = stamp_to_ns(msg.msg.header.stamp) if msg.msg is not None else msg.log_time_ns
                placeholders[index] = FrameRecord(msg.log_time_ns, stamp, SKIPPED, SKIPPED_REASON)
                # The slot carries the bag message and its index; Frame fields are filled by handle().
                slot.put(Frame((index, msg), msg.log_time_ns, ""))
                bar.update()
    finally:
        slot.close()
        thread.join()
    if failure:
        raise failure[0]
    run.skipped_records = {i: rec for i, rec in placeholders.items() if i not in taken}
    return slot.skipped


def replay(cfg: ReplayConfig) -> ReplayResult:
    run_error: list[str] = []
    recovered: list[str] = []  # what a damaged recording lost: on stderr now, in the report later

    def warn(line: str) -> None:
        warn_stderr(line)
        recovered.append(line)

    with open_bag(cfg.bag, warn) as reader:
        run = _Run(cfg, reader)
        start = time.perf_counter()
        try:
            messages = _image_messages(reader, run.topic, run_error)
            skipped = 0
            if cfg.realtime:
                skipped = _run_realtime(run, messages)
            else:
                _run_fast(run, messages)
        finally:
            if run.writer is not None:
                run.writer.close()
        wall_s = time.perf_counter() - start
    summary = summarize(run, skipped, wall_s)
    if recovered:
        summary["recording_damage"] = recovered
    if run_error:
        summary["read_error"] = run_error[0]
    return ReplayResult(run.all_records(), summary, run_error[0] if run_error else None)


def summarize(run: _Run, skipped: int, wall_s: float) -> dict[str, Any]:
    cfg, records, stats = run.cfg, run.records, run.stats
    done = [r for r in records if r.status == PUBLISHED]
    summary: dict[str, Any] = {
        "bag": str(cfg.bag),
        "image_topic": run.topic,
        "model": str(cfg.model),
        "scene": run.engine.contract.scene.name,
        "backend": run.engine.backend,
        "precision": run.engine.precision,
        "device": str(run.engine.device),
        "mode": "realtime" if cfg.realtime else "as fast as possible",
        "rate": cfg.rate if cfg.realtime else None,
        "frames_read": stats.received,
        "frames_processed": len(done),
        "frames_rejected": stats.rejected,
        "frames_non_finite": stats.non_finite,
        "frames_skipped": skipped,
        "frames_dropped_stale": stats.dropped_stale,
        "latency_budget_ms": run.settings.latency_budget_ms or None,
        "overruns": stats.overruns,
        "latency_ms": latency_summary([r.latency_ms for r in done]),
        "latency_measured": " (engine: preprocessing and network, per frame)",
        "crops_used": {str(k): v for k, v in sorted(Counter(r.crops for r in done).items())},
        "wall_time_s": wall_s,
        "throughput_fps": stats.received / wall_s if wall_s > 0 else None,
    }
    if run.truth is not None:
        summary.update(accuracy_summary(run.truth.source, done, run.engine.contract))
    return summary


def latency_summary(latency_ms: list[float]) -> dict[str, float | None]:
    lat = np.asarray(latency_ms, dtype=float)
    if lat.size == 0:
        return {"p50": None, "p95": None, "max": None, "mean": None}
    return {
        "p50": float(np.percentile(lat, 50)),
        "p95": float(np.percentile(lat, 95)),
        "max": float(lat.max()),
        "mean": float(lat.mean()),
    }


def accuracy_summary(source: GroundTruthSource, published: list[FrameRecord], contract: Any) -> dict[str, Any]:
    """The summary's ground_truth, errors and warnings for the published frames that have ground truth."""
    paired = [r for r in published if r.truth is not None]
    out: dict[str, Any] = {
        "ground_truth": {
            "source": source.describe(),
            "max_gap_s": source.max_gap_s,
            "frames_with_ground_truth": len(paired),
        }
    }
    if paired:
        pos, rot = errors_of(paired)
        out["errors"] = error_stats(pos, rot)
        hint = (
            "the ground truth is another frame's pose: --gt-frames takes the map frame first, then the camera"
            if source.frames
            else f"the ground-truth topic {source.topic} is not the camera's pose in the map frame"
        )
        truth = np.array([r.truth.position for r in paired])
        out["warnings"] = plausibility_warnings(SceneBox.of(contract), truth, pos, hint)
    return out


def errors_of(records: list[FrameRecord]) -> tuple[np.ndarray, np.ndarray]:
    est = np.array([r.pose.position for r in records])
    gt = np.array([r.truth.position for r in records])
    q_est = np.array([r.pose.quaternion for r in records])
    q_gt = np.array([r.truth.quaternion for r in records])
    return position_error(est, gt), rotation_error_deg(q_est, q_gt)


def format_summary(summary: dict[str, Any]) -> list[str]:
    lat = summary["latency_ms"]
    lines = [
        f"bag {summary['bag']}  topic {summary['image_topic']}  model scene {summary['scene']}  "
        f"device {summary['device']}  mode {summary['mode']}",
        f"frames: read {summary['frames_read']}, processed {summary['frames_processed']}, "
        f"rejected {summary['frames_rejected']}, non-finite {summary['frames_non_finite']}, "
        f"skipped {summary['frames_skipped']}, dropped stale {summary['frames_dropped_stale']}",
    ]
    if lat["p50"] is not None:
        crops = f"; crops used {summary['crops_used']}" if summary["crops_used"] else ""
        fps = f"; {summary['throughput_fps']:.1f} frames/s overall" if summary["throughput_fps"] else ""
        lines.append(
            f"latency{summary['latency_measured']}: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, "
            f"max {lat['max']:.1f} ms{crops}{fps}"
        )
    gt = summary.get("ground_truth")
    if gt is not None:
        lines.append(f"ground truth: {gt['source']}, {gt['frames_with_ground_truth']} frames matched")
    err = summary.get("errors")
    if err is not None:
        lines.append(
            f"position error: median {err['median_position_m']:.3f} m, mean {err['mean_position_m']:.3f} m, "
            f"p95 {err['p95_position_m']:.3f} m"
        )
        lines.append(
            f"rotation error: median {err['median_rotation_deg']:.2f} deg, mean {err['mean_rotation_deg']:.2f} deg, "
            f"p95 {err['p95_rotation_deg']:.2f} deg"
        )
        lines.append(
            "within: " + ", ".join(f"{threshold_label(m, d)} {err[threshold_key(m, d)]:.1%}" for m, d in THRESHOLDS)
        )
    if summary.get("overruns"):
        lines.append(f"latency budget {summary['latency_budget_ms']:g} ms overrun by {summary['overruns']} frames")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    if "read_error" in summary:
        lines.append(f"stopped early: {summary['read_error']}")
    return lines


def write_report(result: ReplayResult, out: Path) -> Path:
    """summary.json, frames.csv, plots and index.html in ``out``; returns the index page."""
    out.mkdir(parents=True, exist_ok=True)
    summary, records = result.summary, result.records
    done = [r for r in records if r.status == PUBLISHED]
    kind = "live run" if summary["mode"].startswith("live") else "replay"
    title = f"{kind} of {Path(summary['bag']).name}"
    plots: list[Path] = []
    paired = [r for r in done if r.truth is not None]
    if paired:
        truth = np.array([r.truth.position for r in paired])
        stamps = np.array([r.stamp_ns for r in paired])
        segments = time_segments(stamps)
        summary["segments"] = len(segments)
        pos, rot = errors_of(paired)
        estimates = {"PoseNet": np.array([r.pose.position for r in paired])}
        plots.append(plot_trajectory_top(truth, estimates, out / "trajectory_top.png", title, segments))
        t = (stamps - stamps[0]) / 1e9
        plots.append(plot_error_over_time(t, pos, rot, out / "error_over_time.png", title, segments))
        plots.append(plot_error_cdf({"PoseNet": (pos, rot)}, out / "error_cdf.png", title))
    elif done:
        segments = time_segments(np.array([r.stamp_ns for r in done]))
        summary["segments"] = len(segments)
        estimates = {"PoseNet": np.array([r.pose.position for r in done])}
        plots.append(plot_trajectory_top(None, estimates, out / "trajectory_top.png", title, segments))
    if done:
        latency = np.array([r.latency_ms for r in done])
        plots.append(plot_latency_histogram(latency, out / "latency_hist.png", title, summary["latency_budget_ms"]))
    summary["plots"] = [p.name for p in plots]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _write_frames_csv(records, out / "frames.csv")
    notes = [*summary.get("recording_damage", []), *summary.get("warnings", [])]
    return write_index_html(out, title, report_tables(summary), plots, ("summary.json", "frames.csv"), notes)


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} ms"


def report_tables(summary: dict[str, Any]) -> list[Table]:
    """The summary as the index page shows it: the run, the frames, latency, accuracy."""
    run_rows = [
        ("bag", summary["bag"]),
        ("image topic", summary["image_topic"]),
        ("model", summary["model"]),
        ("model scene", summary["scene"]),
        ("backend", summary["backend"]),
        ("precision", summary["precision"]),
        ("device", summary["device"]),
        ("mode", summary["mode"] + (f" at {summary['rate']:g}x" if summary.get("rate") else "")),
        ("wall time", f"{summary['wall_time_s']:.1f} s"),
    ]
    if "segments" in summary:
        run_rows.append(("segments (separated by time gaps)", summary["segments"]))
    frame_rows = [
        ("read", summary["frames_read"]),
        ("processed (pose published)", summary["frames_processed"]),
        ("rejected (unusable image)", summary["frames_rejected"]),
        ("non-finite network output", summary["frames_non_finite"]),
        ("skipped (replaced by a newer frame)", summary["frames_skipped"]),
        ("dropped as stale", summary["frames_dropped_stale"]),
    ]
    lat = summary["latency_ms"]
    budget = summary["latency_budget_ms"]
    latency_rows = [
        ("measured", summary["latency_measured"].strip(" ()")),
        ("median", _ms(lat["p50"])),
        ("p95", _ms(lat["p95"])),
        ("max", _ms(lat["max"])),
        ("mean", _ms(lat["mean"])),
        ("budget", _ms(budget) if budget else "none"),
        ("overruns of the budget", summary["overruns"]),
        ("crops used (crops: frames)", ", ".join(f"{k}: {v}" for k, v in summary["crops_used"].items()) or "-"),
        ("throughput", f"{summary['throughput_fps']:.1f} frames/s" if summary["throughput_fps"] else "-"),
    ]
    tables = [
        Table("Run", ("", ""), run_rows),
        Table("Frames", ("", "frames"), frame_rows),
        Table("Latency", ("", ""), latency_rows),
    ]
    gt, err = summary.get("ground_truth"), summary.get("errors")
    if gt is not None:
        rows = [("source", gt["source"]), ("frames matched", gt["frames_with_ground_truth"])]
        if err is not None:
            rows += [
                ("position error median / mean / p95", _triple(err, "position_m", "m", 3)),
                ("rotation error median / mean / p95", _triple(err, "rotation_deg", "deg", 2)),
            ]
            rows += [(f"within {m} m and {d:g} deg", f"{err[threshold_key(m, d)]:.1%}") for m, d in THRESHOLDS]
        tables.append(Table("Accuracy", ("", ""), rows))
    return tables


def _triple(err: dict[str, Any], name: str, unit: str, digits: int) -> str:
    return " / ".join(f"{err[f'{k}_{name}']:.{digits}f}" for k in ("median", "mean", "p95")) + f" {unit}"


FRAMES_CSV_COLUMNS = [
    "stamp_ns",
    "status",
    "x",
    "y",
    "z",
    "qw",
    "qx",
    "qy",
    "qz",
    "crops",
    "latency_ms",
    "position_std_m",
    "uncertainty_score",
    "gt_x",
    "gt_y",
    "gt_z",
    "gt_qw",
    "gt_qx",
    "gt_qy",
    "gt_qz",
    "reason",
]


def _pose_cells(pose: Pose | None) -> list[str]:
    """Position and quaternion (w, x, y, z) at full precision, or empty cells."""
    return [repr(float(v)) for v in (*pose.position, *pose.quaternion)] if pose else [""] * 7


def _write_frames_csv(records: list[FrameRecord], path: Path) -> None:
    """Every image message: stamp, status, estimate, crops, latency, ground truth where known."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FRAMES_CSV_COLUMNS)
        for r in records:
            crops, latency = (r.crops, f"{r.latency_ms:.3f}") if r.pose else ("", "")
            std = repr(r.position_std) if r.position_std is not None else ""
            score = repr(r.uncertainty_score) if r.uncertainty_score is not None else ""
            cells = [r.stamp_ns, r.status, *_pose_cells(r.pose), crops, latency, std, score, *_pose_cells(r.truth)]
            w.writerow([*cells, r.reason])
