"""`posenet-ros` command line: bench output and JSON, model info, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from posenet_ros.bench import run_engine_bench
from posenet_ros.cli import main


def test_bench_reports_both_paths_and_their_ratio(tiny_file, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(tiny_file[0]), "--iterations", "4", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "baseline (PIL + eager)" in printed and "speed-up" in printed
    data = json.loads(out.read_text())
    assert data["ours_ms"] > 0 and data["baseline_ms"] > 0
    assert abs(data["ratio"] - data["baseline_ms"] / data["ours_ms"]) < 1e-9
    assert data["torch"] and data["threads"] == 2 and data["device"] == "cpu"


def test_bench_default_model_is_a_real_posenet() -> None:
    result = run_engine_bench(None, iterations=2, rounds=1)
    assert result.frames == 2 and result.ours_inference_ms > result.ours_preprocess_ms


def test_info_prints_the_contract(tiny_file, capsys) -> None:
    assert main(["info", str(tiny_file[0])]) == 0
    assert json.loads(capsys.readouterr().out)["scene"]["name"] == "test_scene"


def test_info_on_a_bad_file_is_one_line_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.pt"
    bad.write_text("nope")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posenet-ros: error:") and "\n" not in err
