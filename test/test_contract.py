"""The model contract: round trip and one-line errors that name the field."""

from __future__ import annotations

import copy
import json

import pytest

from posenet_ros.contract import Calibration, Contract, ContractError, OutputSpec, Preprocessing, SceneInfo


def valid() -> dict:
    c = Contract(
        preprocessing=Preprocessing(input_height=160, input_width=200, resize_shortest_side=180, channel_order="bgr"),
        output=OutputSpec(position_offset=(1.0, 2.0, 3.0), position_scale=4.5),
        scene=SceneInfo(name="kings_college", extent=(120.0, 80.0, 12.0)),
        uncertainty_modes=("fixed", "crops"),
        training={"dataset": "cambridge", "epochs": 3},
        code_version="0.1.0",
    )
    return json.loads(c.to_json())


def test_round_trip_preserves_everything() -> None:
    data = valid()
    contract = Contract.from_dict(data)
    assert json.loads(contract.to_json()) == data
    assert Contract.from_json(contract.to_json()) == contract
    assert contract.preprocessing.channel_order == "bgr"
    assert contract.output.position_scale == 4.5


def _set(path: str, value):
    def apply(d: dict) -> None:
        *parents, leaf = path.split(".")
        for p in parents:
            d = d[p]
        if value is _DELETE:
            del d[leaf]
        else:
            d[leaf] = value

    return apply


_DELETE = object()

CASES = [
    ("version", 99, "version"),
    ("version", "1", "version"),
    ("format", "something_else", "format"),
    ("preprocessing", _DELETE, "preprocessing"),
    ("preprocessing.mean", _DELETE, "preprocessing.mean"),
    ("preprocessing.mean", [0.5, 0.5], "preprocessing.mean"),
    ("preprocessing.mean", [0.5, "x", 0.5], "preprocessing.mean"),
    ("preprocessing.mean", [0.5, float("nan"), 0.5], "preprocessing.mean"),
    ("preprocessing.std", [0.5, 0.0, 0.5], "preprocessing.std"),
    ("preprocessing.input_height", 224.0, "preprocessing.input_height"),
    ("preprocessing.input_height", True, "preprocessing.input_height"),
    ("preprocessing.input_width", 4, "preprocessing.input_width"),
    ("preprocessing.resize_shortest_side", 100, "preprocessing.resize_shortest_side"),
    ("preprocessing.interpolation", "cubic", "preprocessing.interpolation"),
    ("preprocessing.channel_order", "rgba", "preprocessing.channel_order"),
    ("output.layout", "wxyz_xyz", "output.layout"),
    ("output.position_scale", float("inf"), "output.position_scale"),
    ("output.position_scale", -1.0, "output.position_scale"),
    ("output.position_offset", [0, 0, None], "output.position_offset"),
    ("scene.name", "", "scene.name"),
    ("scene.extent", [1.0, -2.0, 3.0], "scene.extent"),
    ("camera_convention", "world_to_camera", "camera_convention"),
    ("uncertainty_modes", ["bayesian"], "uncertainty_modes"),
    ("uncertainty_modes", [], "uncertainty_modes"),
    ("training", "lots", "training"),
    ("code_version", 3, "code_version"),
]


@pytest.mark.parametrize(("path", "value", "field"), CASES, ids=[f"{p}={v!r}" for p, v, _ in CASES])
def test_invalid_field_is_named_on_one_line(path: str, value, field: str) -> None:
    data = copy.deepcopy(valid())
    _set(path, value)(data)
    with pytest.raises(ContractError) as info:
        Contract.from_dict(data)
    message = str(info.value)
    assert f"'{field}'" in message
    assert "\n" not in message


def test_nan_in_json_text_is_refused() -> None:
    text = json.dumps(valid()).replace('"position_scale": 4.5', '"position_scale": NaN')
    with pytest.raises(ContractError, match=r"output\.position_scale"):
        Contract.from_json(text)


@pytest.mark.parametrize("text", ["", "{not json", "[1, 2]", b"\xff\xfe"])
def test_garbage_is_refused(text) -> None:
    with pytest.raises(ContractError):
        Contract.from_json(text)


def test_export_refuses_a_contract_it_could_not_load(tmp_path) -> None:
    from conftest import TinyPoseNet

    from posenet_ros.export import export_torchscript

    bad = Contract(scene=SceneInfo(name="x", extent=(0.0, 1.0, 1.0)))
    with pytest.raises(ContractError, match=r"scene\.extent"):
        export_torchscript(TinyPoseNet(), bad, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def with_crop_table() -> dict:
    """valid() with a crops-mode calibration and its per-crop-count table, as calibrate writes it."""
    data = valid()
    entry = {"position_scale": 2.0, "orientation_scale": 3.0, "reference_position_std": 0.2, "frames": 40}
    table = {str(n): {**entry, "position_scale": float(n)} for n in (2, 4, 16, 128)}
    data["calibration"] = {"crops": {**entry, "by_crops": table}}
    return data


def test_crop_count_table_round_trips_and_old_files_do_not_gain_one() -> None:
    """Issue 18, defect 5: calibration.crops.by_crops is parsed into Calibration.by_crops (integer
    keys) and written back as calibrate writes it; a file without a table reads and writes as before."""
    data = with_crop_table()
    contract = Contract.from_dict(data)
    cal = contract.calibration["crops"]
    assert (cal.position_scale, cal.frames) == (2.0, 40) and list(cal.by_crops) == [2, 4, 16, 128]
    assert cal.by_crops[128] == Calibration(128.0, 3.0, 0.2, 40) and cal.by_crops[4].by_crops == {}
    assert json.loads(contract.to_json()) == data
    assert Contract.from_json(contract.to_json()).calibration["crops"].by_crops == cal.by_crops
    # Equality and hashing compare the single entry: what readers without the table use.
    assert cal == Calibration(2.0, 3.0, 0.2, 40) and hash(cal) == hash(Calibration(2.0, 3.0, 0.2, 40))
    del data["calibration"]["crops"]["by_crops"]
    old = Contract.from_dict(data)
    assert old.calibration["crops"].by_crops == {} and json.loads(old.to_json()) == data
    assert "by_crops" not in old.to_json()


def test_crop_count_lookup_is_exact_else_nearest_in_log2_ties_to_the_larger() -> None:
    cal = Contract.from_dict(with_crop_table()).calibration["crops"]  # table at 2, 4, 16, 128
    counts = (1, 2, 3, 4, 6, 8, 10, 16, 32, 64, 100, 128, 500)
    picked = {n: int(cal.for_crops(n).position_scale) for n in counts}
    # 8 is one octave from 4 and from 16: the tie goes to 16.
    expected = (2, 2, 4, 4, 4, 16, 16, 16, 16, 128, 128, 128, 128)
    assert picked == dict(zip(counts, expected, strict=True))
    single = Calibration(2.0, 3.0, 0.2, 40)
    assert single.for_crops(16) is single  # no table: the single entry at every count


TABLE = ("calibration", "crops", "by_crops")
BAD_TABLES = [
    (TABLE, [1, 2], "calibration.crops.by_crops"),
    ((*TABLE, "1"), {"position_scale": 1.0}, "calibration.crops.by_crops"),
    ((*TABLE, "x"), {}, "calibration.crops.by_crops"),
    ((*TABLE, "-4"), {}, "calibration.crops.by_crops"),
    ((*TABLE, "8.0"), {}, "calibration.crops.by_crops"),
    ((*TABLE, "004"), {}, "calibration.crops.by_crops"),  # a second 4
    ((*TABLE, "4"), "big", "calibration.crops.by_crops.4"),
    ((*TABLE, "4", "position_scale"), 0.0, "calibration.crops.by_crops.4.position_scale"),
    ((*TABLE, "4", "orientation_scale"), float("nan"), "calibration.crops.by_crops.4.orientation_scale"),
    ((*TABLE, "4", "reference_position_std"), _DELETE, "calibration.crops.by_crops.4.reference_position_std"),
    ((*TABLE, "4", "frames"), -1, "calibration.crops.by_crops.4.frames"),
    ((*TABLE, "4", "by_crops"), {}, "calibration.crops.by_crops.4.by_crops"),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD_TABLES, ids=[".".join(p[2:]) for p, _, _ in BAD_TABLES])
def test_invalid_crop_count_table_is_named_on_one_line(path: tuple[str, ...], value, field: str) -> None:
    data = with_crop_table()
    d = data
    for key in path[:-1]:
        d = d[key]
    if value is _DELETE:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    with pytest.raises(ContractError) as info:
        Contract.from_dict(data)
    assert f"'{field}'" in str(info.value) and "\n" not in str(info.value)


def test_crop_count_table_outside_crops_mode_is_refused() -> None:
    data = with_crop_table()
    data["uncertainty_modes"] = ["fixed", "crops", "mc_dropout"]
    data["calibration"]["mc_dropout"] = data["calibration"].pop("crops")
    with pytest.raises(ContractError, match=r"'calibration\.mc_dropout\.by_crops'.*crops mode$"):
        Contract.from_dict(data)
