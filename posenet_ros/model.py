"""PoseNet (Kendall, Grimes, Cipolla, ICCV 2015): GoogLeNet with its classifiers replaced by pose
regressors. Shared by the node (through the exported TorchScript file) and the training package.

The backbone mirrors torchvision's batch-norm GoogLeNet module for module, so parameter names match
and a torchvision ImageNet state dict loads by key (``load_imagenet_backbone``) without importing
torchvision. The three heads follow the released PoseNet: two auxiliary regressors (after
inception4a and inception4d) and the final one with a 2048-unit fully connected layer, each emitting
3 position values and 4 quaternion values (w, x, y, z).

Output contract of ``forward``:
- training mode: a (3, B, 7) tensor, heads stacked as (aux1, aux2, final), quaternions raw;
- eval mode: a (B, 7) tensor from the final head, quaternion unit-norm with w >= 0.
One tensor type in both modes keeps ``torch.jit.script`` happy; freezing drops the unused branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POSE_DIM = 7


@dataclass(frozen=True)
class PoseNetConfig:
    final_fc_dim: int = 2048  # the paper's extra fully connected layer before the final regressor
    aux_fc_dim: int = 1024
    dropout: float = 0.5  # before the final regressor, as in the released PoseNet
    aux_dropout: float = 0.7
    # Bayesian PoseNet (Kendall & Cipolla, ICRA 2016) samples dropout in two places: after the ninth
    # inception module (inception5b, before the final pooling and regressor) and after the fully
    # connected layer, both with p = 0.5 (the paper found dropout on every layer worse). This is the
    # first one's rate. Only ``mc_dropout_crops`` applies it: the paper also trains with it, this
    # package's training does not (yet), so training and ``forward`` are unchanged by it.
    feature_dropout: float = 0.5


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm(eps=1e-3) + ReLU, as torchvision's GoogLeNet."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Inception v1 block. branch3 uses a 3x3 convolution where the paper has 5x5: torchvision's
    weights were trained that way, and matching it is what lets them load."""

    def __init__(self, in_ch: int, ch1: int, ch3red: int, ch3: int, ch5red: int, ch5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_ch, ch1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_ch, ch3red, kernel_size=1), BasicConv2d(ch3red, ch3, kernel_size=3, padding=1)
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_ch, ch5red, kernel_size=1), BasicConv2d(ch5red, ch5, kernel_size=3, padding=1)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_ch, pool_proj, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class AuxPoseHead(nn.Module):
    """Auxiliary regressor: average pool, 1x1 conv to 128, fc 1024, dropout 0.7, pose."""

    def __init__(self, in_channels: int, cfg: PoseNetConfig) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc = nn.Linear(128 * 4 * 4, cfg.aux_fc_dim)
        self.dropout = nn.Dropout(cfg.aux_dropout)
        self.xyz = nn.Linear(cfg.aux_fc_dim, 3)
        self.wxyz = nn.Linear(cfg.aux_fc_dim, 4)

    def forward(self, x: Tensor) -> Tensor:
        # Adaptive pooling (as torchvision) instead of the paper's fixed 5x5/3 so smaller inputs work.
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))
        x = self.dropout(F.relu(self.fc(torch.flatten(x, 1)), inplace=True))
        return torch.cat([self.xyz(x), self.wxyz(x)], 1)


class FinalPoseHead(nn.Module):
    """Final regressor: global average pool, fc 2048 + ReLU, dropout, pose."""

    def __init__(self, cfg: PoseNetConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(1024, cfg.final_fc_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.xyz = nn.Linear(cfg.final_fc_dim, 3)
        self.wxyz = nn.Linear(cfg.final_fc_dim, 4)

    def features(self, x: Tensor) -> Tensor:
        """The 2048-d descriptor (before dropout) used by the nearest-neighbour baseline."""
        return F.relu(self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)), inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        f = self.dropout(self.features(x))
        return torch.cat([self.xyz(f), self.wxyz(f)], 1)


def sampled_dropout(x: Tensor, p: float) -> Tensor:
    """Dropout that is always on (Monte Carlo sampling): zero each element with probability ``p``,
    scale the rest by 1 / (1 - p). The mask is a float32 ``torch.rand`` draw, not ``F.dropout``:
    torch's CPU Bernoulli kernel takes another path on Intel CPUs than on others, so one seed gives
    other masks there; uniform draws are the same on every CPU."""
    if p <= 0.0:
        return x
    keep = torch.rand(x.shape, dtype=torch.float32, device=x.device) >= p
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


def normalize_pose_output(pose: Tensor) -> Tensor:
    """Unit quaternion with w >= 0 inside the graph, so every consumer gets the canonical form."""
    q = F.normalize(pose[:, 3:], dim=1, eps=1e-12)
    sign = torch.where(q[:, :1] < 0, -torch.ones_like(q[:, :1]), torch.ones_like(q[:, :1]))
    return torch.cat([pose[:, :3], q * sign], 1)


class PoseNet(nn.Module):
    # Methods besides forward that survive freezing in the exported file (see posenet_ros.export);
    # mc_dropout only when the export asks for it. mc_dropout_crops (the paper's sampling) is kept in
    # every export: it needs nothing a plain export lacks, and the contract still lists the
    # mc_dropout uncertainty mode only for --mc-dropout exports. Files from before it have only
    # mc_dropout, which engines keep running as they did.
    EXPORTED_METHODS = ("features", "mc_dropout_crops")
    MC_DROPOUT_METHOD = "mc_dropout"
    MC_CROPS_METHOD = "mc_dropout_crops"

    def __init__(self, cfg: PoseNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or PoseNetConfig()
        # Backbone: names and shapes exactly as torchvision.models.GoogLeNet.
        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        # Pose regressors replace torchvision's aux1/aux2/fc classifiers (different names on
        # purpose: ImageNet classifier weights must never land in them).
        self.pose_aux1 = AuxPoseHead(512, cfg)
        self.pose_aux2 = AuxPoseHead(528, cfg)
        self.pose_final = FinalPoseHead(cfg)
        self.feature_dropout = float(cfg.feature_dropout)  # mc_dropout_crops only (PoseNetConfig)
        self._init_heads()

    def _init_heads(self) -> None:
        for head in (self.pose_aux1, self.pose_aux2, self.pose_final):
            for m in head.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.01)
                    nn.init.zeros_(m.bias)
            # Start the quaternion output near identity so early normalization is well conditioned.
            nn.init.constant_(head.wxyz.bias, 0.0)
            with torch.no_grad():
                head.wxyz.bias[0] = 1.0

    def backbone_to_4a(self, x: Tensor) -> Tensor:
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        return self.inception4a(x)

    def backbone_4a_to_4d(self, x: Tensor) -> Tensor:
        return self.inception4d(self.inception4c(self.inception4b(x)))

    def backbone_4d_to_5b(self, x: Tensor) -> Tensor:
        x = self.maxpool4(self.inception4e(x))
        return self.inception5b(self.inception5a(x))

    @torch.jit.export
    def features(self, x: Tensor) -> Tensor:
        """(B, final_fc_dim) descriptor of the final head, for nearest-neighbour retrieval; exported
        with the TorchScript file so evaluation can run the paper's baseline on the shipped model."""
        x = self.backbone_4d_to_5b(self.backbone_4a_to_4d(self.backbone_to_4a(x)))
        return self.pose_final.features(x)

    @torch.jit.export
    def mc_dropout(self, x: Tensor, samples: int) -> Tensor:
        """Monte Carlo dropout, the first sampling of this package (files from before
        ``mc_dropout_crops``): ``samples`` poses per image with only the final head's dropout active,
        rows image-major ((B * samples, 7)). Dropout sits only behind the backbone, so the backbone
        runs once per image and only the small head runs per sample."""
        f = self.features(x).repeat_interleave(samples, dim=0)
        f = F.dropout(f, p=self.pose_final.dropout.p, training=True)
        return normalize_pose_output(torch.cat([self.pose_final.xyz(f), self.pose_final.wxyz(f)], 1))

    @torch.jit.export
    def mc_dropout_crops(self, x: Tensor) -> Tensor:
        """Monte Carlo dropout as Bayesian PoseNet samples it: one pose per row of ``x`` ((S, 7) for
        S crops, each sample its own crop of the frame, the caller draws them), with dropout active
        on the inception5b output (``feature_dropout``, element-wise, before the final pooling) and
        after the final fully connected layer (the head's rate). The backbone runs once per sample;
        draws come from torch's default generator (the engine seeds it per frame), through
        ``sampled_dropout``, so a seed gives the same masks on every CPU."""
        x = self.backbone_4d_to_5b(self.backbone_4a_to_4d(self.backbone_to_4a(x)))
        x = sampled_dropout(x, self.feature_dropout)
        f = sampled_dropout(self.pose_final.features(x), self.pose_final.dropout.p)
        return normalize_pose_output(torch.cat([self.pose_final.xyz(f), self.pose_final.wxyz(f)], 1))

    def forward(self, x: Tensor) -> Tensor:
        x4a = self.backbone_to_4a(x)
        x4d = self.backbone_4a_to_4d(x4a)
        final = self.pose_final(self.backbone_4d_to_5b(x4d))
        if self.training:
            return torch.stack([self.pose_aux1(x4a), self.pose_aux2(x4d), final], 0)
        return normalize_pose_output(final)


HEAD_PREFIXES = ("pose_aux1.", "pose_aux2.", "pose_final.")
# Keys of torchvision's GoogLeNet that are ImageNet classifiers: ours are pose heads instead.
IMAGENET_CLASSIFIER_PREFIXES = ("aux1.", "aux2.", "fc.")


def backbone_keys(model: PoseNet) -> list[str]:
    return [k for k in model.state_dict() if not k.startswith(HEAD_PREFIXES)]


@dataclass(frozen=True)
class BackboneLoadReport:
    loaded: list[str]
    skipped_classifier: list[str]


def load_imagenet_backbone(model: PoseNet, source: str | Path | dict[str, Tensor]) -> BackboneLoadReport:
    """Load torchvision GoogLeNet ImageNet weights (a path to the .pth or a state dict) into the
    backbone. Every backbone tensor must be present with the right shape; the classifiers are skipped
    and the pose heads are left untouched.

    torchvision's weights expect ``transform_input``, i.e. inputs scaled to [-1, 1]: a model trained
    from them should record mean = std = 0.5 in its contract."""
    state = torch.load(source, map_location="cpu", weights_only=True) if isinstance(source, (str, Path)) else source
    if not isinstance(state, dict):
        raise ValueError(f"{source}: not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    # Older torchvision files predate BatchNorm's num_batches_tracked counter; it carries no weights.
    wanted = [k for k in backbone_keys(model) if k in state or not k.endswith("num_batches_tracked")]
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"ImageNet state dict lacks {len(missing)} backbone tensors, first: {missing[0]}")
    bad = [k for k in wanted if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"ImageNet tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
    unknown = [k for k in state if k not in own and not k.startswith(IMAGENET_CLASSIFIER_PREFIXES)]
    if unknown:
        raise ValueError(f"ImageNet state dict has {len(unknown)} unexpected tensors, first: {unknown[0]}")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    skipped = sorted(k for k in state if k.startswith(IMAGENET_CLASSIFIER_PREFIXES))
    return BackboneLoadReport(loaded=wanted, skipped_classifier=skipped)
