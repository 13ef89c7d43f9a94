"""Export -> load -> run round trip, atomic writes, and refusal of files without a contract."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from conftest import TinyPoseNet, small_contract
from torch import nn

from posenet_ros.contract import EXTRA_FILE_NAME, Contract
from posenet_ros.engine import ModelLoadError, load_model
from posenet_ros.export import export_torchscript


def test_round_trip_matches_eager_within_1e5(posenet_file) -> None:
    path, model = posenet_file
    module, contract = load_model(path)
    assert contract.scene.name == "fixture"
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)
        out = module(x)
    assert ref[:, :3].abs().max() > 0.05, "fixture model must give non-trivial outputs"
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_round_trip_of_channels_last_input(posenet_file) -> None:
    path, model = posenet_file
    module, _ = load_model(path)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(module(x.contiguous(memory_format=torch.channels_last)), model(x), atol=1e-5, rtol=0)


def test_export_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    export_torchscript(TinyPoseNet(), small_contract(), target)
    before = target.read_bytes()

    class Unscriptable(nn.Module):
        def forward(self, x):  # no annotations + dynamic attribute: torch.jit.script refuses it
            return self.missing_attribute(x)

    with pytest.raises(RuntimeError):
        export_torchscript(Unscriptable(), small_contract(), target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_failure_while_writing_keeps_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "model.pt"
    export_torchscript(TinyPoseNet(), small_contract(), target)
    before = target.read_bytes()

    def broken_save(module, f, _extra_files=None):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch.jit, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_torchscript(TinyPoseNet(), small_contract(), target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_file_without_contract_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.script(TinyPoseNet().eval()), str(path))
    with pytest.raises(ModelLoadError, match="no posenet contract") as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_file_with_invalid_contract_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    text = small_contract().to_json().replace('"input_height": 64', '"input_height": "64"')
    torch.jit.save(torch.jit.script(TinyPoseNet().eval()), str(path), _extra_files={EXTRA_FILE_NAME: text})
    with pytest.raises(ModelLoadError, match=r"preprocessing\.input_height"):
        load_model(path)


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04truncated"])
def test_non_torchscript_file_is_refused_on_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="not a TorchScript file") as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nope.pt")


def test_contract_survives_export(tmp_path: Path) -> None:
    contract = small_contract(position_offset=(1.0, 2.0, 3.0), position_scale=0.5)
    _, loaded = load_model(export_torchscript(TinyPoseNet(), contract, tmp_path / "m.pt"))
    assert loaded == Contract.from_json(contract.to_json())


def test_exported_file_is_readable_by_others_per_umask(tmp_path: Path) -> None:
    """Models are installed and run by other users: not the owner-only mode of a temp file."""
    old = os.umask(0o022)
    try:
        path = export_torchscript(TinyPoseNet().eval(), small_contract(), tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
