"""Ground-truth camera poses from a bag, interpolated to image stamps.

Sources: a topic of PoseStamped, PoseWithCovarianceStamped, Odometry or TransformStamped, or a TF
chain (``target`` <- ``source``) assembled from ``/tf`` and ``/tf_static``. Samples are indexed by
their header stamps (not the recording time), and a query between two samples further apart than
``max_gap_ns`` gets no answer rather than a made-up pose.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posenet_ros.bagio import TF_TOPICS, BagError, header_stamp_ns, read_messages
from posenet_ros.geometry import Pose, quat_slerp, xyzw_to_wxyz

POSE_TYPES = (
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "nav_msgs/msg/Odometry",
    "geometry_msgs/msg/TransformStamped",
)


def pose_of_message(msg: Any) -> Pose | None:
    """The pose in a pose or transform message; None when it is no pose (a non-finite position, a
    zero or non-finite quaternion), so one corrupt sample is skipped, not the whole replay."""

    def make(p: Any, q: Any) -> Pose | None:
        try:
            return Pose(np.array([p.x, p.y, p.z], np.float64), xyzw_to_wxyz(np.array([q.x, q.y, q.z, q.w], np.float64)))
        except ValueError:
            return None

    if hasattr(msg, "transform"):
        return make(msg.transform.translation, msg.transform.rotation)
    inner = msg.pose.pose if hasattr(msg.pose, "pose") else msg.pose  # *WithCovariance, Odometry
    return make(inner.position, inner.orientation)


class PoseTrack:
    """Time-stamped poses of one frame (or one TF edge); ``at`` interpolates (lerp + slerp)."""

    def __init__(self, stamps_ns: list[int], poses: list[Pose]) -> None:
        order = np.argsort(np.asarray(stamps_ns, dtype=np.int64), kind="stable")
        self.stamps = np.asarray(stamps_ns, dtype=np.int64)[order]
        self.poses = [poses[i] for i in order]

    def __len__(self) -> int:
        return len(self.poses)

    def at(self, stamp_ns: int, max_gap_ns: int) -> Pose | None:
        """Pose at ``stamp_ns``; None outside the track or between samples more than the gap apart."""
        if not len(self.poses):
            return None
        i = int(np.searchsorted(self.stamps, stamp_ns))
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:
            return self.poses[i]
        if i == 0 or i == len(self.stamps):
            return None
        t0, t1 = int(self.stamps[i - 1]), int(self.stamps[i])
        if t1 - t0 > max_gap_ns:
            return None
        a, b = self.poses[i - 1], self.poses[i]
        u = (stamp_ns - t0) / (t1 - t0)
        return Pose((1 - u) * a.position + u * b.position, quat_slerp(a.quaternion, b.quaternion, u))


@dataclass
class TfTree:
    """parent <- child edges from /tf (tracks) and /tf_static (constant). Each child has one parent,
    as tf2 requires; the chain between two frames goes through their common ancestor."""

    dynamic: dict[str, tuple[str, PoseTrack]] = field(default_factory=dict)
    static: dict[str, tuple[str, Pose]] = field(default_factory=dict)

    @staticmethod
    def from_messages(messages: list[tuple[bool, Any]]) -> TfTree:
        """``messages``: (is_static, TFMessage) pairs."""
        samples: dict[str, tuple[str, list[int], list[Pose]]] = {}
        tree = TfTree()
        for is_static, msg in messages:
            for t in msg.transforms:
                parent, child = t.header.frame_id.lstrip("/"), t.child_frame_id.lstrip("/")
                pose = pose_of_message(t)
                if pose is None:
                    continue
                if is_static:
                    tree.static[child] = (parent, pose)
                else:
                    entry = samples.setdefault(child, (parent, [], []))
                    entry[1].append(header_stamp_ns(t))
                    entry[2].append(pose)
        tree.dynamic = {child: (p, PoseTrack(s, poses)) for child, (p, s, poses) in samples.items()}
        return tree

    def parent_of(self, frame: str) -> str | None:
        if frame in self.static:
            return self.static[frame][0]
        if frame in self.dynamic:
            return self.dynamic[frame][0]
        return None

    def frames(self) -> set[str]:
        names = set(self.static) | set(self.dynamic)
        return names | {p for p, _ in self.static.values()} | {p for p, _ in self.dynamic.values()}

    def _ancestors(self, frame: str) -> list[str]:
        chain = [frame]
        while (parent := self.parent_of(chain[-1])) is not None and parent not in chain:
            chain.append(parent)
        return chain

    def _to_ancestor(self, frame: str, ancestor: str, stamp_ns: int, max_gap_ns: int) -> Pose | None:
        """ancestor <- frame at ``stamp_ns`` by composing the edges up the tree."""
        pose = Pose.identity()
        while frame != ancestor:
            if frame in self.static:
                frame, edge = self.static[frame]
            else:
                parent, track = self.dynamic[frame]
                edge = track.at(stamp_ns, max_gap_ns)
                if edge is None:
                    return None
                frame = parent
            pose = edge.compose(pose)
        return pose

    def check_connected(self, target: str, source: str) -> None:
        known = self.frames()
        for name in (target, source):
            if name not in known:
                listing = ", ".join(sorted(known)) or "none"
                raise BagError(f"frame {name!r} not in the bag's TF; frames found: {listing}")
        if not set(self._ancestors(target)) & set(self._ancestors(source)):
            raise BagError(f"frames {target!r} and {source!r} are not connected in the bag's TF tree")

    def lookup(self, target: str, source: str, stamp_ns: int, max_gap_ns: int) -> Pose | None:
        """target <- source at ``stamp_ns``, or None when a dynamic edge has no sample close enough."""
        up_source = self._ancestors(source)
        common = next((f for f in self._ancestors(target) if f in up_source), None)
        if common is None:
            return None
        root_source = self._to_ancestor(source, common, stamp_ns, max_gap_ns)
        root_target = self._to_ancestor(target, common, stamp_ns, max_gap_ns)
        if root_source is None or root_target is None:
            return None
        return root_target.inverse().compose(root_source)


@dataclass(frozen=True)
class GroundTruthSource:
    """Where ground truth comes from: a pose topic, or the TF chain ``frames`` = (target, source)."""

    topic: str | None = None
    frames: tuple[str, str] | None = None
    max_gap_s: float = 0.1

    def describe(self) -> str:
        return f"topic {self.topic}" if self.topic else f"TF {self.frames[0]} <- {self.frames[1]}"


def add_ground_truth_arguments(parser: argparse.ArgumentParser) -> None:
    """--gt-topic / --gt-frames / --gt-max-gap, shared by ``posenet-ros replay`` and
    ``posenet-train from-bag``."""
    parser.add_argument("--gt-topic", help=f"ground truth topic: {', '.join(t.split('/')[-1] for t in POSE_TYPES)}")
    parser.add_argument("--gt-frames", nargs=2, metavar=("MAP", "CAMERA"), help="ground truth from /tf: MAP <- CAMERA")
    parser.add_argument("--gt-max-gap", type=float, default=0.1, help="max seconds between ground-truth samples (0.1)")


def ground_truth_from_arguments(args: argparse.Namespace, required: bool) -> GroundTruthSource | None:
    """The source the options name; None when none is given and none is required."""
    if args.gt_topic and args.gt_frames:
        raise ValueError("give --gt-topic or --gt-frames, not both")
    if not (args.gt_topic or args.gt_frames):
        if required:
            raise ValueError("give --gt-topic or --gt-frames")
        return None
    return GroundTruthSource(args.gt_topic, tuple(args.gt_frames) if args.gt_frames else None, args.gt_max_gap)


class GroundTruth:
    """Ground truth read from an open bag, queried per image stamp."""

    def __init__(self, reader: Any, source: GroundTruthSource) -> None:
        if (source.topic is None) == (source.frames is None):
            raise BagError("give exactly one ground-truth source: a topic or a pair of TF frames")
        if not source.max_gap_s > 0:
            raise BagError(f"ground-truth max gap must be > 0 s, got {source.max_gap_s}")
        self.source = source
        self.max_gap_ns = round(source.max_gap_s * 1e9)
        self.track: PoseTrack | None = None
        self.tree: TfTree | None = None
        types = {c.topic: c.msgtype for c in reader.connections}
        if source.topic is not None:
            msgtype = types.get(source.topic)
            if msgtype not in POSE_TYPES:
                found = ", ".join(sorted(t for t, m in types.items() if m in POSE_TYPES)) or "none"
                problem = "not in the bag" if msgtype is None else f"of type {msgtype}"
                raise BagError(f"ground-truth topic {source.topic!r} {problem}; pose topics found: {found}")
            stamps, poses = [], []
            for m in read_messages(reader, [source.topic]):
                pose = pose_of_message(m.msg) if m.msg is not None else None
                if pose is not None:
                    stamps.append(header_stamp_ns(m.msg))
                    poses.append(pose)
            self.track = PoseTrack(stamps, poses)
        else:
            tf_topics = [t for t in TF_TOPICS if types.get(t) == "tf2_msgs/msg/TFMessage"]
            if not tf_topics:
                raise BagError("no /tf or /tf_static topic in the bag for --gt-frames")
            messages = [(m.topic == "/tf_static", m.msg) for m in read_messages(reader, tf_topics) if m.msg is not None]
            self.tree = TfTree.from_messages(messages)
            self.tree.check_connected(*source.frames)

    def at(self, stamp_ns: int) -> Pose | None:
        if self.track is not None:
            return self.track.at(stamp_ns, self.max_gap_ns)
        return self.tree.lookup(self.source.frames[0], self.source.frames[1], stamp_ns, self.max_gap_ns)
