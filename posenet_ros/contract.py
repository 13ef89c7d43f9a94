"""The model contract: everything needed to use an exported PoseNet correctly, stored as JSON inside
the TorchScript file (docs/architecture.md, "The model contract"). Preprocessing and output decoding
are derived from it and nowhere else, so a model trained at another input size or scene scale just
works.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from posenet_ros.camera import Camera

CONTRACT_FORMAT = "posenet_ros.contract"
CONTRACT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
EXTRA_FILE_NAME = "posenet_contract.json"  # key in TorchScript's _extra_files

CAMERA_CONVENTION = "camera_to_world_opencv_optical"
OUTPUT_LAYOUT = "xyz_wxyz"
INTERPOLATIONS = ("area", "linear")
CHANNEL_ORDERS = ("rgb", "bgr")
UNCERTAINTY_MODES = ("fixed", "crops", "mc_dropout")
BY_CROPS_KEY = "by_crops"  # calibration.crops.by_crops: {"2": {...}, "4": {...}, ...}
MIN_TABLE_CROPS = 2  # one crop has no spread, hence no covariance to calibrate

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ContractError(ValueError):
    """The contract is missing or invalid; the message names the offending field on one line."""


@dataclass(frozen=True)
class Preprocessing:
    """Image -> network input: resize shortest side, crop, scale to [0, 1], (x - mean) / std."""

    input_height: int = 224
    input_width: int = 224
    resize_shortest_side: int = 256
    interpolation: str = "area"
    channel_order: str = "rgb"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class OutputSpec:
    """Network output -> pose: position = raw_xyz * position_scale + position_offset (metres, map
    frame); quaternion (w, x, y, z) camera-to-map."""

    layout: str = OUTPUT_LAYOUT
    position_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    position_scale: float = 1.0

    def positions(self, raw_xyz: Any) -> Any:
        """Network xyz (N, 3) -> metres in the map frame (numpy arrays)."""
        return raw_xyz * self.position_scale + np.asarray(self.position_offset, dtype=np.float64)


@dataclass(frozen=True)
class SceneInfo:
    name: str = "unnamed"
    extent: tuple[float, float, float] = (1.0, 1.0, 1.0)  # bounding box size of the camera positions, metres


@dataclass(frozen=True)
class Calibration:
    """Fitted on held-out frames by ``posenet-train calibrate`` for one uncertainty mode: variance
    factors for the position and orientation blocks of the predicted covariance, and the median
    calibrated position std there (the scale of the normalized uncertainty score).

    ``by_crops`` (crops mode only): the same fit at each crop count the latency budget may pick
    (the crops' grid, hence their raw spread, changes with the count); stored as
    ``calibration.crops.by_crops`` with the counts as string keys. It is left out of ``==`` and
    the hash, which compare the single entry (the fit at the count ``calibrate`` was given, what
    readers without the table use)."""

    position_scale: float = 1.0
    orientation_scale: float = 1.0
    reference_position_std: float = 1.0  # metres
    frames: int = 0
    by_crops: dict[int, Calibration] = field(default_factory=dict, compare=False)

    def for_crops(self, crops: int) -> Calibration:
        """The entry for a frame run with ``crops`` crops: the table's entry for that count, else
        the one nearest in log2 (a tie goes to the larger count), else this single entry (files
        without a table). The rule of ``posenet_train.uncertainty.calibration_for_crops``."""
        if not self.by_crops:
            return self
        n = math.log2(max(crops, 1))
        return self.by_crops[min(self.by_crops, key=lambda k: (abs(math.log2(k) - n), -k))]

    def entry(self) -> dict[str, Any]:
        """The JSON object of this calibration (``by_crops`` only when there is a table)."""
        d: dict[str, Any] = {
            "position_scale": self.position_scale,
            "orientation_scale": self.orientation_scale,
            "reference_position_std": self.reference_position_std,
            "frames": self.frames,
        }
        if self.by_crops:
            d[BY_CROPS_KEY] = {str(n): self.by_crops[n].entry() for n in sorted(self.by_crops)}
        return d


@dataclass(frozen=True)
class Contract:
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    output: OutputSpec = field(default_factory=OutputSpec)
    scene: SceneInfo = field(default_factory=SceneInfo)
    camera_convention: str = CAMERA_CONVENTION
    uncertainty_modes: tuple[str, ...] = ("fixed", "crops")
    calibration: dict[str, Calibration] = field(default_factory=dict)  # per uncertainty mode
    training: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    version: int = CONTRACT_VERSION
    # The training images' camera (at their size): the field of view the network learned, which
    # the node compares with the live camera's CameraInfo. None: exported before it was recorded.
    camera: Camera | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["calibration"] = {mode: cal.entry() for mode, cal in self.calibration.items()}
        if self.camera is None:
            del d["camera"]  # files without a camera stay as they were
        else:  # the fields of view for people reading `posenet-ros info`; readers ignore them
            fov = {"hfov_deg": round(self.camera.hfov_deg, 3), "vfov_deg": round(self.camera.vfov_deg, 3)}
            d["camera"] = {**self.camera.to_dict(), **fov}
        d["format"] = CONTRACT_FORMAT
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    @staticmethod
    def from_json(text: str | bytes) -> Contract:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ContractError(f"contract is not valid JSON: {exc}") from None
        return Contract.from_dict(data)

    @staticmethod
    def from_dict(data: Any) -> Contract:
        """Validate and build. Every failure is a ContractError naming the field."""
        if not isinstance(data, dict):
            raise ContractError("contract must be a JSON object")
        if data.get("format") != CONTRACT_FORMAT:
            raise ContractError(f"contract field 'format' must be {CONTRACT_FORMAT!r}, got {data.get('format')!r}")
        version = _int(data, "version", minimum=1)
        if version not in SUPPORTED_VERSIONS:
            raise ContractError(
                f"contract field 'version': unsupported version {version} (this code reads {SUPPORTED_VERSIONS})"
            )
        pre = _obj(data, "preprocessing")
        out = _obj(data, "output")
        scene = _obj(data, "scene")
        preprocessing = Preprocessing(
            input_height=_int(pre, "input_height", minimum=16, where="preprocessing"),
            input_width=_int(pre, "input_width", minimum=16, where="preprocessing"),
            resize_shortest_side=_int(pre, "resize_shortest_side", minimum=16, where="preprocessing"),
            interpolation=_choice(pre, "interpolation", INTERPOLATIONS, where="preprocessing"),
            channel_order=_choice(pre, "channel_order", CHANNEL_ORDERS, where="preprocessing"),
            mean=_floats(pre, "mean", 3, where="preprocessing"),
            std=_floats(pre, "std", 3, where="preprocessing", positive=True),
        )
        if preprocessing.resize_shortest_side < min(preprocessing.input_height, preprocessing.input_width):
            raise ContractError("contract field 'preprocessing.resize_shortest_side' is smaller than the crop")
        output = OutputSpec(
            layout=_choice(out, "layout", (OUTPUT_LAYOUT,), where="output"),
            position_offset=_floats(out, "position_offset", 3, where="output"),
            position_scale=_floats(out, "position_scale", None, where="output", positive=True)[0],
        )
        scene_info = SceneInfo(
            name=_str(scene, "name", where="scene"),
            extent=_floats(scene, "extent", 3, where="scene", positive=True),
        )
        modes = data.get("uncertainty_modes")
        if not isinstance(modes, list) or not modes or any(m not in UNCERTAINTY_MODES for m in modes):
            raise ContractError(f"contract field 'uncertainty_modes' must be a non-empty list from {UNCERTAINTY_MODES}")
        training = data.get("training")
        if not isinstance(training, dict):
            raise ContractError("contract field 'training' must be an object")
        calibration = _calibration(data.get("calibration", {}), tuple(modes))
        camera = None
        if data.get("camera") is not None:
            camera = Camera.from_dict(data["camera"], "contract field 'camera'", ContractError)
        return Contract(
            preprocessing=preprocessing,
            output=output,
            scene=scene_info,
            camera_convention=_choice(data, "camera_convention", (CAMERA_CONVENTION,)),
            uncertainty_modes=tuple(modes),
            calibration=calibration,
            training=training,
            code_version=_str(data, "code_version", allow_empty=True),
            version=version,
            camera=camera,
        )


def _calibration(data: Any, modes: tuple[str, ...]) -> dict[str, Calibration]:
    """Optional (files from before calibration existed have none)."""
    if not isinstance(data, dict):
        raise ContractError("contract field 'calibration' must be an object")
    out = {}
    for mode, entry in data.items():
        where = f"calibration.{mode}"
        if mode not in modes:
            raise ContractError(f"contract field '{where}': mode not in uncertainty_modes {modes}")
        by_crops = {}
        if BY_CROPS_KEY in _calibration_obj(entry, where):
            if mode != "crops":
                raise ContractError(f"contract field '{where}.{BY_CROPS_KEY}': a crop-count table is for crops mode")
            by_crops = _crop_table(entry[BY_CROPS_KEY], f"{where}.{BY_CROPS_KEY}")
        out[mode] = _calibration_entry(entry, where, by_crops)
    return out


def _calibration_obj(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ContractError(f"contract field '{where}' must be an object")
    return entry


def _calibration_entry(entry: dict[str, Any], where: str, by_crops: dict[int, Calibration]) -> Calibration:
    return Calibration(
        position_scale=_floats(entry, "position_scale", None, where, positive=True)[0],
        orientation_scale=_floats(entry, "orientation_scale", None, where, positive=True)[0],
        reference_position_std=_floats(entry, "reference_position_std", None, where, positive=True)[0],
        frames=_int(entry, "frames", minimum=0, where=where),
        by_crops=by_crops,
    )


def _crop_table(data: Any, where: str) -> dict[int, Calibration]:
    """{crop count: calibration}; JSON keys are the counts written in decimal ("2", "16")."""
    if not isinstance(data, dict):
        raise ContractError(f"contract field '{where}' must be an object keyed by crop count")
    table = {}
    for key, entry in data.items():
        text = str(key)
        if isinstance(key, bool) or not (text.isascii() and text.isdecimal()) or int(text) < MIN_TABLE_CROPS:
            raise ContractError(f"contract field '{where}': key {key!r} is not a crop count >= {MIN_TABLE_CROPS}")
        n = int(text)
        if n in table:
            raise ContractError(f"contract field '{where}': crop count {n} appears twice")
        name = f"{where}.{text}"
        if BY_CROPS_KEY in _calibration_obj(entry, name):
            raise ContractError(f"contract field '{name}.{BY_CROPS_KEY}': crop-count tables do not nest")
        table[n] = _calibration_entry(entry, name, {})
    return dict(sorted(table.items()))


def _name(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _get(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ContractError(f"contract field '{_name(where, key)}' is missing")
    return d[key]


def _obj(d: dict[str, Any], key: str) -> dict[str, Any]:
    v = _get(d, key, "")
    if not isinstance(v, dict):
        raise ContractError(f"contract field '{key}' must be an object, got {type(v).__name__}")
    return v


def _int(d: dict[str, Any], key: str, minimum: int, where: str = "") -> int:
    v = _get(d, key, where)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ContractError(f"contract field '{_name(where, key)}' must be an integer, got {type(v).__name__}")
    if v < minimum:
        raise ContractError(f"contract field '{_name(where, key)}' must be >= {minimum}, got {v}")
    return v


def _str(d: dict[str, Any], key: str, where: str = "", allow_empty: bool = False) -> str:
    v = _get(d, key, where)
    if not isinstance(v, str) or (not v and not allow_empty):
        raise ContractError(f"contract field '{_name(where, key)}' must be a non-empty string")
    return v


def _choice(d: dict[str, Any], key: str, choices: tuple[str, ...], where: str = "") -> str:
    v = _get(d, key, where)
    if v not in choices:
        raise ContractError(f"contract field '{_name(where, key)}' must be one of {choices}, got {v!r}")
    return v


def _floats(d: dict[str, Any], key: str, n: int | None, where: str = "", positive: bool = False) -> tuple[float, ...]:
    """n numbers as a list, or one scalar number when n is None; finite, optionally > 0."""
    name = _name(where, key)
    v = _get(d, key, where)
    values = [v] if n is None else v
    if n is not None and (not isinstance(v, list) or len(v) != n):
        raise ContractError(f"contract field '{name}' must be a list of {n} numbers")
    for x in values:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ContractError(f"contract field '{name}' must hold numbers, got {type(x).__name__}")
        if not math.isfinite(x):
            raise ContractError(f"contract field '{name}' must be finite, got {x}")
        if positive and x <= 0:
            raise ContractError(f"contract field '{name}' must be > 0, got {x}")
    return tuple(float(x) for x in values)
