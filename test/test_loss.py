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
