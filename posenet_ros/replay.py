"""``posenet-ros replay BAG --model MODEL.pt``: the node's per-frame logic on a recorded bag, offline.

Every frame goes through ``relocalizer.frames.localize_frame``, the function the node calls, so a replay
shows what the node would publish. Two modes:
- as fast as possible: each frame is processed the moment it is read (the node's clock reads the
  frame's recording time, so nothing is stale and nothing is skipped);
- ``--realtime``: frames are fed at the recorded rate (times ``--rate``) into the node's newest-frame
  slot while a worker thread localizes, so frames the node would have skipped (replaced while the
  network ran) or dropped (older than ``max_frame_age_ms`` by the bag clock) are counted as such.
With ``--map`` the engine refines each pose against the 3D map (docs/refinement.md): the published
pose is the refined one where refinement succeeded, and the summary, frames.csv and the report add
the refinement's figures and the network's (coarse) pose and errors beside it.
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
    BagError,
    BagMessage,
    BagWriter,
    TopicQos,
    camera_info_topic_for,
    open_bag,
    pick_image_topic,
    read_camera_info,
    read_messages,
    storage_of,
    warn_stderr,
)
from posenet_ros.engine import Engine, intrinsics_of
from posenet_ros.errors import first_line
from posenet_ros.geometry import Pose, position_error, rotation_error_deg
from posenet_ros.groundtruth import GroundTruth, GroundTruthSource
from posenet_ros.image_codec import decode
from posenet_ros.refine import reason_kind
from posenet_ros.relocalizer.diagnostics import NodeStats
from posenet_ros.relocalizer.frames import (
    PUBLISHED,
    REJECTED,
    Frame,
    FrameOutcome,
    LatestFrameSlot,
    RefineGate,
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
    # Refinement against a 3D map (None: none); intrinsics (fx, fy, cx, cy, width, height) of the
    # bag's camera, None: the map's camera (EngineConfig.intrinsics).
    map_path: Path | None = None
    intrinsics: tuple[float, ...] | None = None


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
    # Refinement (replays with a map): whether it ran and succeeded, and the network's own pose.
    refine_attempted: bool = False
    refined: bool = False
    refine_reason: str = ""
    inliers: int = 0
    coarse_pose: Pose | None = None
    refine_ms: float = float("nan")


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
        overrides: dict[str, Any] = {"device": cfg.device, "threads": cfg.threads}
        if cfg.map_path is not None:
            overrides.update(map_path=cfg.map_path, refine="always", intrinsics=cfg.intrinsics)
        elif cfg.intrinsics is not None:
            raise ReplayError("--intrinsics are refinement's camera and need --map")
        self.engine = Engine(cfg.model, self.settings.engine_config(**overrides))
        self.camera = self._camera_info(reader)
        self.stats = NodeStats(window=1 << 30)
        self.refine_gate = RefineGate()  # -p refine_rate_hz:=... as in the node
        self.records: list[FrameRecord] = []
        self.skipped_records: dict[int, FrameRecord] = {}  # realtime: read, replaced before inference
        self.writer = self._open_writer() if cfg.out_bag else None

    def _camera_info(self, reader: Any) -> dict[str, str]:
        """The recording's camera, given to the engine as the node's CameraInfo subscription does
        (refinement's intrinsics and the field-of-view check): --intrinsics where given, else the
        CameraInfo beside the image topic, else none (refinement then uses the map's camera)."""
        msgtype = next(c.msgtype for c in reader.connections if c.topic == self.topic)
        topic = camera_info_topic_for(self.topic, msgtype)
        if self.cfg.intrinsics is not None:
            camera, source = intrinsics_of(self.cfg.intrinsics, "--intrinsics"), "--intrinsics"
        else:
            try:
                camera, why = read_camera_info(reader, topic)
            except BagError as exc:  # damage in the recording: the frames still replay
                camera, why = None, str(exc)
            if camera is None:
                return {"source": f"none ({why})"}
            source = f"CameraInfo on {topic}" + (f" ({why})" if why else "")
        fov = self.engine.set_camera(camera)
        return {"source": source, "field_of_view": fov.message}

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
        outcome = localize_frame(self.engine, self.settings, decode, frame, now_ns, self.stats, self.refine_gate)
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
            loc = outcome.loc
            if loc.refine_attempted:
                rec.refine_attempted, rec.refined, rec.refine_reason = True, loc.refined, loc.refine_reason
                rec.inliers, rec.coarse_pose, rec.refine_ms = loc.inliers, loc.coarse_pose, loc.refine_ms
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
        "latency_measured": (
            " (engine: preprocessing, network and refinement, per frame)"
            if cfg.map_path is not None
            else " (engine: preprocessing and network, per frame)"
        ),
        "camera": run.camera,
        "crops_used": {str(k): v for k, v in sorted(Counter(r.crops for r in done).items())},
        "wall_time_s": wall_s,
        "throughput_fps": stats.received / wall_s if wall_s > 0 else None,
    }
    if run.truth is not None:
        summary.update(accuracy_summary(run.truth.source, done, run.engine.contract))
    if cfg.map_path is not None:
        summary["refinement"] = refinement_summary(run, done)
    return summary


def refinement_summary(run: _Run, published: list[FrameRecord]) -> dict[str, Any]:
    """The map, the camera, how many frames refinement ran on and refined, inliers and latency of
    the attempts, why the rest were not refined, and (with ground truth) the network's errors beside
    the published ones on the published frames."""
    engine, cfg = run.engine, run.cfg
    tried = [r for r in run.records if r.refine_attempted]
    refined = [r for r in tried if r.refined]
    reasons = Counter(reason_kind(r.refine_reason) for r in tried if not r.refined)
    lat = np.array([r.refine_ms for r in tried], dtype=float)
    out: dict[str, Any] = {
        "map": str(cfg.map_path),
        "map_images": len(engine.scene_map.image_names),
        "map_points": len(engine.scene_map.points),
        "intrinsics": (engine.live_camera or engine.intrinsics).to_dict(),
        "intrinsics_source": run.camera["source"] if engine.live_camera is not None else "the map's camera",
        "attempts": len(tried),
        "refined": len(refined),
        "rate": len(refined) / len(tried) if tried else None,
        "inliers_median": float(np.median([r.inliers for r in refined])) if refined else None,
        "latency_ms": {
            "p50": float(np.percentile(lat, 50)) if lat.size else None,
            "p95": float(np.percentile(lat, 95)) if lat.size else None,
        },
        "not_refined": dict(reasons.most_common()),
    }
    paired = [r for r in published if r.truth is not None and r.coarse_pose is not None]
    if paired:
        coarse = errors_of(paired, coarse=True)
        out["errors"] = {"coarse": error_stats(*coarse), "refined": error_stats(*errors_of(paired))}
    return out


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


def errors_of(records: list[FrameRecord], coarse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Position (m) and rotation (deg) errors of the published poses, or the network's own
    (``coarse``) in replays with refinement."""
    poses = [r.coarse_pose if coarse else r.pose for r in records]
    est = np.array([p.position for p in poses])
    gt = np.array([r.truth.position for r in records])
    q_est = np.array([p.quaternion for p in poses])
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
    camera = summary.get("camera")
    if camera is not None:
        fov = f"; {camera['field_of_view']}" if "field_of_view" in camera else ""
        lines.append(f"camera: {camera['source']}{fov}")
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
    ref = summary.get("refinement")
    if ref is not None:
        lines += refinement_lines(ref)
    node_ref = summary.get("node_refinement")
    if node_ref is not None:
        rate = node_ref["refined"] / node_ref["attempts"]
        line = (
            f"refinement (the node's /diagnostics): refined {node_ref['refined']} of {node_ref['attempts']} "
            f"frames ({rate:.1%})"
        )
        if node_ref.get("inliers_median") is not None:
            line += f", median {node_ref['inliers_median']:.0f} inliers"
        if node_ref.get("latency_p50_ms") is not None:
            line += f"; recent refinement latency p50 {node_ref['latency_p50_ms']:.1f} ms, "
            line += f"p95 {node_ref['latency_p95_ms']:.1f} ms"
        lines.append(line)
    if summary.get("overruns"):
        lines.append(f"latency budget {summary['latency_budget_ms']:g} ms overrun by {summary['overruns']} frames")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    if "read_error" in summary:
        lines.append(f"stopped early: {summary['read_error']}")
    return lines


def refinement_lines(ref: dict[str, Any]) -> list[str]:
    """The summary's refinement as printed: attempts, rate, inliers, latency, coarse vs refined."""
    lat = ref["latency_ms"]
    line = f"refinement ({ref['map']}): refined {ref['refined']} of {ref['attempts']} frames"
    if ref["attempts"]:
        line += f" ({ref['rate']:.1%})"
    if ref["inliers_median"] is not None:
        line += f", median {ref['inliers_median']:.0f} inliers"
    if lat["p50"] is not None:
        line += f"; refinement latency p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms"
    lines = [line]
    if ref["not_refined"]:
        lines.append("not refined: " + ", ".join(f"{k} {v}" for k, v in ref["not_refined"].items()))
    errors = ref.get("errors")
    if errors is not None:
        for name, label in (("coarse", "PoseNet (coarse)"), ("refined", "with refinement")):
            e = errors[name]
            within = ", ".join(f"{threshold_label(m, d)} {e[threshold_key(m, d)]:.1%}" for m, d in THRESHOLDS)
            lines.append(
                f"{label}: median {e['median_position_m']:.4f} m / {e['median_rotation_deg']:.3f} deg, "
                f"p95 {e['p95_position_m']:.3f} m / {e['p95_rotation_deg']:.2f} deg; within: {within}"
            )
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
        series = {"PoseNet": (pos, rot)}
        if "refinement" in summary and all(r.coarse_pose is not None for r in paired):
            estimates = {
                "PoseNet (coarse)": np.array([r.coarse_pose.position for r in paired]),
                "with refinement": estimates["PoseNet"],
            }
            series = {"PoseNet (coarse)": errors_of(paired, coarse=True), "with refinement": (pos, rot)}
        plots.append(plot_trajectory_top(truth, estimates, out / "trajectory_top.png", title, segments))
        t = (stamps - stamps[0]) / 1e9
        plots.append(plot_error_over_time(t, pos, rot, out / "error_over_time.png", title, segments))
        plots.append(plot_error_cdf(series, out / "error_cdf.png", title))
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
    _write_frames_csv(records, out / "frames.csv", refinement="refinement" in summary)
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
    node_ref = summary.get("node_refinement")
    if node_ref is not None:
        frame_rows += [
            ("refinement tried (the node's count)", node_ref["attempts"]),
            ("refined against the map (the node's count)", node_ref["refined"]),
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
        ref_errors = summary.get("refinement", {}).get("errors")
        if ref_errors is not None:  # the published errors are the refined ones: each row as a pair
            c, r = ref_errors["coarse"], ref_errors["refined"]
            rows = rows[:2]
            kinds = (("position_m", "position", "m", 4), ("rotation_deg", "rotation", "deg", 3))
            for name, label, unit, digits in kinds:
                rows += [
                    (f"{label} error median / mean / p95, PoseNet (coarse)", _triple(c, name, unit, digits)),
                    (f"{label} error median / mean / p95, with refinement", _triple(r, name, unit, digits)),
                ]
            rows += [
                (f"within {m} m and {d:g} deg, PoseNet (coarse) / with refinement", f"{c[k]:.1%} / {r[k]:.1%}")
                for m, d in THRESHOLDS
                for k in [threshold_key(m, d)]
            ]
        tables.append(Table("Accuracy", ("", ""), rows))
    ref = summary.get("refinement")
    if ref is not None:
        k, lat = ref["intrinsics"], ref["latency_ms"]
        rows = [
            ("map", f"{ref['map']} ({ref['map_images']} images, {ref['map_points']:,} points)"),
            (
                "intrinsics",
                f"fx {k['fx']:.2f} fy {k['fy']:.2f} cx {k['cx']:.2f} cy {k['cy']:.2f} at "
                f"{k['width']}x{k['height']} ({ref['intrinsics_source']})",
            ),
            ("frames refinement ran on", ref["attempts"]),
            ("refined", ref["refined"]),
            ("rate", f"{ref['rate']:.1%}" if ref["rate"] is not None else "-"),
            ("inliers median", f"{ref['inliers_median']:.0f}" if ref["inliers_median"] is not None else "-"),
            ("refinement latency median / p95", f"{_ms(lat['p50'])} / {_ms(lat['p95'])}"),
        ]
        rows += [(f"not refined: {reason}", n) for reason, n in ref["not_refined"].items()]
        tables.append(Table("Refinement", ("", ""), rows))
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
# Appended in replays with refinement (--map): whether the published pose is the refined one, the
# PnP inliers, the network's own pose, refinement's time and why a frame was not refined.
REFINE_CSV_COLUMNS = [
    "refined",
    "inliers",
    "coarse_x",
    "coarse_y",
    "coarse_z",
    "coarse_qw",
    "coarse_qx",
    "coarse_qy",
    "coarse_qz",
    "refine_ms",
    "refine_reason",
]


def _pose_cells(pose: Pose | None) -> list[str]:
    """Position and quaternion (w, x, y, z) at full precision, or empty cells."""
    return [repr(float(v)) for v in (*pose.position, *pose.quaternion)] if pose else [""] * 7


def _write_frames_csv(records: list[FrameRecord], path: Path, refinement: bool = False) -> None:
    """Every image message: stamp, status, estimate, crops, latency, ground truth where known; with
    ``refinement`` also REFINE_CSV_COLUMNS (empty where refinement did not run)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FRAMES_CSV_COLUMNS + (REFINE_CSV_COLUMNS if refinement else []))
        for r in records:
            crops, latency = (r.crops, f"{r.latency_ms:.3f}") if r.pose else ("", "")
            std = repr(r.position_std) if r.position_std is not None else ""
            score = repr(r.uncertainty_score) if r.uncertainty_score is not None else ""
            cells = [r.stamp_ns, r.status, *_pose_cells(r.pose), crops, latency, std, score, *_pose_cells(r.truth)]
            cells.append(r.reason)
            if refinement:
                if r.refine_attempted:
                    cells += [int(r.refined), r.inliers, *_pose_cells(r.coarse_pose), f"{r.refine_ms:.3f}"]
                    cells.append(r.refine_reason)
                else:
                    cells += [""] * len(REFINE_CSV_COLUMNS)
            w.writerow(cells)
