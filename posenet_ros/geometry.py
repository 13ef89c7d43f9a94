"""Quaternions and rigid poses, in the conventions of docs/architecture.md ("Poses").

Quaternions are (w, x, y, z), unit norm, canonical hemisphere w >= 0. A pose is the camera's pose in
the map: camera-to-world rotation and camera centre. Everything here is plain NumPy in float64 so
the node, replay, training and evaluation agree to the last bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-12
_UNIT_ROUNDING = 1e-12  # |norm - 1| below this is float rounding, not a non-unit quaternion


def quat_normalize(q: np.ndarray) -> np.ndarray:
    """Unit-norm copy of one quaternion (4,) or a batch (N, 4); refuses zero or non-finite input."""
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.all(np.isfinite(q)) or np.any(norm < _EPS):
        raise ValueError("quaternion is zero or not finite; cannot normalize")
    # Unit to rounding already: kept bit for bit, so normalizing twice changes nothing on any CPU
    # (the norm's last bit follows the machine's SIMD kernel, and dividing by 1 +- 1 ulp would not).
    return np.where(np.abs(norm - 1.0) <= _UNIT_ROUNDING, q, q / norm)


def quat_canonical(q: np.ndarray) -> np.ndarray:
    """Flip to the hemisphere w >= 0 (q and -q are the same rotation). Ties at w == 0 are broken on
    the first significant (|v| > 1e-12) of (x, y, z) so every rotation has one representative and
    rounding noise in a component cannot flip it."""
    q = np.asarray(q, dtype=np.float64)
    first_nonzero = np.argmax(np.abs(q) > 1e-12, axis=-1)[..., None]
    sign = np.where(np.take_along_axis(q, first_nonzero, axis=-1) < 0.0, -1.0, 1.0)
    out = q * sign
    out[..., 0] = np.abs(out[..., 0])  # only a sub-1e-12 w can still be negative here
    return out


def quat_unit(q: np.ndarray) -> np.ndarray:
    """Normalized and canonical: the form every pose leaving our code has."""
    return quat_canonical(quat_normalize(q))


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (rotation b first, then a), broadcasting over leading axes."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) or (N, 3, 3) of unit quaternion(s) (w, x, y, z)."""
    w, x, y, z = np.moveaxis(quat_normalize(q), -1, 0)
    m = np.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return m.reshape((*m.shape[:-1], 3, 3))


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Canonical unit quaternion of a rotation matrix (3, 3). Uses the eigenvector of Bar-Itzhack's
    symmetric 4x4 matrix, which is exact for rotations and the nearest rotation for noisy input."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (3, 3) or not np.all(np.isfinite(m)):
        raise ValueError(f"expected a finite 3x3 rotation matrix, got shape {m.shape}")
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = m
    k = (
        np.array(
            [
                [m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01],
                [m21 - m12, m00 - m11 - m22, m01 + m10, m02 + m20],
                [m02 - m20, m01 + m10, m11 - m00 - m22, m12 + m21],
                [m10 - m01, m02 + m20, m12 + m21, m22 - m00 - m11],
            ]
        )
        / 3.0
    )
    _, vecs = np.linalg.eigh(k)
    return quat_unit(vecs[:, -1])


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vector(s) v by quaternion q."""
    return np.asarray(v, dtype=np.float64) @ quat_to_matrix(q).T


def rotation_vector_to_quat(r: np.ndarray) -> np.ndarray:
    """Exponential map: axis * angle (radians) -> canonical quaternion."""
    r = np.asarray(r, dtype=np.float64)
    angle = np.linalg.norm(r, axis=-1, keepdims=True)
    half = 0.5 * angle
    # sin(a/2)/a -> 1/2 as a -> 0; the series keeps small angles exact.
    scale = np.where(angle > 1e-8, np.sin(half) / np.maximum(angle, 1e-300), 0.5 - angle**2 / 48.0)
    return quat_canonical(np.concatenate([np.cos(half), r * scale], axis=-1))


def quat_to_rotation_vector(q: np.ndarray) -> np.ndarray:
    """Logarithm map of a unit quaternion: axis * angle with angle in [0, pi] (hemisphere-safe)."""
    q = quat_canonical(quat_normalize(q))
    w = np.clip(q[..., :1], -1.0, 1.0)
    v = q[..., 1:]
    sin_half = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(sin_half, w)
    scale = np.where(sin_half > 1e-8, angle / np.maximum(sin_half, 1e-300), 2.0 / np.maximum(w, 1e-300))
    return v * scale


def quat_average(quats: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean rotation by Markley's eigenvector method: the principal eigenvector of sum w q q^T.
    Insensitive to the sign of each input, so mixed hemispheres average correctly."""
    q = quat_normalize(np.atleast_2d(quats))
    w = np.ones(len(q)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(q),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be non-negative, one per quaternion, not all zero")
    acc = (q * w[:, None]).T @ q
    _, vecs = np.linalg.eigh(acc)
    return quat_unit(vecs[:, -1])


def quat_slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Constant-speed interpolation from q0 (t=0) to q1 (t=1) along the shorter arc (q1 is flipped
    to q0's hemisphere first, so q and -q inputs give the same rotation)."""
    q0, q1 = quat_normalize(q0), quat_normalize(q1)
    if np.dot(q0, q1) < 0.0:
        q1 = -q1
    step = quat_to_rotation_vector(quat_multiply(quat_conjugate(q0), q1))
    return quat_unit(quat_multiply(q0, rotation_vector_to_quat(t * step)))


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (scale s, rotation R, translation t) with dst ~ s R src + t
    (Umeyama 1991). Needs 3 or more points that are not all on one line."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"need two (N, 3) point sets with N >= 3, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = float((xs**2).sum() / len(src))
    u, d, vt = np.linalg.svd(xd.T @ xs / len(src))
    if var_s < _EPS or d[1] < 1e-9 * max(d[0], _EPS):
        raise ValueError("points are (nearly) collinear or coincident; the similarity is not determined")
    fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ fix @ vt
    scale = float(np.trace(np.diag(d) @ fix) / var_s)
    return scale, rot, mu_d - scale * rot @ mu_s


def rotation_error_deg(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Full rotation angle between q1 and q2 in degrees: 2*acos(|<q1,q2>|).

    The original PoseNet evaluation dropped the factor 2 and reported half the angle. Computed as
    the same angle 4*atan2(|q1 - q2|, |q1 + q2|) (q2 on q1's hemisphere): acos near 1 turns a
    last-bit difference in the inputs into ~1e-6 deg, so identical rotations normalized on two CPUs
    would not compare equal; atan2 of the chord keeps that at ~1e-14 deg."""
    a, b = np.broadcast_arrays(quat_normalize(q1), quat_normalize(q2))
    b = np.where(np.sum(a * b, axis=-1, keepdims=True) < 0.0, -b, b)
    chord, antichord = np.linalg.norm(a - b, axis=-1), np.linalg.norm(a + b, axis=-1)
    return np.degrees(4.0 * np.arctan2(chord, antichord))


def position_error(p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """Euclidean distance between positions (same units as the input, metres in our data)."""
    return np.linalg.norm(np.asarray(p1, dtype=np.float64) - np.asarray(p2, dtype=np.float64), axis=-1)


def wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """Our order (w, x, y, z) to ROS message order (x, y, z, w)."""
    return np.roll(np.asarray(q, dtype=np.float64), -1, axis=-1)


def xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """ROS message order (x, y, z, w) to ours (w, x, y, z)."""
    return np.roll(np.asarray(q, dtype=np.float64), 1, axis=-1)


@dataclass(frozen=True)
class Pose:
    """Rigid transform parent <- child: position of the child origin and rotation child-to-parent.

    For a camera pose in the map, parent is the map and child the camera (optical axes)."""

    position: np.ndarray
    quaternion: np.ndarray  # (w, x, y, z), unit, w >= 0

    def __post_init__(self) -> None:
        p = np.asarray(self.position, dtype=np.float64).reshape(3)
        if not np.all(np.isfinite(p)):
            raise ValueError("pose position is not finite")
        object.__setattr__(self, "position", p)
        object.__setattr__(self, "quaternion", quat_unit(np.asarray(self.quaternion).reshape(4)))

    @staticmethod
    def identity() -> Pose:
        return Pose(np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0]))

    @staticmethod
    def from_matrix(m: np.ndarray) -> Pose:
        m = np.asarray(m, dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError(f"expected a 4x4 homogeneous matrix, got shape {m.shape}")
        return Pose(m[:3, 3], matrix_to_quat(m[:3, :3]))

    def matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = quat_to_matrix(self.quaternion)
        m[:3, 3] = self.position
        return m

    def compose(self, other: Pose) -> Pose:
        """self * other: if self is A<-B and other is B<-C, the result is A<-C."""
        return Pose(
            self.position + quat_rotate(self.quaternion, other.position),
            quat_multiply(self.quaternion, other.quaternion),
        )

    def inverse(self) -> Pose:
        q_inv = quat_conjugate(self.quaternion)
        return Pose(-quat_rotate(q_inv, self.position), q_inv)

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Map points (N, 3) from the child frame into the parent frame."""
        return quat_rotate(self.quaternion, points) + self.position
