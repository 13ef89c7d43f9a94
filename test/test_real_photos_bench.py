"""``benchmarks/bench_real_photos.py`` end to end on rendered frames instead of photographs, so the
script cannot rot: label-sfm of the folder (its cameras.json), queries held out of the map, the map
built with that camera's distortion, refined from both coarse poses, errors as a share of the camera
spread (issue 17). The figures on real photographs are in docs/refinement.md; here the bound is
looser (2%) since the SfM reference of 30 small rendered frames is itself that coarse and varies a
little from run to run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from posenet_train.synth import SynthConfig, render_dataset

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_real_photos.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_real_photos", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_held_out_rendered_frames_are_refined_against_a_map_without_them(tmp_path: Path) -> None:
    bench = load_bench()
    cfg = SynthConfig(
        train_sequences=1, test_sequences=0, frames_per_sequence=30, width=240, height=180, heading_spread_deg=40
    )
    render_dataset(cfg, tmp_path / "room", progress=False)
    lines: list[str] = []
    out = bench.run_bench(tmp_path / "room" / "seq-01", tmp_path / "work", bench.BenchConfig(hold_out=3), lines.append)
    assert out["registered"] >= 27 and len(out["maps"]) == 1 and out["maps"][0]["map_images"] == out["registered"] - 3
    queries = set(out["maps"][0]["queries"])
    assert len(queries) == 3 and {r["query"] for r in out["rows"]} == queries
    # The map keeps label-sfm's camera, distortion included (SIMPLE_RADIAL's k1): no pinhole stand-in.
    assert out["camera"]["distortion"] and out["maps"][0]["map_distortion"] == list(out["camera"]["distortion"])
    assert {r["coarse"] for r in out["rows"]} == set(bench.COARSE_MODES) and len(out["rows"]) == 6
    perturbed = [r for r in out["rows"] if r["coarse"] == "perturbed"]
    assert all(r["refined"] and r["pos_frac"] < 0.02 and r["rot_deg"] < 1.0 for r in perturbed), lines
    assert out["summary"]["perturbed"]["refined"] == 3
    assert any(line.startswith("summary [nearest]") for line in lines)
