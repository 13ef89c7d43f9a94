"""The model contract: round trip and one-line errors that name the field."""

from __future__ import annotations

import copy
import json

import pytest

from posenet_ros.contract import Contract, ContractError, OutputSpec, Preprocessing, SceneInfo


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
