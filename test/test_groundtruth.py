"""Ground-truth interpolation and TF chains, and the geometry they rest on (slerp, Umeyama)."""

from __future__ import annotations

import numpy as np
import pytest

from posenet_ros.bagio import BagError
from posenet_ros.geometry import (
    Pose,
    quat_to_matrix,
    quat_unit,
    rotation_error_deg,
    rotation_vector_to_quat,
    umeyama_similarity,
)
from posenet_ros.groundtruth import PoseTrack, TfTree

MS = 1_000_000


def pose(x: float, yaw_deg: float) -> Pose:
    return Pose(np.array([x, 0.0, 0.0]), rotation_vector_to_quat(np.array([0.0, 0.0, np.radians(yaw_deg)])))


def test_track_interpolates_linearly_and_by_slerp_within_the_gap() -> None:
    track = PoseTrack([100 * MS, 0], [pose(1.0, 90.0), pose(0.0, 0.0)])  # unsorted input is sorted
    mid = track.at(25 * MS, max_gap_ns=100 * MS)
    assert np.allclose(mid.position, [0.25, 0, 0])
    assert rotation_error_deg(mid.quaternion, pose(0, 22.5).quaternion) < 1e-9
    assert track.at(100 * MS, 1) is not None  # exact sample: no gap needed
    assert track.at(50 * MS, max_gap_ns=99 * MS) is None  # samples too far apart
    assert track.at(-1, 10**12) is None and track.at(101 * MS, 10**12) is None  # outside: no extrapolation


def test_track_slerp_is_hemisphere_safe() -> None:
    a = pose(0, 10.0)
    b = Pose(np.zeros(3), -pose(0, 30.0).quaternion)  # same rotation, other sign
    mid = PoseTrack([0, 10], [a, b]).at(5, 10)
    assert rotation_error_deg(mid.quaternion, pose(0, 20.0).quaternion) < 1e-9


class _T:
    """The fields of geometry_msgs/TransformStamped the tree reads."""

    def __init__(self, parent: str, child: str, stamp_ns: int, p: Pose) -> None:
        from types import SimpleNamespace as NS

        from posenet_ros.geometry import wxyz_to_xyzw

        x, y, z = p.position
        qx, qy, qz, qw = wxyz_to_xyzw(p.quaternion)
        self.header = NS(frame_id=parent, stamp=NS(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9))
        self.child_frame_id = child
        self.transform = NS(translation=NS(x=x, y=y, z=z), rotation=NS(x=qx, y=qy, z=qz, w=qw))


def test_tf_chain_composes_dynamic_and_static_edges_through_the_common_ancestor() -> None:
    from types import SimpleNamespace as NS

    mount = Pose(np.array([0.2, 0.0, 0.5]), quat_unit(np.array([0.5, -0.5, 0.5, -0.5])))
    odom = Pose(np.array([5.0, 1.0, 0.0]), pose(0, 30.0).quaternion)
    msgs = [
        (True, NS(transforms=[_T("base_link", "camera", 0, mount)])),
        (False, NS(transforms=[_T("map", "odom", 0, odom), _T("map", "odom", 10**9, odom)])),
        (False, NS(transforms=[_T("/odom", "base_link", 0, pose(0.0, 0.0))])),
        (False, NS(transforms=[_T("odom", "base_link", 10**9, pose(2.0, 90.0))])),
    ]
    tree = TfTree.from_messages(msgs)
    got = tree.lookup("map", "camera", 5 * 10**8, max_gap_ns=10**9)
    expected = odom.compose(pose(1.0, 45.0)).compose(mount)
    assert (
        np.allclose(got.position, expected.position) and rotation_error_deg(got.quaternion, expected.quaternion) < 1e-9
    )
    # The inverse direction and a sibling query go through the common ancestor.
    back = tree.lookup("camera", "map", 5 * 10**8, 10**9)
    assert np.allclose(back.compose(got).position, 0, atol=1e-12)
    assert tree.lookup("map", "camera", 5 * 10**8, max_gap_ns=10**8) is None
    tree.check_connected("map", "camera")
    with pytest.raises(BagError, match="frames found: base_link, camera, map, odom"):
        tree.check_connected("map", "lidar")


def test_umeyama_recovers_a_similarity_and_refuses_degenerate_points() -> None:
    rng = np.random.default_rng(3)
    q = quat_unit(rng.normal(size=4))
    src = rng.normal(size=(30, 3))
    dst = 0.37 * src @ quat_to_matrix(q).T + [4.0, -2.0, 1.0] + rng.normal(scale=1e-9, size=(30, 3))
    s, rot, t = umeyama_similarity(src, dst)
    assert abs(s - 0.37) < 1e-8 and np.allclose(rot, quat_to_matrix(q), atol=1e-8) and np.allclose(t, [4, -2, 1])
    assert np.linalg.det(rot) > 0  # a rotation, never a reflection
    with pytest.raises(ValueError, match="collinear"):
        umeyama_similarity(np.outer(np.arange(5.0), [1, 2, 3]), np.outer(np.arange(5.0), [3, 2, 1]))
