"""Bayesian PoseNet's own sampling (issue 18, defect 6): per sample a random crop of the resized
frame and dropout on the inception5b output as well as after the final fully connected layer
(``PoseNet.mc_dropout_crops``, the engine's ``mc_sampling`` "paper"); files exported before it keep
the head-only sampling of the centre crop. Nothing here asserts figures that depend on the CPU:
samples are compared with each other and with reruns on the same machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomized_posenet, small_contract

from posenet_ros.engine import Engine, EngineConfig, EngineError, cast_frozen_constants, load_model
from posenet_ros.export import export_torchscript
from posenet_ros.model import PoseNet, PoseNetConfig, sampled_dropout
from posenet_ros.preprocess import CpuPreprocessor
from posenet_train.export_model import mc_dropout_record

MC = dict(device="cpu", uncertainty="mc_dropout", warmup_iters=1, mc_sampling="auto")


def export(tmp: Path, name: str, feature: float = 0.5, head: float = 0.5, old: bool = False) -> Path:
    """A randomized PoseNet exported with --mc-dropout; ``old``: as exports before the paper's
    sampling were (no mc_dropout_crops method in the file)."""
    model = randomized_posenet(3)
    model.feature_dropout = feature
    model.pose_final.dropout.p = head
    methods = PoseNet.EXPORTED_METHODS
    try:
        if old:
            PoseNet.EXPORTED_METHODS = ("features",)
        return export_torchscript(model, small_contract(), tmp / name, mc_dropout=True)
    finally:
        PoseNet.EXPORTED_METHODS = methods


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("mc_sampling")
    return {
        "new": export(tmp, "new.pt"),
        "old": export(tmp, "old.pt", old=True),
        "feature_only": export(tmp, "feature_only.pt", head=0.0),
        "none": export(tmp, "none.pt", feature=0.0, head=0.0),
    }


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)


def test_dropout_on_inception5b_changes_the_backbone_output(files) -> None:
    """With the head's dropout off, samples of one and the same crop still differ: the 5b feature
    map is sampled. With both rates 0 every sample is the deterministic forward pass."""
    x = torch.randn(1, 3, 64, 64).expand(6, -1, -1, -1).contiguous()
    with torch.inference_mode():
        feature_only, _ = load_model(files["feature_only"])
        torch.manual_seed(0)
        out = feature_only.mc_dropout_crops(x)
        assert out.shape == (6, 7) and len({tuple(r.tolist()) for r in out}) == 6
        assert torch.allclose(out[:, 3:].norm(dim=1), torch.ones(6)) and (out[:, 3] >= 0).all()
        none, _ = load_model(files["none"])
        assert torch.allclose(none.mc_dropout_crops(x), none(x).expand(6, -1), atol=1e-5)
        new, _ = load_model(files["new"])
        # The draws follow torch's seed (to rounding: the profiling JIT, with oneDNN fusion on once an
        # engine has run in this process, optimizes the graph after its first calls).
        torch.manual_seed(5)
        a = new.mc_dropout_crops(x)
        torch.manual_seed(5)
        assert torch.allclose(a, new.mc_dropout_crops(x), atol=1e-4)
        torch.manual_seed(6)
        assert (a - new.mc_dropout_crops(x)).abs().max() > 1e-2


def test_sampled_dropout_keeps_about_one_minus_p_and_rescales() -> None:
    torch.manual_seed(0)
    y = sampled_dropout(torch.ones(100_000), 0.5)
    assert set(torch.unique(y).tolist()) == {0.0, 2.0} and abs(float((y > 0).float().mean()) - 0.5) < 0.01
    assert torch.equal(sampled_dropout(torch.ones(3), 0.0), torch.ones(3))


def test_each_sample_has_its_own_crop_of_the_resized_frame(files) -> None:
    engine = Engine(files["new"], EngineConfig(mc_samples=16, **MC))
    assert engine.mc_sampling == "paper"
    image = frame()
    batch, offsets, seed = engine.mc_crops(image, "rgb8", 16)
    assert batch.shape == (16, 3, 64, 64) and len(offsets) == 16 and len(set(offsets)) > 8
    # 128x96 resized to shortest side 72: 96x72; crops of 64 move over 0..8 rows and 0..32 columns.
    assert all(0 <= y <= 8 and 0 <= x <= 32 for y, x in offsets)
    assert len({y for y, _ in offsets}) > 2 and len({x for _, x in offsets}) > 2
    # Each crop is that window of the whole frame resized as training resizes it.
    contract = engine.contract
    from dataclasses import replace

    whole = CpuPreprocessor(replace(contract.preprocessing, input_height=72, input_width=96))(image, "rgb8", 1)
    for i, (y, x) in enumerate(offsets):
        assert torch.equal(batch[i], whole[0, :, y : y + 64, x : x + 64])
    again = engine.mc_crops(image, "rgb8", 16)
    assert again[1] == offsets and again[2] == seed and torch.equal(again[0], batch)
    other = engine.mc_crops(frame(1), "rgb8", 16)  # another frame: other draws
    assert other[1] != offsets and other[2] != seed


def test_paper_sampling_is_deterministic_per_frame_and_leaves_torch_s_generator_alone(files) -> None:
    engine = Engine(files["new"], EngineConfig(mc_samples=12, **MC))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = engine.localize(frame(), "rgb8")
    assert torch.equal(torch.get_rng_state(), before)
    engine.localize(frame(1), "rgb8")  # whatever came before, a frame gives its own samples
    b = engine.localize(frame(), "rgb8")
    assert a.samples == a.crops == 12 and a.covariance.shape == (6, 6)
    # Equal to rounding (the JIT may still re-optimize the graph between calls; see above).
    np.testing.assert_allclose(a.pose.position, b.pose.position, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.covariance, b.covariance, rtol=1e-4, atol=1e-10)
    assert np.all(np.linalg.eigvalsh(a.covariance) > 0)
    reseeded = Engine(files["new"], EngineConfig(mc_samples=12, mc_seed=1, **MC)).localize(frame(), "rgb8")
    assert not np.allclose(reseeded.covariance, a.covariance, rtol=1e-2, atol=0)
    # Under a budget the sample count (one crop each) is still what the budget picks.
    budgeted = Engine(files["new"], EngineConfig(mc_samples=8, latency_budget_ms=1e4, **MC))
    assert budgeted.localize(frame(), "rgb8").samples == 8
    budgeted.set_latency_budget(1e-3)
    assert budgeted.localize(frame(), "rgb8").samples == 2


def test_a_file_from_before_keeps_its_head_only_sampling(files) -> None:
    """An old --mc-dropout file has no mc_dropout_crops: auto runs it as before (centre crop through
    the backbone once, the head's dropout drawn from torch's generator), paper is refused on one
    line; a new file runs the old sampling when asked (``mc_sampling="head"``)."""
    module, _ = load_model(files["old"])
    assert not hasattr(module, "mc_dropout_crops") and hasattr(module, "mc_dropout")
    engine = Engine(files["old"], EngineConfig(mc_samples=10, **MC))
    assert engine.mc_sampling == "head"
    torch.manual_seed(7)
    loc = engine.localize(frame(), "rgb8")
    assert loc.crops == 1 and loc.samples == 10
    centre = CpuPreprocessor(engine.contract.preprocessing)(frame(), "rgb8", 1)
    torch.manual_seed(7)
    with torch.inference_mode():
        raw = module.mc_dropout(centre, 10).double().numpy()
    np.testing.assert_allclose(loc.pose.position, engine.contract.output.positions(raw[:, :3]).mean(0), atol=1e-5)
    with pytest.raises(EngineError) as info:
        Engine(files["old"], EngineConfig(**{**MC, "mc_sampling": "paper"}))
    assert "predates it" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(EngineError, match="unknown mc_sampling 'bayes'"):
        Engine(files["new"], EngineConfig(**{**MC, "mc_sampling": "bayes"}))
    head = Engine(files["new"], EngineConfig(mc_samples=10, **{**MC, "mc_sampling": "head"}))
    assert head.mc_sampling == "head" and head.localize(frame(), "rgb8").crops == 1


def test_reduced_precision_reaches_the_paper_sampling(files) -> None:
    module, _ = load_model(files["new"])
    cast_frozen_constants(module, torch.bfloat16)
    with torch.inference_mode():
        out = module.mc_dropout_crops(torch.randn(3, 3, 64, 64).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (3, 7) and torch.isfinite(out.float()).all()


def test_the_contract_records_the_sampling_of_an_export() -> None:
    model = PoseNet(PoseNetConfig(final_fc_dim=64, feature_dropout=0.3))
    assert mc_dropout_record(model) == {
        "sampling": "paper",
        "method": "mc_dropout_crops",
        "feature_dropout": 0.3,
        "head_dropout": 0.5,
        "crops": "random, one per sample",
    }
