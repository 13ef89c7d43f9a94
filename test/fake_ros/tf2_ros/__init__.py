"""Fake tf2_ros: a Buffer that answers lookups from transforms set on it (directly, or received on
/tf and /tf_static by a TransformListener) by walking the frame tree, with tf2's exceptions."""

from __future__ import annotations

from typing import Any

import numpy as np
from geometry_msgs.msg import TransformStamped
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile
from rclpy.time import Time
from tf2_msgs.msg import TFMessage

from posenet_ros.geometry import Pose


class TransformException(Exception):
    pass


class LookupException(TransformException):
    pass


class ConnectivityException(TransformException):
    pass


class ExtrapolationException(TransformException):
    pass


class Buffer:
    def __init__(self, cache_time: Duration | None = None, node: Any = None) -> None:
        # (parent, child) -> list of (stamp_ns, Pose parent<-child); static ones have stamp None.
        self._edges: dict[tuple[str, str], list[tuple[int | None, Pose]]] = {}

    def set_transform(self, transform: TransformStamped, authority: str) -> bool:
        return self._store(transform, static=False)

    def set_transform_static(self, transform: TransformStamped, authority: str) -> bool:
        return self._store(transform, static=True)

    def _store(self, t: TransformStamped, static: bool) -> bool:
        if not isinstance(t, TransformStamped):
            raise TypeError("expected geometry_msgs/TransformStamped")
        stamp = None if static else t.header.stamp.sec * 1_000_000_000 + t.header.stamp.nanosec
        key = (t.header.frame_id, t.child_frame_id)
        entries = self._edges.setdefault(key, [])
        if static:
            entries.clear()
        tr, rot = t.transform.translation, t.transform.rotation
        entries.append((stamp, Pose(np.array([tr.x, tr.y, tr.z]), np.array([rot.w, rot.x, rot.y, rot.z]))))
        entries.sort(key=lambda e: -1 if e[0] is None else e[0])
        return True

    def _edge(self, parent: str, child: str, stamp_ns: int) -> Pose:
        entries = self._edges[(parent, child)]
        if entries[0][0] is None:
            return entries[0][1]
        if stamp_ns == 0:
            return entries[-1][1]  # Time() means the latest
        for s, pose in entries:
            if s == stamp_ns:
                return pose
        newest, oldest = entries[-1][0], entries[0][0]
        if stamp_ns > newest or stamp_ns < oldest:
            raise ExtrapolationException(
                f"Lookup would require extrapolation: requested {stamp_ns}, data {oldest}..{newest}"
            )
        # Linear interpolation of the translation; nearest rotation (enough for tests).
        before = max((e for e in entries if e[0] < stamp_ns), key=lambda e: e[0])
        after = min((e for e in entries if e[0] > stamp_ns), key=lambda e: e[0])
        w = (stamp_ns - before[0]) / (after[0] - before[0])
        rot = before[1].quaternion if w < 0.5 else after[1].quaternion
        return Pose((1 - w) * before[1].position + w * after[1].position, rot)

    def _pose(self, target: str, source: str, stamp_ns: int) -> Pose:
        """target<-source by breadth-first search over the tree, edges usable in both directions."""
        frames = {f for key in self._edges for f in key}
        if target not in frames or source not in frames:
            missing = target if target not in frames else source
            raise LookupException(f'"{missing}" passed to lookupTransform argument does not exist.')
        paths: dict[str, Pose] = {target: Pose.identity()}
        queue = [target]
        while queue:
            frame = queue.pop(0)
            for parent, child in self._edges:
                if parent == frame and child not in paths:
                    paths[child] = paths[frame].compose(self._edge(parent, child, stamp_ns))
                    queue.append(child)
                elif child == frame and parent not in paths:
                    paths[parent] = paths[frame].compose(self._edge(parent, child, stamp_ns).inverse())
                    queue.append(parent)
        if source not in paths:
            raise ConnectivityException(f"Could not find a connection between '{target}' and '{source}'")
        return paths[source]

    def lookup_transform(
        self, target_frame: str, source_frame: str, time: Time, timeout: Duration | None = None
    ) -> TransformStamped:
        if not isinstance(time, Time):
            raise TypeError("time must be an rclpy.time.Time")
        pose = self._pose(target_frame, source_frame, time.nanoseconds)
        out = TransformStamped()
        out.header.frame_id = target_frame
        out.child_frame_id = source_frame
        out.header.stamp = time.to_msg()
        t, r = out.transform.translation, out.transform.rotation
        t.x, t.y, t.z = (float(v) for v in pose.position)
        r.w, r.x, r.y, r.z = (float(v) for v in pose.quaternion)
        return out

    def can_transform(self, target_frame: str, source_frame: str, time: Time, timeout: Duration | None = None) -> bool:
        try:
            self.lookup_transform(target_frame, source_frame, time, timeout)
            return True
        except TransformException:
            return False


class TransformListener:
    def __init__(
        self, buffer: Buffer, node: Any, *, spin_thread: bool = False, qos: Any = None, static_qos: Any = None
    ) -> None:
        self.buffer = buffer
        node.create_subscription(TFMessage, "/tf", self._on_tf, qos or QoSProfile(depth=100))
        static = static_qos or QoSProfile(
            depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST
        )
        node.create_subscription(TFMessage, "/tf_static", self._on_tf_static, static)

    def _on_tf(self, msg: TFMessage) -> None:
        for t in msg.transforms:
            self.buffer.set_transform(t, "default_authority")

    def _on_tf_static(self, msg: TFMessage) -> None:
        for t in msg.transforms:
            self.buffer.set_transform_static(t, "default_authority")


class TransformBroadcaster:
    def __init__(self, node: Any, qos: Any = None) -> None:
        self.pub_tf = node.create_publisher(TFMessage, "/tf", qos or QoSProfile(depth=100))

    def sendTransform(self, transform: TransformStamped | list[TransformStamped]) -> None:
        transforms = transform if isinstance(transform, list) else [transform]
        for t in transforms:
            if not isinstance(t, TransformStamped):
                raise TypeError("sendTransform takes TransformStamped messages")
            q = np.array(
                [t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w]
            )
            if abs(np.linalg.norm(q) - 1.0) > 1e-6:
                raise ValueError("TF_DENORMALIZED_QUATERNION: rotation is not a unit quaternion")
        self.pub_tf.publish(TFMessage(transforms=transforms))
