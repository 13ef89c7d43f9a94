"""`posenet-ros` command line: bench output and JSON, model info, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from posenet_ros.cli import main


def test_bench_suite_writes_every_case_with_baselines(tiny_file, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(tiny_file[0]), "--iterations", "4", "--memory-frames", "5,10"]
    assert main([*args, "--replay-frames", "6", "--paced-frames", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for text in (
        "baseline (copy, PIL",
        "speed-up",
        "preprocessing",
        "dense crops",
        "replay",
        "memory",
        "paced at 10 Hz",
    ):
        assert text in printed
    data = json.loads(out.read_text())
    assert data["ours_ms"] > 0 and data["baseline_ms"] > 0
    assert abs(data["ratio"] - data["baseline_ms"] / data["ours_ms"]) < 1e-9
    assert set(data["end_to_end"]) == {"640x480", "1920x1080"}
    assert data["end_to_end"]["640x480"]["ours_ms"] == data["ours_ms"]
    assert set(data["end_to_end"]["640x480"]["paths"]) == {"torchscript", "onnxruntime", "onnxruntime-int8", "baseline"}
    assert data["end_to_end"]["640x480"]["ours_backend"] in ("torchscript", "onnxruntime")  # float32 only
    assert abs(data["int8_ratio"] - data["baseline_ms"] / data["int8_ms"]) < 1e-9 and "int8" in printed
    assert data["preprocess"]["ratio"] > 0 and set(data["dense_crops"]["ms_per_frame"]) == {"1", "8", "32", "128"}
    assert set(data["dense_crops"]["budget_choice"]) == {"50", "100"}
    assert data["replay"]["torchscript"]["frames"] == 6 and data["replay"]["torchscript"]["frames_per_s"] > 0
    assert data["memory"]["rss_after_10_frames_mb"] > 0 and data["memory"]["peak_rss_mb"] > 0
    assert set(data["paced"]["paths"]) == {"torchscript", "onnxruntime", "onnxruntime-int8"}
    assert all(v["median_ms"] > 0 and v["cpu_percent_of_one_core"] > 0 for v in data["paced"]["paths"].values())
    assert data["torch"] and data["threads"] == 2 and data["device"] == "cpu" and data["dtype"] == "fp32"
    assert data["gpu"]["measured"] == torch.cuda.is_available()  # all cases run by default, the GPU one too
    # Issue 16: the CPU's ISA, case 1 per precision, what auto picked, bf16/int8 against fp32 (test_bench_precision).
    assert data["isa"]["summary"] and set(data["end_to_end"]["640x480"]["precisions"]) == {
        "fp32",
        "bf16",
        "int8",
        "auto",
    }
    assert data["auto"]["precision"] in ("fp32", "bf16") and data["agreement_with_fp32"]["int8"]["measured"]


def test_bench_gpu_case_runs_on_the_device_it_is_given(tiny_file, tmp_path: Path, capsys) -> None:
    """On a CUDA machine the case times fp32/fp16/bf16; on the CPU (the engine's reduced precision is
    CUDA-only) it times fp32 and still measures how far fp16 and bf16 move the pose."""
    out = tmp_path / "gpu.json"
    args = ["bench", "--model", str(tiny_file[0]), "--cases", "gpu", "--gpu-device", "cpu", "--iterations", "3"]
    assert main([*args, "--backends", "torchscript", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    g = json.loads(out.read_text())["gpu"]
    assert g["measured"] and g["device"] == "cpu" and g["ours_precision"] == "fp32"
    assert set(g["paths"]) == {"baseline", "fp32"} and abs(g["ratio"] - g["baseline_ms"] / g["ours_ms"]) < 1e-9
    assert g["crops"] == 128 and g["dense_ms_per_frame"]["fp32"]["median_ms"] > g["ours_ms"]
    assert set(g["not_timed"]) == {"fp16", "bf16"} and "needs a CUDA device" in g["not_timed"]["fp16"]
    for precision in ("fp16", "bf16"):
        a = g["agreement_with_fp32"][precision]
        assert a["frames"] == 8 and a["non_finite"] == 0
        assert 0 < a["position_median_m"] <= a["position_max_m"] < 0.1 and a["rotation_max_deg"] < 5.0
    assert "7. gpu cpu" in printed and "fp16 vs fp32 over 8 frames" in printed and "bf16 not timed" in printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report when there is no GPU")
def test_bench_gpu_case_without_cuda_says_not_measured(tiny_file, capsys) -> None:
    assert main(["bench", "--model", str(tiny_file[0]), "--cases", "gpu", "--backends", "torchscript"]) == 0
    assert "gpu case not measured: device 'cuda' requested but CUDA is not available" in capsys.readouterr().out


def test_bench_refuses_unknown_cases_and_paths(capsys) -> None:
    assert main(["bench", "--cases", "e2e,warp"]) == 2
    assert "unknown bench case" in capsys.readouterr().err
    assert main(["bench", "--backends", "torchscript,tensorrt"]) == 2
    assert "--backends must be a comma list of torchscript, onnxruntime, onnxruntime-int8" in capsys.readouterr().err
    assert main(["bench", "--gpu-device", "tpu"]) == 2
    assert "--gpu-device must be cuda, cuda:N or cpu, got 'tpu'" in capsys.readouterr().err


def test_info_prints_a_summary_and_with_json_the_whole_contract(tiny_file, capsys) -> None:
    assert main(["info", str(tiny_file[0])]) == 0
    text = capsys.readouterr().out
    assert "TorchScript PoseNet for scene 'test_scene'" in text and "input          64x64 crop" in text
    assert "weights        float32" in text and not text.lstrip().startswith("{")
    assert main(["info", "--json", str(tiny_file[0])]) == 0
    data = json.loads(capsys.readouterr().out)  # the whole output is one JSON document
    assert data["scene"]["name"] == "test_scene" and data["quantization"] is None
    assert "camera         not recorded" in text  # the fixture's contract has no training camera


def test_info_shows_the_training_camera_and_its_field_of_view(tiny_file, tmp_path: Path, capsys) -> None:
    import dataclasses

    from conftest import small_contract

    from posenet_ros.camera import Camera
    from posenet_ros.export import rewrite_contract

    camera = Camera(256, 192, 200.92, 200.92, 127.5, 95.5, (-0.1, 0.02))
    contract = dataclasses.replace(small_contract(), camera=camera)
    path = rewrite_contract(tiny_file[0], tmp_path / "with_camera.pt", contract)
    assert main(["info", str(path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  camera"))
    assert "256x192, fx 200.9 fy 200.9, cx 127.5 cy 95.5, distortion -0.1000 0.0200 0.0000 0.0000" in line
    assert f"field of view {camera.hfov_deg:.1f} x {camera.vfov_deg:.1f} deg" in line


def test_info_on_a_bad_file_is_one_line_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.pt"
    bad.write_text("nope")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posenet-ros: error:") and "\n" not in err


def test_calibrate_writes_under_out_by_default_never_next_to_the_model() -> None:
    from posenet_train.cli import default_calibrated_path

    out = default_calibrated_path(Path("models/posenet_demo.pt"))
    assert out == Path("out/calibrated/posenet_demo_calibrated.pt")
