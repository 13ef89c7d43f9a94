"""Seeded per-sequence nuisances for the synthetic room, so a benchmark does not flatter the method
(``posenet-train synth --preset room-benchmark``; docs/training.md, "A synthetic benchmark").

The plain renderer (``posenet_train.synth``) draws every sequence in the same light, through a
perfect pinhole, with one sample per pixel (aliasing that is a function of the pose alone). Here a
sequence gets a ``Nuisance``: one draw, from the sequence's seed, of each perturbation below, each
one a small function of one job:

- scene: a point light whose position changes between sequences (Lambertian shading per face, from
  the face's axis, added to an ambient term; no shadows), swapped posters (wall panels with a
  picture the training never showed), moving occluders (people-sized boxes standing in front of
  the camera, sweeping across the view from frame to frame);
- optics and exposure: samples per pixel (supersampling, the anti-aliasing) spread over the
  exposure time along the trajectory (motion blur), radial distortion (k1, k2, in the rays: exact,
  and written to cameras.json as OpenCV's model), defocus (Gaussian blur), vignetting;
- sensor: exposure gain, Poisson-Gaussian noise, white balance, gamma, JPEG re-encoding.

Everything random is drawn from ``numpy.random.default_rng`` seeded by the sequence's seed (and the
frame's index), so a render is reproducible bit for bit on one machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from posenet_ros.geometry import Pose, matrix_to_quat, quat_to_matrix
from posenet_train.synth import (
    TEXTURE_SIZE,
    Camera,
    Face,
    FaceArrays,
    Scene,
    box_faces,
    cast_rays,
    sample_textures,
    skimage_pictures,
)

# Pictures for swapped posters: scikit-image sample images the room's walls never show.
POSTER_FILES = ("horse.png", "cell.png", "chessboard_RGB.png", "clock_motion.png", "logo.png", "text.png")
WALL_PANELS = range(2, 10)  # room_scene: floor, ceiling, then the 8 wall panels
OCCLUDER_TEXTURES = 3
SAMPLE_GRID = 2  # samples per pixel = SAMPLE_GRID**2 at supersample 2


@dataclass(frozen=True)
class Nuisance:
    """One sequence's perturbations; the defaults are none (the plain renderer's image, but for
    float rounding in the shading)."""

    supersample: int = 1  # samples per pixel along each image axis (area-averaged: anti-aliasing)
    shutter: float = 0.0  # exposure time as a fraction of the frame interval (motion blur); 0: none
    light: tuple[float, float, float] | None = None  # point light, world metres
    light_share: float = 0.0  # share of the shading that comes from the light (rest: ambient)
    posters: tuple[tuple[int, int], ...] = ()  # (face index, POSTER_FILES index): swapped pictures
    occluders: int = 0  # people-sized boxes in front of the camera
    k1: float = 0.0  # radial distortion, OpenCV's model
    k2: float = 0.0
    defocus_px: float = 0.0  # Gaussian blur sigma, pixels
    vignetting: float = 0.0  # brightness falls by this share at the image corners
    gain: float = 1.0  # exposure gain
    full_well: float = 0.0  # photo-electrons at 255 (shot noise; 0: none)
    read_noise: float = 0.0  # Gaussian read noise, grey levels
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gains, RGB
    gamma: float = 1.0  # out = 255 (in / 255) ** (1 / gamma)
    jpeg_quality: int = 0  # 0: no re-encoding

    def lens(self, camera: Camera):
        """This sequence's camera as ``posenet_train.datasets`` records it (cameras.json)."""
        from posenet_ros.camera import Camera as LensCamera

        k = camera.intrinsics()
        return LensCamera(camera.width, camera.height, k[0, 0], k[1, 1], k[0, 2], k[1, 2], (self.k1, self.k2, 0.0, 0.0))


@dataclass(frozen=True)
class NuisanceRanges:
    """Where a sequence's ``Nuisance`` is drawn from: uniform in each (lo, hi); ``*_p`` the chance a
    perturbation is there at all."""

    supersample: int = 2
    shutter: tuple[float, float] = (0.0, 0.0)
    shutter_p: float = 0.0
    light_share: tuple[float, float] = (0.0, 0.0)
    posters: int = 0
    occluders: tuple[int, int] = (0, 0)
    k1: tuple[float, float] = (0.0, 0.0)
    k2: tuple[float, float] = (0.0, 0.0)
    defocus_px: tuple[float, float] = (0.0, 0.0)
    defocus_p: float = 0.0
    vignetting: tuple[float, float] = (0.0, 0.0)
    gain: tuple[float, float] = (1.0, 1.0)
    full_well: tuple[float, float] = (0.0, 0.0)
    read_noise: tuple[float, float] = (0.0, 0.0)
    white_balance: tuple[float, float] = (1.0, 1.0)
    gamma: tuple[float, float] = (1.0, 1.0)
    jpeg_quality: tuple[int, int] = (0, 0)


# Clean: anti-aliased, nothing else. Training: what varies between real recordings of one place
# with one camera (light, exposure, white balance, noise, some blur). Perturbed: all of it, wider,
# plus what training never saw (another lens, JPEG, occluders, new posters).
CLEAN = NuisanceRanges()
TRAINING = NuisanceRanges(
    shutter=(0.1, 0.5),
    shutter_p=0.5,
    light_share=(0.2, 0.5),
    defocus_px=(0.3, 0.8),
    defocus_p=0.5,
    vignetting=(0.0, 0.2),
    gain=(0.75, 1.25),
    full_well=(1000.0, 4000.0),
    read_noise=(0.5, 2.0),
    white_balance=(0.92, 1.08),
    gamma=(0.9, 1.1),
)
PERTURBED = NuisanceRanges(
    shutter=(0.3, 1.0),
    shutter_p=1.0,
    light_share=(0.3, 0.7),
    posters=2,
    occluders=(1, 2),
    k1=(-0.2, -0.05),
    k2=(-0.03, 0.03),
    defocus_px=(0.5, 1.5),
    defocus_p=1.0,
    vignetting=(0.2, 0.5),
    gain=(0.5, 1.5),
    full_well=(150.0, 800.0),
    read_noise=(1.5, 4.0),
    white_balance=(0.8, 1.2),
    gamma=(0.7, 1.4),
    jpeg_quality=(60, 90),
)


def draw_nuisance(ranges: NuisanceRanges, seed: int, scene: Scene, seen_panels: list[int] | None = None) -> Nuisance:
    """The sequence's perturbations, from its seed alone. Swapped posters go on random wall panels,
    among ``seen_panels`` where given (``most_seen_panels``: the ones the sequence has in view)."""
    rng = np.random.default_rng([seed, 1])

    def u(lo_hi: tuple[float, float]) -> float:
        return float(rng.uniform(*lo_hi))

    (x0, y0, _), (x1, y1, z1) = scene.bounds
    light = (float(rng.uniform(x0 + 0.5, x1 - 0.5)), float(rng.uniform(y0 + 0.5, y1 - 0.5)), float(z1 - 0.3))
    shutter = u(ranges.shutter) if rng.uniform() < ranges.shutter_p else 0.0
    defocus = u(ranges.defocus_px) if rng.uniform() < ranges.defocus_p else 0.0
    order = rng.permutation(list(WALL_PANELS))
    panels = [int(i) for i in order if seen_panels is None or i in seen_panels][: ranges.posters]
    pictures = rng.permutation(len(POSTER_FILES))[: len(panels)]
    posters = tuple(sorted((int(f), int(p)) for f, p in zip(panels, pictures, strict=True)))
    lo, hi = ranges.jpeg_quality
    return Nuisance(
        supersample=ranges.supersample,
        shutter=shutter,
        light=light if ranges.light_share[1] > 0 else None,
        light_share=u(ranges.light_share),
        posters=posters,
        occluders=int(rng.integers(ranges.occluders[0], ranges.occluders[1] + 1)),
        k1=u(ranges.k1),
        k2=u(ranges.k2),
        defocus_px=defocus,
        vignetting=u(ranges.vignetting),
        gain=u(ranges.gain),
        full_well=u(ranges.full_well),
        read_noise=u(ranges.read_noise),
        white_balance=(u(ranges.white_balance), u(ranges.white_balance), u(ranges.white_balance)),
        gamma=u(ranges.gamma),
        jpeg_quality=int(rng.integers(lo, hi + 1)) if hi else 0,
    )


# -- textures ----------------------------------------------------------------------------------


def poster_textures() -> list[np.ndarray]:
    """The swapped posters' pictures (scikit-image's data folder, RGB, TEXTURE_SIZE squared)."""
    return [p.astype(np.float32) for p in skimage_pictures(POSTER_FILES)]


def occluder_textures() -> list[np.ndarray]:
    """Clothes-like stripes in three colours for the occluders."""
    rows = np.arange(TEXTURE_SIZE)[:, None, None]
    out = []
    for k, rgb in enumerate(((200.0, 60.0, 50.0), (40.0, 70.0, 160.0), (60.0, 150.0, 70.0))):
        stripes = 0.6 + 0.4 * (((rows // (12 + 6 * k)) % 2) == 0)
        out.append((stripes * np.asarray(rgb) * np.ones((1, TEXTURE_SIZE, 1))).astype(np.float32))
    return out


# -- scene perturbations -----------------------------------------------------------------------


def swap_posters(faces: list[Face], posters: tuple[tuple[int, int], ...], first_poster: int) -> list[Face]:
    """The faces with some wall panels showing another picture (texture ``first_poster + k``)."""
    swapped = dict(posters)
    return [
        Face(f.axis, f.coord, f.lo, f.hi, first_poster + swapped[i], f.shade) if i in swapped else f
        for i, f in enumerate(faces)
    ]


def most_seen_panels(scene: Scene, poses: list[Pose], hfov_deg: float) -> list[int]:
    """The wall panels seen from ``poses`` (a coarse ray cast of every 10th frame), the most seen
    first."""
    from posenet_train.synth import Renderer

    coarse = Renderer(scene, Camera(32, 24, hfov_deg))
    arrays = FaceArrays.of(scene.faces)
    counts = np.zeros(len(scene.faces))
    for pose in poses[::10]:
        dirs = coarse._rays_cam @ quat_to_matrix(pose.quaternion).T
        _, face, _ = cast_rays(arrays, pose.position, dirs)
        counts += np.bincount(face[face >= 0], minlength=len(scene.faces))
    return sorted((i for i in WALL_PANELS if counts[i] > 0), key=lambda i: (-counts[i], i))


def occluder_boxes(pose: Pose, t: float, count: int, seed: int, first_texture: int) -> list[Face]:
    """``count`` people-sized boxes (0.4-0.7 m wide, 1.5-1.9 m tall) standing 1.5-3.5 m in front of
    the camera, each sweeping sideways across the view as the sequence's time ``t`` (0..1) runs:
    smooth from frame to frame, in other places in every frame."""
    rng = np.random.default_rng([seed, 3])
    forward = quat_to_matrix(pose.quaternion)[:, 2]
    fwd = forward[:2] / max(np.linalg.norm(forward[:2]), 1e-9)
    left = np.array([-fwd[1], fwd[0]])
    faces = []
    for k in range(count):
        dist, half, height = rng.uniform(1.5, 3.5), rng.uniform(0.2, 0.35), rng.uniform(1.5, 1.9)
        freq, phase = rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        side = 0.9 * dist * np.sin(2 * np.pi * freq * t + phase)  # within about the field of view
        centre = pose.position[:2] + dist * fwd + side * left
        lo = (centre[0] - half, centre[1] - half, 0.0)
        hi = (centre[0] + half, centre[1] + half, height)
        faces += box_faces(lo, hi, [first_texture + (k % OCCLUDER_TEXTURES)] * 5)
    return faces


def lambert(
    light: tuple[float, float, float],
    share: float,
    f: FaceArrays,
    face: np.ndarray,
    points: np.ndarray,
    dirs: np.ndarray,
) -> np.ndarray:
    """Shading factor per ray: ambient (1 - share) plus share times the Lambertian term of a point
    light (normal from the face's axis, turned towards the viewer; falling off with distance;
    no shadows). Mean about 1 for a light in the room's upper half."""
    hit = face >= 0
    out = np.ones(len(face), dtype=np.float32)
    axis = f.axis[face[hit]]
    rows = np.nonzero(hit)[0]
    to_light = np.asarray(light)[None, :] - points[hit]
    dist = np.linalg.norm(to_light, axis=1)
    facing = -np.sign(dirs[rows, axis])
    cos = np.clip(facing * to_light[np.arange(len(rows)), axis] / np.maximum(dist, 1e-9), 0.0, 1.0)
    falloff = 9.0 / (9.0 + dist**2)
    out[hit] = (1.0 - share) + share * 2.5 * cos * falloff
    return out


# -- the camera --------------------------------------------------------------------------------


def undistort_normalized(xd: np.ndarray, yd: np.ndarray, k1: float, k2: float) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole coordinates whose radial distortion (OpenCV: x_d = x (1 + k1 r^2 + k2 r^4)) lands on
    (xd, yd): fixed-point iteration, converged to 1e-12 for the benchmark's lenses."""
    x, y = xd.copy(), yd.copy()
    for _ in range(50):
        r2 = x * x + y * y
        s = 1.0 + k1 * r2 + k2 * r2 * r2
        x, y = xd / s, yd / s
    return x, y


def sample_rays(camera: Camera, nuisance: Nuisance) -> list[np.ndarray]:
    """Per sample of a pixel (supersample^2 of them, on a regular sub-pixel grid), the camera rays
    (N, 3, z = 1) of every pixel, through the sequence's lens."""
    k = camera.intrinsics()
    f, cx, cy = k[0, 0], k[0, 2], k[1, 2]
    s = nuisance.supersample
    v, u = np.mgrid[0 : camera.height, 0 : camera.width].astype(np.float64)
    rays = []
    for i in range(s):
        for j in range(s):
            du, dv = (j + 0.5) / s - 0.5, (i + 0.5) / s - 0.5
            xd, yd = (u.ravel() + du - cx) / f, (v.ravel() + dv - cy) / f
            x, y = undistort_normalized(xd, yd, nuisance.k1, nuisance.k2)
            rays.append(np.stack([x, y, np.ones_like(x)], 1))
    return rays


def sample_times(n: int, shutter: float) -> np.ndarray:
    """Exposure-time offsets of a pixel's n samples, in frame intervals, centred on the frame:
    stratified over the shutter, in an order that does not follow the sub-pixel grid's."""
    if shutter <= 0:
        return np.zeros(n)
    order = np.argsort(np.random.default_rng(n).permutation(n))
    return ((order + 0.5) / n - 0.5) * shutter


# -- sensor ------------------------------------------------------------------------------------


def defocus(image: np.ndarray, sigma_px: float) -> np.ndarray:
    return image if sigma_px <= 0 else cv2.GaussianBlur(image, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)


def vignette(image: np.ndarray, strength: float) -> np.ndarray:
    """Brightness times 1 - strength (r / r_corner)^2."""
    if strength <= 0:
        return image
    h, w = image.shape[:2]
    v, u = np.mgrid[0:h, 0:w]
    r2 = ((u - (w - 1) / 2) ** 2 + (v - (h - 1) / 2) ** 2) / (((w - 1) / 2) ** 2 + ((h - 1) / 2) ** 2)
    return image * (1.0 - strength * r2)[..., None].astype(np.float32)


def expose(image: np.ndarray, gain: float) -> np.ndarray:
    return image * np.float32(gain)


def sensor_noise(image: np.ndarray, full_well: float, read_noise: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson-Gaussian: photo-electrons ~ Poisson(I / 255 * full_well), plus read noise (grey levels)."""
    out = image
    if full_well > 0:
        electrons = rng.poisson(np.clip(image, 0, None).astype(np.float64) * (full_well / 255.0))
        out = (electrons * (255.0 / full_well)).astype(np.float32)
    if read_noise > 0:
        out = out + rng.normal(0.0, read_noise, image.shape).astype(np.float32)
    return out


def white_balance(image: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    return image * np.asarray(gains, dtype=np.float32)


def apply_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """255 (I / 255) ** (1 / gamma), clipped to [0, 255]."""
    x = np.clip(image, 0, 255) / np.float32(255)
    return (np.float32(255) * x ** np.float32(1.0 / gamma)) if gamma != 1.0 else np.float32(255) * x


def quantize(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """The image after a JPEG round trip at ``quality`` (OpenCV, RGB uint8 in and out)."""
    if quality <= 0:
        return image
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def sensor(radiance: np.ndarray, n: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """Radiance (H, W, 3 float32, the renderer's grey levels) to the recorded uint8 RGB image."""
    img = defocus(radiance, n.defocus_px)
    img = vignette(img, n.vignetting)
    img = expose(img, n.gain)
    img = sensor_noise(img, n.full_well, n.read_noise, rng)
    img = white_balance(img, n.white_balance)
    img = apply_gamma(img, n.gamma)
    return jpeg(quantize(img), n.jpeg_quality)


# -- rendering ---------------------------------------------------------------------------------


@dataclass
class PerturbedRenderer:
    """The room as one sequence of a recording sees it: ``render(j)`` is frame j's image."""

    scene: Scene
    camera: Camera
    nuisance: Nuisance
    seed: int  # the sequence's (per-frame noise and occluders are drawn from it)
    curve: object  # synth.trajectory_curve(...): time in [0, 1] -> poses
    n_frames: int
    _rays: list[np.ndarray] = field(init=False)
    _textures: np.ndarray = field(init=False)
    _faces: list[Face] = field(init=False)

    def __post_init__(self) -> None:
        self._rays = sample_rays(self.camera, self.nuisance)
        base = len(self.scene.textures)
        extra = poster_textures() + occluder_textures()
        self._textures = np.concatenate([self.scene.textures, np.stack(extra)]).astype(np.float32)
        self._first_occluder = base + len(POSTER_FILES)
        self._faces = swap_posters(self.scene.faces, self.nuisance.posters, base)

    def radiance(self, pose: Pose, j: int) -> np.ndarray:
        """Frame j (at ``pose``, the label): the mean of its samples, each at its sub-pixel position
        and exposure time, lit, with the frame's occluders. Float32 (H, W, 3)."""
        n = self.nuisance
        t = j / max(self.n_frames - 1, 1)
        faces = self._faces + occluder_boxes(pose, t, n.occluders, self.seed, self._first_occluder)
        arrays = FaceArrays.of(faces)
        offsets = sample_times(len(self._rays), n.shutter) / max(self.n_frames - 1, 1)
        moving = [p for p in self.curve(t + offsets)] if n.shutter > 0 else [pose] * len(offsets)
        total = np.zeros((self.camera.height * self.camera.width, 3), dtype=np.float32)
        for rays, p in zip(self._rays, moving, strict=True):
            dirs = rays @ quat_to_matrix(p.quaternion).T
            best_t, face, uv = cast_rays(arrays, p.position, dirs)
            rgb = sample_textures(self._textures, arrays, face, uv)
            if n.light is not None and n.light_share > 0:
                points = p.position[None, :] + best_t[:, None] * dirs
                rgb *= lambert(n.light, n.light_share, arrays, face, points, dirs)[:, None]
            total += rgb
        return (total / np.float32(len(self._rays))).reshape(self.camera.height, self.camera.width, 3)

    def render(self, pose: Pose, j: int) -> np.ndarray:
        """Frame j's recorded image, RGB uint8."""
        rng = np.random.default_rng([self.seed, 2, j])
        return sensor(self.radiance(pose, j), self.nuisance, rng)


# -- labels ------------------------------------------------------------------------------------


def rotation_vector_matrix(w: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(w))
    if angle < 1e-15:
        return np.eye(3)
    k = w / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def noisy_label(pose: Pose, position_rms_m: float, rotation_rms_deg: float, rng: np.random.Generator) -> Pose:
    """The pose with Gaussian label noise: a position offset whose norm has RMS ``position_rms_m``
    and a rotation (about a random axis, in the camera frame) whose angle has RMS ``rotation_rms_deg``."""
    dp = rng.normal(0.0, position_rms_m / np.sqrt(3), 3)
    dw = rng.normal(0.0, np.radians(rotation_rms_deg) / np.sqrt(3), 3)
    rot = quat_to_matrix(pose.quaternion) @ rotation_vector_matrix(dw)
    return Pose(pose.position + dp, matrix_to_quat(rot))
