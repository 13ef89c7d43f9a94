from __future__ import annotations

import math

import pytest
import torch

from posenet_train.loss import HEAD_WEIGHTS, PoseLoss, quaternion_distance


def pose(x: tuple[float, float, float], q: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor([[*x, *q]], dtype=torch.float32)


def test_quaternion_distance_is_hemisphere_and_scale_safe() -> None:
    q = torch.nn.functional.normalize(torch.randn(16, 4), dim=1)
    assert torch.allclose(quaternion_distance(-q, q), torch.zeros(16), atol=1e-6)
    assert torch.allclose(quaternion_distance(3.0 * q, q), torch.zeros(16), atol=1e-6)
    assert torch.allclose(quaternion_distance(-0.2 * q, q), torch.zeros(16), atol=1e-6)


def test_paper_loss_value_by_hand() -> None:
    target = pose((1.0, 2.0, 3.0), (1.0, 0.0, 0.0, 0.0))
    pred = pose((1.0, 2.0, 7.0), (2.0, 2.0, 0.0, 0.0))  # 4 m off; q_hat/|q_hat| = (0.7071, 0.7071, 0, 0)
    q_term = math.sqrt((1 - math.sqrt(0.5)) ** 2 + 0.5)
    loss, stats = PoseLoss(beta=10.0)(pred, target)
    assert loss.item() == pytest.approx(4.0 + 10.0 * q_term, rel=1e-5)
    assert stats["l_x"] == pytest.approx(4.0) and stats["l_q"] == pytest.approx(q_term, rel=1e-5)


def test_auxiliary_heads_weigh_point_three() -> None:
    target = pose((0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0))
    wrong = pose((2.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0))
    right = target.clone()
    fn = PoseLoss(beta=500.0)
    only_aux1, _ = fn(torch.stack([wrong, right, right]), target)
    only_final, _ = fn(torch.stack([right, right, wrong]), target)
    assert HEAD_WEIGHTS == (0.3, 0.3, 1.0)
    assert only_aux1.item() == pytest.approx(0.3 * 2.0) and only_final.item() == pytest.approx(2.0)


def test_learned_weighting_formula_and_gradients() -> None:
    fn = PoseLoss(learn_weighting=True)
    assert fn.s_x.item() == 0.0 and fn.s_q.item() == -3.0
    target = pose((0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0))
    pred = pose((0.0, 3.0, 4.0), (0.0, 1.0, 0.0, 0.0)).requires_grad_(True)
    loss, stats = fn(pred, target)
    l_q = math.sqrt(2.0)
    assert loss.item() == pytest.approx(5.0 * 1.0 + 0.0 + l_q * math.exp(3.0) - 3.0, rel=1e-5)
    loss.backward()
    # d/ds_x = -L_x e^{-s_x} + 1 = -4; d/ds_q = -L_q e^{-s_q} + 1
    assert fn.s_x.grad.item() == pytest.approx(-4.0, rel=1e-5)
    assert fn.s_q.grad.item() == pytest.approx(1 - l_q * math.exp(3.0), rel=1e-5)
    assert pred.grad is not None and torch.all(torch.isfinite(pred.grad))
    assert stats["s_q"] == -3.0


@pytest.mark.parametrize("learn", [False, True])
def test_fixed_beta_is_in_metres_whatever_the_position_normalization(learn: bool) -> None:
    """Issue 18, defect 1: the network sees (p - offset) / scale; with a fixed beta the loss of a
    prediction must be the paper's ``||p - p_hat|| (m) + beta ||q - q_hat||`` for every scale."""
    gen = torch.Generator().manual_seed(0)
    p_true, p_pred = torch.randn(8, 3, generator=gen) * 20, torch.randn(8, 3, generator=gen) * 20
    q_true = torch.nn.functional.normalize(torch.randn(8, 4, generator=gen), dim=1)
    q_pred = torch.randn(8, 4, generator=gen)
    offset = torch.tensor([3.0, -1.0, 0.5])
    metres = (p_pred - p_true).norm(dim=1).mean().item()
    paper = metres + 500.0 * quaternion_distance(q_pred, q_true).mean().item()
    values = []
    for scale in (0.5, 1.0, 2.8, 40.0):
        target = torch.cat([(p_true - offset) / scale, q_true], 1)
        pred = torch.cat([(p_pred - offset) / scale, q_pred], 1)
        loss, stats = PoseLoss(beta=500.0, learn_weighting=learn, position_scale=scale)(pred, target)
        assert stats["l_x"] == pytest.approx(metres, rel=1e-5)  # reported in metres either way
        values.append(loss.item())
    if not learn:
        assert values == pytest.approx([paper] * 4, rel=1e-5)
    else:  # the learned weighting is left as it was: s_x absorbs the unit
        fn = PoseLoss(learn_weighting=True)
        assert values[1] == pytest.approx(
            fn(torch.cat([p_pred - offset, q_pred], 1), torch.cat([p_true - offset, q_true], 1))[0].item(), rel=1e-5
        )


def test_position_scale_must_be_positive() -> None:
    with pytest.raises(ValueError, match="position_scale"):
        PoseLoss(position_scale=0.0)
