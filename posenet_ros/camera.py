"""Camera intrinsics: one class for every place that needs them (a data set's ``cameras.json``, the
refinement map, the engine's query camera, the model contract's training camera, the node's
``CameraInfo``). OpenCV's pixel convention: the top-left pixel's centre is (0, 0) (COLMAP's is
(0.5, 0.5)); OpenCV's distortion (k1, k2, p1, p2[, k3], ROS's ``plumb_bob``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3")  # OpenCV's order (plumb_bob); k3 optional


class CameraError(ValueError):
    """Intrinsics that cannot describe a camera; the message names the field on one line."""


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()  # () is none

    def __post_init__(self) -> None:
        # One spelling per distortion, so equal cameras compare (and hash) equal: () for none,
        # four coefficients unless k3 is used.
        d = (*(float(v) for v in self.distortion), 0.0, 0.0, 0.0, 0.0, 0.0)[:5]
        object.__setattr__(self, "distortion", () if not any(d) else d[: 5 if d[4] else 4])

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def hfov_deg(self) -> float:
        """Horizontal field of view of the whole image, through the lens (``window_fov``)."""
        return window_fov(self, 0, 0, self.width, self.height)[0]

    @property
    def vfov_deg(self) -> float:
        return window_fov(self, 0, 0, self.width, self.height)[1]

    def pinhole(self) -> Camera:
        return Camera(self.width, self.height, self.fx, self.fy, self.cx, self.cy)

    def check(self, where: str = "intrinsics", error: type[Exception] = CameraError) -> Camera:
        values = (self.fx, self.fy, self.cx, self.cy, *self.distortion)
        if self.width < 1 or self.height < 1 or not all(math.isfinite(v) for v in values):
            raise error(f"{where}: size {self.width}x{self.height} or values {values} are not valid")
        if self.fx <= 0 or self.fy <= 0:
            raise error(f"{where}: focal lengths must be positive, got fx={self.fx} fy={self.fy}")
        return self

    def scaled(self, width: int, height: int) -> Camera:
        """This camera for its images resized to ``width`` x ``height`` (same aspect within a pixel
        of rounding, else CameraError). Pixel centres sit at integers: c' = (c + 0.5) s - 0.5."""
        if (width, height) == (self.width, self.height):
            return self
        if abs(width * self.height - height * self.width) > max(self.width, self.height, width, height):
            raise CameraError(
                f"image is {width}x{height}, not the aspect of the intrinsics ({self.width}x{self.height})"
            )
        sx, sy = width / self.width, height / self.height
        cx, cy = (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5
        return Camera(width, height, self.fx * sx, self.fy * sy, cx, cy, self.distortion)

    def cropped(self, x0: int, y0: int, width: int, height: int) -> Camera:
        """The camera of the ``width`` x ``height`` window at (x0, y0) of its images."""
        return Camera(width, height, self.fx, self.fy, self.cx - x0, self.cy - y0, self.distortion)

    def undistort_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Where pixels (N, 2) of this camera's images would be in the distortion-free camera of the
        same matrix (the ideal pinhole the map and PnP work in); unchanged without distortion."""
        if not self.distortion or not len(pixels):
            return pixels
        import cv2

        k = self.matrix()
        points = np.asarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
        # Iterated to convergence: OpenCV's default 5 iterations leave pixels at strong lenses' corners.
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)
        dist = np.asarray(self.distortion)
        if hasattr(cv2, "undistortPointsIter"):  # OpenCV 4 (ROS's python3-opencv)
            out = cv2.undistortPointsIter(points, k, dist, None, k, criteria)
        else:  # OpenCV 5 took the criteria into undistortPoints
            out = cv2.undistortPoints(points, k, dist, None, None, k, criteria)
        return out.reshape(-1, 2).astype(np.asarray(pixels).dtype)

    def distortion_shift_px(self) -> float:
        """The largest shift the distortion makes at the four image corners, in pixels."""
        k1, k2, p1, p2, k3 = (*self.distortion, 0.0, 0.0, 0.0, 0.0, 0.0)[:5]
        u = np.array([0.0, self.width - 1.0, 0.0, self.width - 1.0])
        v = np.array([0.0, 0.0, self.height - 1.0, self.height - 1.0])
        x, y = (u - self.cx) / self.fx, (v - self.cy) / self.fy
        r2 = x * x + y * y
        radial = k1 * r2 + k2 * r2 * r2 + k3 * r2**3
        dx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return float(np.max(np.hypot(dx * self.fx, dy * self.fy)))

    def to_dict(self) -> dict:
        out: dict = {"width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy, "cx": self.cx}
        out["cy"] = self.cy
        if self.distortion:
            out["distortion"] = dict(zip(DISTORTION_KEYS, self.distortion, strict=False))
        return out

    @staticmethod
    def from_dict(d: object, where: str, error: type[Exception] = CameraError) -> Camera:
        """The inverse of ``to_dict``; anything else is one line of ``error`` naming the field."""
        if not isinstance(d, dict):
            raise error(f"{where}: a camera must be an object with width, height, fx, fy, cx, cy")
        missing = [k for k in ("width", "height", "fx", "fy", "cx", "cy") if k not in d]
        if missing:
            raise error(f"{where}: camera lacks {', '.join(missing)}")
        size = [d["width"], d["height"]]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise error(f"{where}: width and height must be positive integers, got {size}")
        values = finite_numbers([d[k] for k in ("fx", "fy", "cx", "cy")], f"{where}: fx, fy, cx, cy", error)
        dist = d.get("distortion", {})
        if not isinstance(dist, dict) or set(dist) - set(DISTORTION_KEYS):
            raise error(f"{where}: distortion must be an object with keys among {', '.join(DISTORTION_KEYS)}")
        coeffs = finite_numbers([dist.get(k, 0.0) for k in DISTORTION_KEYS], f"{where}: distortion", error)
        return Camera(size[0], size[1], *values, distortion=tuple(coeffs)).check(where, error)


def finite_numbers(values: list[object], where: str, error: type[Exception] = CameraError) -> list[float]:
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise error(f"{where} must be finite numbers, got {values}")
    return [float(v) for v in values]


def _info_field(msg: Any, name: str) -> Any:
    """A CameraInfo field as ROS 2 names it (``k``, ``d``) or ROS 1 does (``K``, ``D``)."""
    return getattr(msg, name) if hasattr(msg, name) else getattr(msg, name.upper())


def camera_from_info(msg: Any, rectified: bool = False) -> tuple[Camera | None, str]:
    """The camera of a ``sensor_msgs/CameraInfo`` (any object with its fields: rclpy's, a bag's
    deserialized one, ROS 1's), or None and why not: an uncalibrated camera (K all zero), binning or
    a region of interest, or distortion other than OpenCV's plumb_bob (k1, k2, p1, p2, k3;
    rational_polynomial with its extra terms zero). ``rectified``: the camera of the rectified
    images (``image_rect``) that share this CameraInfo with the raw ones, P's matrix, no distortion."""
    if rectified:
        p = np.asarray(_info_field(msg, "p"), dtype=np.float64).ravel()
        width, height = int(msg.width), int(msg.height)
        if p.shape != (12,) or not np.all(np.isfinite(p)) or p[0] <= 0 or p[5] <= 0 or width < 1 or height < 1:
            return None, f"the rectified camera is not calibrated (P {p.tolist()}, {width}x{height})"
        return Camera(width, height, float(p[0]), float(p[5]), float(p[2]), float(p[6])), ""
    k = np.asarray(_info_field(msg, "k"), dtype=np.float64).ravel()
    d = np.asarray(_info_field(msg, "d"), dtype=np.float64).ravel()
    width, height = int(msg.width), int(msg.height)
    if k.shape != (9,) or not np.all(np.isfinite(k)) or k[0] <= 0 or k[4] <= 0 or width < 1 or height < 1:
        return None, f"the camera is not calibrated (K {k.tolist()}, {width}x{height})"
    roi = (int(msg.roi.width), int(msg.roi.height))
    if int(msg.binning_x) > 1 or int(msg.binning_y) > 1 or (all(roi) and roi != (width, height)):
        return None, "binning or a region of interest is set (not read)"
    model = str(msg.distortion_model)
    if d.size and np.any(d) and (model not in ("plumb_bob", "rational_polynomial") or np.any(d[5:])):
        return None, f"distortion model {model!r} with {d.size} coefficients (read: plumb_bob's k1, k2, p1, p2, k3)"
    if not np.all(np.isfinite(d)):
        return None, f"distortion coefficients are not finite: {d.tolist()}"
    return Camera(width, height, float(k[0]), float(k[4]), float(k[2]), float(k[5]), tuple(d[:5].tolist())), ""


def window_edges(camera: Camera, x0: float, y0: float, width: float, height: float) -> np.ndarray:
    """Angles (degrees, outwards positive) from the optical axis to the left, right, top and bottom
    edges of the window whose outer pixel edges are ``x0``..``x0 + width`` and ``y0``..``y0 +
    height`` (pixel edges: the image is 0..W), measured along the principal point's row and column
    through the lens's distortion: a barrel lens sees more than its matrix says."""
    # Pixel centres sit at integers: an edge at e (pixel-edge coordinates) is at e - 0.5.
    at = np.array(
        [[x0 - 0.5, camera.cy], [x0 + width - 0.5, camera.cy], [camera.cx, y0 - 0.5], [camera.cx, y0 + height - 0.5]]
    )
    ideal = camera.undistort_pixels(at)
    tangents = np.array(
        [
            (camera.cx - ideal[0, 0]) / camera.fx,
            (ideal[1, 0] - camera.cx) / camera.fx,
            (camera.cy - ideal[2, 1]) / camera.fy,
            (ideal[3, 1] - camera.cy) / camera.fy,
        ]
    )
    return np.degrees(np.arctan(tangents))


def window_fov(camera: Camera, x0: float, y0: float, width: float, height: float) -> tuple[float, float]:
    """Horizontal and vertical field of view (degrees) of that window (``window_edges``)."""
    left, right, top, bottom = window_edges(camera, x0, y0, width, height)
    return float(left + right), float(top + bottom)


def _edge_pixels(camera: Camera, edges_deg: np.ndarray) -> np.ndarray:
    """Pixel-edge coordinates (left x, right x, top y, bottom y) at which ``camera`` sees the four
    edge angles of ``window_edges``, through its distortion."""
    t = np.tan(np.radians(edges_deg))
    rays = np.array([[-t[0], 0.0, 1.0], [t[1], 0.0, 1.0], [0.0, -t[2], 1.0], [0.0, t[3], 1.0]])
    if camera.distortion:
        import cv2

        zero = np.zeros(3)
        uv = cv2.projectPoints(rays, zero, zero, camera.matrix(), np.asarray(camera.distortion))[0].reshape(-1, 2)
    else:
        uv = np.stack([camera.cx + camera.fx * rays[:, 0], camera.cy + camera.fy * rays[:, 1]], axis=1)
    return np.array([uv[0, 0], uv[1, 0], uv[2, 1], uv[3, 1]]) + 0.5


def centre_crop_window(
    width: int, height: int, shortest_side: int, crop_width: int, crop_height: int
) -> tuple[float, float, float, float]:
    """The part of a ``width`` x ``height`` image a network input covers when the image is resized
    to ``shortest_side`` and centre-cropped to ``crop_width`` x ``crop_height`` (pixel edges)."""
    scale = min(width, height) / shortest_side
    w, h = crop_width * scale, crop_height * scale
    return (width - w) / 2, (height - h) / 2, w, h


def view_window(live: Camera, trained: Camera) -> tuple[int, int, int, int]:
    """The window (x0, y0, width, height) of ``live``'s images that sees what ``trained``'s whole
    image sees (each edge's angle from the optical axis, through both lenses), clamped to ``live``'s
    image."""
    left, right, top, bottom = _edge_pixels(live, window_edges(trained, 0, 0, trained.width, trained.height))
    x0, y0 = max(0, round(left)), max(0, round(top))
    x1, y1 = min(live.width, round(right)), min(live.height, round(bottom))
    return x0, y0, max(x1 - x0, 1), max(y1 - y0, 1)


@dataclass(frozen=True)
class FovCheck:
    """The live camera against the training camera, as the network sees them (its input window):
    ``mismatch`` is how far the furthest edge of the live view lies from the training view's,
    relative to half the training field of view on that axis (after the crop, where one is
    applied); ``window`` the crop of the live images that restores the training view (None: none
    applied); ``warning``: a mismatch the crop did not fix, so poses are biased."""

    live_fov: tuple[float, float]  # degrees, horizontal and vertical, of the network's input
    trained_fov: tuple[float, float] | None  # None: the model does not record its camera
    mismatch: float
    window: tuple[int, int, int, int] | None
    warning: bool
    message: str


def fov_check(
    live: Camera, trained: Camera | None, shortest_side: int, crop_width: int, crop_height: int, tolerance: float
) -> FovCheck:
    """Compare ``live`` with ``trained`` through the network's preprocessing (resize to
    ``shortest_side``, centre crop), edge by edge, so an off-centre principal point and a lens's
    distortion count as a wider or narrower field of view does; where the live view reaches further
    than ``tolerance`` (of half the training field of view on that axis) past an edge, crop the live
    images to the training camera's view (``view_window``)."""

    def seen(cam: Camera) -> np.ndarray:
        return window_edges(cam, *centre_crop_window(cam.width, cam.height, shortest_side, crop_width, crop_height))

    def total(edges: np.ndarray) -> tuple[float, float]:
        return float(edges[0] + edges[1]), float(edges[2] + edges[3])

    def fmt(edges: np.ndarray) -> str:
        h, v = total(edges)
        return f"{h:.1f}x{v:.1f} deg"

    def outside(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """How far each of a's edges lies past b's (negative: inside), relative to half b's field of
        view on that axis (the edge's own angle for a centred principal point, and never zero)."""
        h, v = total(b)
        return 2.0 * (a - b) / np.array([h, h, v, v])

    ours = seen(live)
    if trained is None:
        return FovCheck(
            total(ours), None, 0.0, None, False, f"network sees {fmt(ours)}; the model records no training camera"
        )
    theirs = seen(trained)
    past = outside(ours, theirs)
    mismatch = float(np.abs(past).max())
    if mismatch <= tolerance:
        return FovCheck(total(ours), total(theirs), mismatch, None, False, f"network sees {fmt(ours)}, as in training")
    if past.max() > tolerance:
        window = view_window(live, trained)
        after = seen(live.cropped(*window))
        left = float(np.abs(outside(after, theirs)).max())
        x0, y0, w, h = window
        wider = "is wider than" if past.min() >= -tolerance else "reaches past"
        message = (
            f"live view {fmt(ours)} {wider} training's {fmt(theirs)}: cropped to {w}x{h} at ({x0}, {y0}), "
            f"network sees {fmt(after)}"
        )
        if left > tolerance:
            message += f", still {left:.0%} off training's edges: poses are biased"
        return FovCheck(total(after), total(theirs), left, window, left > tolerance, message)
    narrower = "narrower than" if any(a < b for a, b in zip(total(ours), total(theirs), strict=True)) else "off"
    message = (
        f"live view {fmt(ours)} is {narrower} training's {fmt(theirs)} by {mismatch:.0%} at an edge: poses are "
        "biased (a known failure of learned regressors); use a camera with the training field of view"
    )
    return FovCheck(total(ours), total(theirs), mismatch, None, True, message)
