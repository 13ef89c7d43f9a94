"""The shared PoseNet: heads, output contract, TorchScript, torchvision ImageNet key layout."""

from __future__ import annotations

import pytest
import torch
from conftest import randomized_posenet

from posenet_ros.export import script_for_inference
from posenet_ros.model import HEAD_PREFIXES, PoseNet, load_imagenet_backbone

# torchvision GoogLeNet's inception table: (name, in, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj),
# written out here independently of posenet_ros.model so the key-layout test checks one against the other.
INCEPTIONS = [
    ("inception3a", 192, 64, 96, 128, 16, 32, 32),
    ("inception3b", 256, 128, 128, 192, 32, 96, 64),
    ("inception4a", 480, 192, 96, 208, 16, 48, 64),
    ("inception4b", 512, 160, 112, 224, 24, 64, 64),
    ("inception4c", 512, 128, 128, 256, 24, 64, 64),
    ("inception4d", 512, 112, 144, 288, 32, 64, 64),
    ("inception4e", 528, 256, 160, 320, 32, 128, 128),
    ("inception5a", 832, 256, 160, 320, 32, 128, 128),
    ("inception5b", 832, 384, 192, 384, 48, 128, 128),
]


def torchvision_googlenet_state_dict(seed: int = 7) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's GoogLeNet key layout (aux classifiers and fc included), random values."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(prefix: str, out_c: int, in_c: int, k: int) -> None:
        sd[f"{prefix}.conv.weight"] = torch.randn(out_c, in_c, k, k, generator=gen)
        for name in ("weight", "bias", "running_mean"):
            sd[f"{prefix}.bn.{name}"] = torch.randn(out_c, generator=gen)
        sd[f"{prefix}.bn.running_var"] = torch.rand(out_c, generator=gen) + 0.5
        sd[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(1000)

    conv("conv1", 64, 3, 7)
    conv("conv2", 64, 64, 1)
    conv("conv3", 192, 64, 3)
    for name, cin, c1, c3r, c3, c5r, c5, pool in INCEPTIONS:
        conv(f"{name}.branch1", c1, cin, 1)
        conv(f"{name}.branch2.0", c3r, cin, 1)
        conv(f"{name}.branch2.1", c3, c3r, 3)
        conv(f"{name}.branch3.0", c5r, cin, 1)
        conv(f"{name}.branch3.1", c5, c5r, 3)
        conv(f"{name}.branch4.1", pool, cin, 1)
    for aux, cin in (("aux1", 512), ("aux2", 528)):
        conv(f"{aux}.conv", 128, cin, 1)
        sd[f"{aux}.fc1.weight"] = torch.randn(1024, 2048, generator=gen)
        sd[f"{aux}.fc1.bias"] = torch.randn(1024, generator=gen)
        sd[f"{aux}.fc2.weight"] = torch.randn(1000, 1024, generator=gen)
        sd[f"{aux}.fc2.bias"] = torch.randn(1000, generator=gen)
    sd["fc.weight"] = torch.randn(1000, 1024, generator=gen)
    sd["fc.bias"] = torch.randn(1000, generator=gen)
    return sd


def test_training_mode_returns_three_raw_heads() -> None:
    model = PoseNet().train()
    out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (3, 2, 7)


def test_eval_mode_returns_final_head_with_canonical_unit_quaternion() -> None:
    model = randomized_posenet(3)
    with torch.no_grad():
        out = model(torch.randn(4, 3, 224, 224))
    assert out.shape == (4, 7)
    torch.testing.assert_close(out[:, 3:].norm(dim=1), torch.ones(4), atol=1e-6, rtol=0)
    assert bool((out[:, 3] >= 0).all())
    with torch.no_grad():
        model.train()
        raw_final = model.forward(torch.zeros(1, 3, 224, 224))[2]
    assert raw_final.shape == (1, 7)


def test_smaller_inputs_work_for_cheap_demo_models() -> None:
    with torch.no_grad():
        assert randomized_posenet(0)(torch.randn(1, 3, 128, 128)).shape == (1, 7)


def test_features_are_the_2048_d_descriptor() -> None:
    with torch.no_grad():
        assert randomized_posenet(0).features(torch.randn(2, 3, 224, 224)).shape == (2, 2048)


def test_scripted_and_frozen_match_eager() -> None:
    model = randomized_posenet(1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
        scripted = torch.jit.script(model)
        frozen = script_for_inference(model)
        torch.testing.assert_close(scripted(x), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(frozen(x), ref, atol=1e-5, rtol=0)
    assert not model.training
    # Freezing folded batch norm and removed dropout and the auxiliary heads.
    graph = str(frozen.graph)
    assert "batch_norm" not in graph and "dropout" not in graph


def test_script_for_inference_keeps_the_callers_training_flag() -> None:
    model = PoseNet().train()
    script_for_inference(model)
    assert model.training


def test_imagenet_backbone_loads_every_backbone_tensor_and_no_head() -> None:
    model = PoseNet()
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIXES)}
    sd = torchvision_googlenet_state_dict()
    report = load_imagenet_backbone(model, sd)
    after = model.state_dict()
    backbone = [k for k in after if not k.startswith(HEAD_PREFIXES)]
    assert sorted(report.loaded) == sorted(backbone)
    for k in backbone:
        assert torch.equal(after[k], sd[k]), k
    for k, v in heads_before.items():
        assert torch.equal(after[k], v), f"head tensor {k} was touched"
    # Exactly torchvision's classifiers were skipped; every other torchvision key was used.
    assert set(report.skipped_classifier) == {k for k in sd if k.startswith(("aux1.", "aux2.", "fc."))}
    assert set(sd) == set(report.loaded) | set(report.skipped_classifier)


def test_imagenet_backbone_from_file_with_ddp_prefix(tmp_path) -> None:
    sd = {f"module.{k}": v for k, v in torchvision_googlenet_state_dict().items()}
    torch.save(sd, tmp_path / "googlenet.pth")
    model = PoseNet()
    load_imagenet_backbone(model, tmp_path / "googlenet.pth")
    assert torch.equal(model.conv1.conv.weight, sd["module.conv1.conv.weight"])


def test_imagenet_backbone_tolerates_missing_batch_counters() -> None:
    sd = {k: v for k, v in torchvision_googlenet_state_dict().items() if not k.endswith("num_batches_tracked")}
    load_imagenet_backbone(PoseNet(), sd)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda sd: sd.pop("inception4c.branch2.1.conv.weight"), "lacks 1 backbone tensors"),
        (lambda sd: sd.__setitem__("conv1.conv.weight", torch.zeros(64, 3, 5, 5)), "conv1.conv.weight has shape"),
        (lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), "unexpected tensors"),
    ],
)
def test_imagenet_backbone_refuses_wrong_layouts(mutate, message: str) -> None:
    sd = torchvision_googlenet_state_dict()
    mutate(sd)
    with pytest.raises(ValueError, match=message):
        load_imagenet_backbone(PoseNet(), sd)
