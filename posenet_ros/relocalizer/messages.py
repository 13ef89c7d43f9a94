"""Filling ROS message objects from our types and back, by field name only (no ROS import)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from posenet_ros.geometry import Pose, wxyz_to_xyzw, xyzw_to_wxyz


def set_stamp(stamp: Any, ns: int) -> None:
    stamp.sec = int(ns // 1_000_000_000)
    stamp.nanosec = int(ns % 1_000_000_000)


def fill_pose(msg_pose: Any, pose: Pose) -> None:
    """geometry_msgs/Pose from ours: ROS quaternion order (x, y, z, w)."""
    x, y, z = (float(v) for v in pose.position)
    msg_pose.position.x, msg_pose.position.y, msg_pose.position.z = x, y, z
    qx, qy, qz, qw = (float(v) for v in wxyz_to_xyzw(pose.quaternion))
    msg_pose.orientation.x, msg_pose.orientation.y, msg_pose.orientation.z, msg_pose.orientation.w = qx, qy, qz, qw


def fill_transform(msg_tf: Any, pose: Pose) -> None:
    """geometry_msgs/Transform from a parent<-child pose."""
    t, r = msg_tf.translation, msg_tf.rotation
    t.x, t.y, t.z = (float(v) for v in pose.position)
    r.x, r.y, r.z, r.w = (float(v) for v in wxyz_to_xyzw(pose.quaternion))


def pose_from_transform(msg_tf: Any) -> Pose:
    t, r = msg_tf.translation, msg_tf.rotation
    return Pose(np.array([t.x, t.y, t.z]), xyzw_to_wxyz(np.array([r.x, r.y, r.z, r.w])))


def covariance_list(cov: np.ndarray) -> list[float]:
    """Row-major 36 floats; refuses NaN/inf and zero variances (robot_localization would trust them)."""
    flat = [float(v) for v in np.asarray(cov, dtype=np.float64).reshape(36)]
    diag = flat[::7]
    if not all(math.isfinite(v) for v in flat) or min(diag) <= 0:
        raise ValueError("covariance must be finite with positive variances")
    return flat
