"""Quaternion and pose identities, property-tested."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posenet_ros import geometry as g

finite = st.floats(-1.0, 1.0, allow_nan=False)
raw_quats = st.tuples(finite, finite, finite, finite).map(np.array).filter(lambda q: np.linalg.norm(q) > 1e-3)
unit_quats = raw_quats.map(g.quat_unit)
positions = st.tuples(*(st.floats(-100, 100, allow_nan=False),) * 3).map(np.array)
poses = st.builds(g.Pose, positions, unit_quats)


@given(raw_quats)
def test_unit_is_normalized_and_canonical_and_same_rotation(q: np.ndarray) -> None:
    u = g.quat_unit(q)
    assert np.isclose(np.linalg.norm(u), 1.0)
    assert u[0] >= 0.0
    np.testing.assert_allclose(g.quat_to_matrix(u), g.quat_to_matrix(q / np.linalg.norm(q)), atol=1e-12)


@given(raw_quats)
def test_normalizing_is_idempotent_bit_for_bit(q: np.ndarray) -> None:
    once = g.quat_normalize(q)
    assert g.quat_normalize(once).tolist() == once.tolist()
    assert g.Pose(np.zeros(3), g.quat_unit(q)).quaternion.tolist() == g.quat_unit(q).tolist()


def test_a_quaternion_unit_to_rounding_is_left_as_it_is() -> None:
    """Norm 1 + 2**-50: every norm kernel (AVX2, AVX-512) sees it off 1, and dividing by it would
    change each component in the last bit, differently per CPU."""
    q = np.full(4, 0.5 + 2.0**-51)
    assert np.linalg.norm(q) != 1.0
    assert g.quat_normalize(q).tolist() == q.tolist()
    np.testing.assert_allclose(g.quat_normalize(np.array([2.0, 0.0, 0.0, 0.0])), [1.0, 0.0, 0.0, 0.0], atol=0)


@given(unit_quats)
def test_rotation_error_of_a_rotation_with_itself_is_zero_to_rounding(q: np.ndarray) -> None:
    """Last-bit differences (another CPU's normalization) must not read as an angle: acos(<q, q>)
    would give up to ~2e-6 deg here."""
    for nudged in (q * (1.0 - 2.0**-52), q * (1.0 - 2.0**-51)):
        assert g.rotation_error_deg(q, nudged) < 1e-12 and g.rotation_error_deg(q, -nudged) < 1e-12
    assert g.rotation_error_deg(np.array([1.0, 0, 0, 0]), np.array([0.0, 1, 0, 0])) == pytest.approx(180.0)


@given(unit_quats)
def test_negated_quaternion_has_same_canonical_form(q: np.ndarray) -> None:
    np.testing.assert_allclose(g.quat_canonical(-q), g.quat_canonical(q), atol=0)


def test_canonical_breaks_w_zero_ties_on_first_nonzero() -> None:
    np.testing.assert_array_equal(g.quat_canonical(np.array([0.0, -1.0, 0.0, 0.0])), [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(g.quat_canonical(np.array([0.0, 0.0, -0.6, 0.8])), [0.0, 0.0, 0.6, -0.8])


@given(unit_quats)
def test_matrix_round_trip_and_orthonormal(q: np.ndarray) -> None:
    r = g.quat_to_matrix(q)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(r), 1.0)
    np.testing.assert_allclose(g.matrix_to_quat(r), q, atol=1e-9)


@given(unit_quats, unit_quats)
def test_multiply_matches_matrix_product(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(
        g.quat_to_matrix(g.quat_multiply(a, b)), g.quat_to_matrix(a) @ g.quat_to_matrix(b), atol=1e-12
    )


@given(poses, poses, poses)
def test_compose_is_associative_and_matches_matrices(a: g.Pose, b: g.Pose, c: g.Pose) -> None:
    np.testing.assert_allclose(a.compose(b).matrix(), a.matrix() @ b.matrix(), atol=1e-9)
    left, right = a.compose(b).compose(c), a.compose(b.compose(c))
    np.testing.assert_allclose(left.position, right.position, atol=1e-9)
    assert g.rotation_error_deg(left.quaternion, right.quaternion) < 1e-5


@given(poses)
def test_inverse_composes_to_identity(p: g.Pose) -> None:
    for ident in (p.compose(p.inverse()), p.inverse().compose(p)):
        np.testing.assert_allclose(ident.position, 0.0, atol=1e-9)
        np.testing.assert_allclose(ident.quaternion, [1.0, 0.0, 0.0, 0.0], atol=1e-9)


@given(poses, st.lists(st.tuples(finite, finite, finite), min_size=1, max_size=5).map(np.array))
def test_transform_points_matches_matrix(p: g.Pose, pts: np.ndarray) -> None:
    homogeneous = np.c_[pts, np.ones(len(pts))] @ p.matrix().T
    np.testing.assert_allclose(p.transform_points(pts), homogeneous[:, :3], atol=1e-9)


@given(unit_quats, st.floats(0.0, 179.0), st.tuples(finite, finite, finite).filter(lambda v: np.linalg.norm(v) > 1e-2))
def test_rotation_error_is_the_full_angle(q: np.ndarray, angle_deg: float, axis: tuple[float, float, float]) -> None:
    axis_v = np.array(axis) / np.linalg.norm(axis)
    delta = g.rotation_vector_to_quat(axis_v * np.radians(angle_deg))
    rotated = g.quat_multiply(q, delta)
    assert np.isclose(g.rotation_error_deg(q, rotated), angle_deg, atol=1e-5)
    assert np.isclose(g.rotation_error_deg(q, -rotated), angle_deg, atol=1e-5)  # hemisphere-safe
    assert np.isclose(g.rotation_error_deg(rotated, q), angle_deg, atol=1e-5)


def test_rotation_error_of_known_rotation_is_not_halved() -> None:
    # 90 degrees about z: PoseNet's original acos(|<q1,q2>|) would report 45.
    q = g.rotation_vector_to_quat(np.array([0.0, 0.0, np.pi / 2]))
    assert np.isclose(g.rotation_error_deg(np.array([1.0, 0, 0, 0]), q), 90.0)


@given(st.tuples(finite, finite, finite).map(lambda v: np.array(v) * 3.0))
def test_rotation_vector_round_trip(r: np.ndarray) -> None:
    if np.linalg.norm(r) >= np.pi - 1e-6:  # log map returns the short way round
        return
    np.testing.assert_allclose(g.quat_to_rotation_vector(g.rotation_vector_to_quat(r)), r, atol=1e-9)


@given(unit_quats, st.lists(st.booleans(), min_size=1, max_size=8))
def test_average_of_one_rotation_in_mixed_hemispheres(q: np.ndarray, flips: list[bool]) -> None:
    batch = np.array([-q if f else q for f in flips])
    np.testing.assert_allclose(g.quat_average(batch), q, atol=1e-9)


def test_average_of_symmetric_perturbations_is_the_centre() -> None:
    centre = g.quat_unit(np.array([0.3, -0.5, 0.2, 0.8]))
    deltas = [np.array([0.1, 0, 0]), np.array([-0.1, 0, 0]), np.array([0, 0.2, 0]), np.array([0, -0.2, 0])]
    batch = np.array([g.quat_multiply(g.rotation_vector_to_quat(d), centre) for d in deltas])
    batch[1] *= -1.0  # a sign flip must not matter
    assert g.rotation_error_deg(g.quat_average(batch), centre) < 1e-6


@settings(max_examples=50)
@given(unit_quats)
def test_ros_order_round_trip(q: np.ndarray) -> None:
    xyzw = g.wxyz_to_xyzw(q)
    assert xyzw[3] == q[0]
    np.testing.assert_array_equal(g.xyzw_to_wxyz(xyzw), q)


@pytest.mark.parametrize("bad", [np.zeros(4), np.array([np.nan, 0, 0, 1.0])])
def test_normalize_refuses_zero_and_nan(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        g.quat_normalize(bad)


def test_pose_refuses_non_finite_position_and_bad_matrix() -> None:
    with pytest.raises(ValueError):
        g.Pose(np.array([np.inf, 0, 0]), np.array([1.0, 0, 0, 0]))
    with pytest.raises(ValueError):
        g.Pose.from_matrix(np.eye(3))


def test_errors_on_batches() -> None:
    p = np.array([[0.0, 0, 0], [1.0, 2.0, 2.0]])
    np.testing.assert_allclose(g.position_error(p, np.zeros(3)), [0.0, 3.0])
