"""The PoseNet loss on all three heads.

Per head: ``||x - x_hat|| + beta * ||q - q_hat / |q_hat| ||`` (Kendall et al. 2015), where the
quaternion term takes the closer of q and -q (both are the same rotation, so the loss must not
punish the network for answering in the other hemisphere). Auxiliary heads weigh 0.3.

Positions reach the loss normalized, ``(p - offset) / position_scale`` (``data.py``); with a fixed
beta the position term is taken back to metres (times ``position_scale``, the normalization is
isotropic), so beta is the paper's beta, metres per unit quaternion distance, whatever the scene's
size. Without that the effective beta in metres would be beta x scale (10^4 and more on outdoor
scenes, far outside the 120-2000 the paper tuned).

Optionally the learned homoscedastic weighting of Kendall & Cipolla 2017:
``L_x * exp(-s_x) + s_x + L_q * exp(-s_q) + s_q`` with learnable s_x, s_q (initial 0 and -3),
which removes the hand-tuned beta. Its position term stays in normalized units: s_x absorbs any
scale (it learns log of the variance in whatever unit it sees), so normalization does not bias it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEAD_WEIGHTS = (0.3, 0.3, 1.0)  # aux1, aux2, final


def quaternion_distance(q_pred: Tensor, q_true: Tensor) -> Tensor:
    """Hemisphere-safe ``min(||q - q_hat/|q_hat|||, ||q + q_hat/|q_hat|||)`` per row."""
    q_hat = F.normalize(q_pred, dim=-1, eps=1e-8)
    return torch.minimum((q_true - q_hat).norm(dim=-1), (q_true + q_hat).norm(dim=-1))


class PoseLoss(nn.Module):
    def __init__(
        self,
        beta: float = 500.0,
        learn_weighting: bool = False,
        s_x: float = 0.0,
        s_q: float = -3.0,
        position_scale: float = 1.0,
    ):
        super().__init__()
        if not (position_scale > 0 and math.isfinite(position_scale)):
            raise ValueError(f"position_scale must be a positive number, got {position_scale}")
        self.beta = beta
        self.position_scale = float(position_scale)  # metres per normalized unit
        self.learn_weighting = learn_weighting
        if learn_weighting:
            self.s_x = nn.Parameter(torch.tensor(float(s_x)))
            self.s_q = nn.Parameter(torch.tensor(float(s_q)))

    def head_terms(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Mean position and quaternion errors of one head's (B, 7) output."""
        l_x = (pred[:, :3] - target[:, :3]).norm(dim=1).mean()
        l_q = quaternion_distance(pred[:, 3:], target[:, 3:]).mean()
        return l_x, l_q

    def forward(self, outputs: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``outputs``: (3, B, 7) from the training-mode network, or (B, 7) for one head."""
        heads = outputs if outputs.dim() == 3 else outputs.unsqueeze(0)
        weights = HEAD_WEIGHTS[-len(heads) :]
        total = heads.new_zeros(())
        for w, head in zip(weights, heads, strict=True):
            l_x, l_q = self.head_terms(head.float(), target)
            if self.learn_weighting:
                term = l_x * torch.exp(-self.s_x) + self.s_x + l_q * torch.exp(-self.s_q) + self.s_q
            else:
                term = l_x * self.position_scale + self.beta * l_q  # metres + beta * quaternion distance
            total = total + w * term
        stats = {
            "loss": float(total.detach()),
            "l_x": float(l_x.detach()) * self.position_scale,  # metres, final head
            "l_q": float(l_q.detach()),
        }
        if self.learn_weighting:
            stats.update(s_x=float(self.s_x.detach()), s_q=float(self.s_q.detach()))
        return total, stats
