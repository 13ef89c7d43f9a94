"""TF plans: which transform each tf_mode broadcasts, the lookups it needs, the composition, the
pose of the robot's base with its covariance, and the check that keeps the TF tree a tree."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from posenet_ros.geometry import Pose
from posenet_ros.relocalizer.params import NodeSettings

# What each mode is for (also in the README): map_to_camera for a camera with no robot TF around it;
# map_to_base for a robot without odometry; map_to_odom (REP-105, as AMCL) for a robot with odometry;
# none when another node (robot_localization, AMCL) owns map->odom.


def map_to_base(map_to_camera: Pose, base_to_camera: Pose) -> Pose:
    """map<-base = map<-camera * (base<-camera)^-1."""
    return map_to_camera.compose(base_to_camera.inverse())


def map_to_odom(map_to_base_pose: Pose, odom_to_base: Pose) -> Pose:
    """REP-105 as AMCL: map<-odom = map<-base * (odom<-base)^-1, so map<-odom<-base is the estimate."""
    return map_to_base_pose.compose(odom_to_base.inverse())


@dataclass(frozen=True)
class TfPlan:
    """The transform to broadcast in the current tf_mode and the lookups it needs first:
    ``base_from_camera`` = (base_frame, camera frame), static, latest; ``odom_from_base`` =
    (odom_frame, base_frame) at the image stamp."""

    parent: str
    child: str
    base_from_camera: tuple[str, str] | None
    odom_from_base: tuple[str, str] | None
    future_ns: int  # added to the image stamp on the broadcast transform


def tf_plan(settings: NodeSettings, image_frame: str) -> TfPlan | None:
    camera = settings.camera_frame or image_frame
    mode = settings.tf_mode
    if mode == "none":
        return None
    if mode == "map_to_camera":
        return TfPlan(settings.map_frame, camera, None, None, 0)
    base_lookup = (settings.base_frame, camera)
    if mode == "map_to_base":
        return TfPlan(settings.map_frame, settings.base_frame, base_lookup, None, 0)
    tolerance_ns = round(settings.transform_tolerance * 1e9)
    odom_lookup = (settings.odom_frame, settings.base_frame)
    return TfPlan(settings.map_frame, settings.odom_frame, base_lookup, odom_lookup, tolerance_ns)


def compose_for_plan(plan: TfPlan, map_to_camera: Pose, base_to_camera: Pose | None, odom_to_base: Pose | None) -> Pose:
    """The parent<-child transform of ``plan`` from the estimate and the looked-up transforms."""
    if plan.base_from_camera is None:
        return map_to_camera
    if base_to_camera is None:
        raise ValueError(f"{plan.base_from_camera[0]}<-{plan.base_from_camera[1]} transform is needed")
    base = map_to_base(map_to_camera, base_to_camera)
    if plan.odom_from_base is None:
        return base
    if odom_to_base is None:
        raise ValueError(f"{plan.odom_from_base[0]}<-{plan.odom_from_base[1]} transform is needed")
    return map_to_odom(base, odom_to_base)


def skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def base_pose_with_covariance(
    map_to_camera: Pose, camera_covariance: np.ndarray, base_to_camera: Pose
) -> tuple[Pose, np.ndarray]:
    """The base frame's pose and 6x6 covariance from the camera's, through the static mount.

    Both covariances are about the map axes (rotations as left perturbations R' = exp(d) R, as the
    engine computes them), so the rotation block is unchanged, and a rotation error moves the base
    by d x a, where a = base - camera centre: J = [[I, -[a]x], [0, I]], cov_base = J cov J^T.
    """
    base = map_to_base(map_to_camera, base_to_camera)
    jac = np.eye(6)
    jac[:3, 3:] = -skew(base.position - map_to_camera.position)
    cov = jac @ np.asarray(camera_covariance, dtype=np.float64) @ jac.T
    return base, 0.5 * (cov + cov.T)


def frame_parents(frames_yaml: dict | None) -> dict[str, str]:
    """child -> parent from tf2's ``Buffer.all_frames_as_yaml()`` (parsed)."""
    if not isinstance(frames_yaml, dict):
        return {}
    return {
        str(child): str(info["parent"])
        for child, info in frames_yaml.items()
        if isinstance(info, dict) and info.get("parent") is not None
    }


def second_parent(parents: dict[str, str], plan: TfPlan) -> str | None:
    """The parent ``plan.child`` already has in the TF tree when it is not ``plan.parent``: then
    broadcasting the plan would give it a second parent, which tf2 cannot represent."""
    existing = parents.get(plan.child)
    return existing if existing is not None and existing != plan.parent else None


def conflict_advice(plan: TfPlan, existing_parent: str, mode: str) -> str:
    """One line saying why nothing is broadcast and which mode fits instead."""
    hint = {
        "map_to_camera": "use tf_mode map_to_odom (robot with odometry) or map_to_base, or none",
        "map_to_base": "use tf_mode map_to_odom (the base is parented by odometry) or none",
        "map_to_odom": "use tf_mode none (another node owns odom's parent)",
    }.get(mode, "use tf_mode none")
    return (
        f"not broadcasting {plan.parent}->{plan.child}: {plan.child} already has parent {existing_parent} "
        f"in the TF tree and a frame has one parent; {hint}"
    )
