"""`posenet-ros bench` per precision (issue 16): the CPU's ISA in the machine section; case 1's rows
for fp32, bf16 (where native, else "not native" with the engine's reason), int8 and auto (with the
precision it picked and why); and how far bf16 and int8 move each frame's pose from fp32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import posenet_ros.bench as bench
import posenet_ros.engine as engine
from posenet_ros.cli import main


def test_isa_names_come_from_the_cpu_flags(monkeypatch) -> None:
    isa = bench.cpu_isa({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "fma"})
    assert isa["AVX2"] and isa["AVX-512"] and isa["AVX512-BF16"] and isa["AVX512-VNNI"]
    assert not isa["AMX-BF16"] and not isa["AMX-INT8"]
    assert isa["summary"] == "AVX2, AVX-512, AVX512-VNNI, AVX512-BF16"
    amx = bench.cpu_isa({"avx2", "amx_tile", "amx_bf16", "amx_int8"})
    assert amx["AMX-BF16"] and amx["AMX-INT8"] and not amx["AVX-512"]
    assert not bench.cpu_isa({"amx_bf16"})["AMX-BF16"]  # no tiles, no AMX
    assert bench.cpu_isa(set())["summary"].startswith("none of AVX2/")
    monkeypatch.setattr(bench, "cpu_flags", lambda: None)
    unknown = bench.cpu_isa()
    assert unknown["AVX2"] is None and unknown["summary"].startswith("unknown")


def _run_e2e(tiny_file, tmp_path: Path, capsys) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(tiny_file[0]), "--cases", "e2e", "--iterations", "3", "--json", str(out)]
    assert main(args) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def _check_common(data: dict, printed: str) -> None:
    # The keys from before issue 16 are all still there, with the same meaning.
    for key in ("ours_ms", "baseline_ms", "ratio", "int8_ms", "int8_ratio", "cpu_native_bf16", "dtype"):
        assert key in data
    assert set(data["isa"]) >= {"AVX2", "AVX-512", "AVX512-BF16", "AMX-BF16", "summary"}
    assert f"ISA: {data['isa']['summary']}" in printed
    for size in ("640x480", "1920x1080"):
        e = data["end_to_end"][size]
        assert set(e["paths"]) == {"torchscript", "onnxruntime", "onnxruntime-int8", "baseline"}
        rows = e["precisions"]
        assert set(rows) == {"fp32", "bf16", "int8", "auto"}
        assert rows["fp32"]["path"] == e["ours_backend"] and rows["fp32"]["median_ms"] == e["ours_ms"]
        assert rows["int8"]["median_ms"] == e["int8_ms"] and rows["int8"]["path"] == "onnxruntime-int8"
        for row in (rows["fp32"], rows["int8"], rows["auto"]):
            assert 0 < row["median_ms"] <= row["p95_ms"]
            assert abs(row["ratio"] - e["baseline_ms"] / row["median_ms"]) < 1e-9
        assert rows["auto"]["precision"] == data["auto"]["precision"] and e["auto_ms"] == rows["auto"]["median_ms"]
    assert data["auto_ms"] == data["end_to_end"]["640x480"]["auto_ms"]
    auto = data["auto"]
    assert auto["measured"] and auto["precision"] in ("fp32", "bf16") and auto["reason"].startswith(auto["precision"])
    assert f"precision auto picked {auto['precision']}: {auto['reason']}" in printed
    int8 = data["agreement_with_fp32"]["int8"]
    assert int8["measured"] and int8["reference"] == "onnxruntime" and int8["frames"] == bench.AGREEMENT_FRAMES
    assert int8["dropped"] == 0 and 0 <= int8["position_median_mm"] <= int8["position_max_mm"]
    assert 0 <= int8["rotation_median_deg"] <= int8["rotation_max_deg"] < 5.0
    assert "int8 (onnxruntime-int8) vs fp32 (onnxruntime) over 16 frames" in printed


def test_bench_reports_every_precision_this_cpu_runs(tiny_file, tmp_path: Path, capsys) -> None:
    data, printed = _run_e2e(tiny_file, tmp_path, capsys)
    _check_common(data, printed)
    native = engine.cpu_bf16_support()
    bf16 = data["end_to_end"]["640x480"]["precisions"]["bf16"]
    agreement = data["agreement_with_fp32"]["bf16"]
    if native is None:  # the same report as the forced case below
        assert bf16["native"] is None and bf16["reason"].startswith("not native: precision bf16 on the CPU needs")
        assert not agreement["measured"] and agreement["reason"] == bf16["reason"]
        assert data["auto"]["precision"] == "fp32"
        return
    assert bf16["native"] == native == data["cpu_native_bf16"] and bf16["path"] == "torchscript-bf16"
    assert 0 < bf16["median_ms"] <= bf16["p95_ms"] and bf16["speedup_over_fp32_torchscript"] > 0
    assert set(data["auto"]["trials"]) == {"fp32", "bf16"}
    assert agreement["measured"] and agreement["reference"] == "torchscript" and agreement["dropped"] == 0
    # bf16 keeps ~3 significant digits: the tiny model's poses (metres, scale 3) move by mm, not metres.
    assert 0 < agreement["position_median_mm"] <= agreement["position_max_mm"] < 100.0
    assert agreement["rotation_max_deg"] < 5.0
    assert "bf16 (torchscript-bf16" in printed and "bf16 (torchscript-bf16) vs fp32 (torchscript)" in printed


def test_bench_on_a_cpu_without_native_bf16_says_not_native(tiny_file, tmp_path: Path, capsys, monkeypatch) -> None:
    """Any CPU: with native bf16 hidden, the bf16 rows say "not native" with the engine's one-line
    reason, auto keeps fp32 and says so, and int8 is still measured."""
    monkeypatch.setattr(engine, "cpu_bf16_support", lambda: None)
    monkeypatch.setattr(bench, "cpu_bf16_support", lambda: None)
    data, printed = _run_e2e(tiny_file, tmp_path, capsys)
    _check_common(data, printed)
    for size in ("640x480", "1920x1080"):
        bf16 = data["end_to_end"][size]["precisions"]["bf16"]
        assert bf16 == {
            "native": None,
            "reason": "not native: precision bf16 on the CPU needs native bf16 (AMX-BF16 or AVX512-BF16), which "
            "this CPU lacks (emulated bf16 is slower than fp32); use fp32 or auto",
        }
    assert data["cpu_native_bf16"] is None
    assert data["agreement_with_fp32"]["bf16"]["measured"] is False
    assert data["agreement_with_fp32"]["bf16"]["reason"].startswith("not native: ")
    assert data["auto"]["precision"] == "fp32" and "no reduced precision runs natively" in data["auto"]["reason"]
    assert data["auto"]["trials"] == {}
    assert "bf16 vs fp32: not native: precision bf16 on the CPU needs native bf16" in printed


@pytest.mark.parametrize("backends", ["onnxruntime,onnxruntime-int8"])
def test_bench_without_torchscript_says_what_it_did_not_measure(tiny_file, tmp_path: Path, backends, capsys) -> None:
    out = tmp_path / "b.json"
    args = ["bench", "--model", str(tiny_file[0]), "--cases", "e2e", "--iterations", "2", "--backends", backends]
    assert main([*args, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["end_to_end"]["640x480"]["precisions"]
    assert set(rows) == {"fp32", "bf16", "int8"} and rows["fp32"]["path"] == "onnxruntime"
    assert "torchscript backend" in rows["bf16"]["reason"] and not data["auto"]["measured"]
    assert "auto_ms" not in data and data["agreement_with_fp32"]["int8"]["measured"]
    assert not data["agreement_with_fp32"]["bf16"]["measured"]
