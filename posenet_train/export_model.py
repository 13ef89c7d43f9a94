"""``posenet-train export CKPT OUT.pt``: a training checkpoint -> the TorchScript file the node loads,
with the full contract (preprocessing, position normalization, scene, training summary)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from posenet_ros.camera import Camera
from posenet_ros.contract import Contract, OutputSpec, Preprocessing, SceneInfo
from posenet_ros.errors import first_line
from posenet_ros.export import export_torchscript
from posenet_ros.model import PoseNet, PoseNetConfig
from posenet_ros.model_files import torch_file_kind


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    kind = torch_file_kind(path)
    if kind == "torchscript":
        raise ValueError(f"{path} is already an exported model, not a training checkpoint (OUT/checkpoint.pt of fit)")
    if kind not in ("checkpoint", "state_dict", "legacy"):
        raise ValueError(f"{path} is not a training checkpoint (posenet-train fit writes OUT/checkpoint.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle and zip errors of a damaged file
        raise ValueError(f"{path}: cannot read the checkpoint ({first_line(exc)})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a posenet-train checkpoint (holds a {type(ckpt).__name__})")
    missing = {"config", "model", "normalization", "preprocessing", "scene"} - set(ckpt)
    if missing:
        raise ValueError(f"{path}: not a posenet-train checkpoint (missing {', '.join(sorted(missing))})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], feature_dropout: float = PoseNetConfig.feature_dropout) -> PoseNet:
    """The checkpoint's PoseNet in eval mode; ``feature_dropout``: the Monte Carlo sampling's rate
    on the inception5b output (``PoseNetConfig.feature_dropout``; the paper's 0.5)."""
    if not 0.0 <= feature_dropout < 1.0:
        raise ValueError(f"feature dropout must be in [0, 1), got {feature_dropout}")
    model = PoseNet(PoseNetConfig(final_fc_dim=ckpt["config"]["final_fc_dim"], feature_dropout=feature_dropout))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def contract_from_checkpoint(ckpt: dict[str, Any], metrics: dict[str, float] | None = None) -> Contract:
    cfg, norm, pre = ckpt["config"], ckpt["normalization"], ckpt["preprocessing"]
    pre = {**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])}
    last_eval = next((h for h in reversed(ckpt.get("history", [])) if "median_position_m" in h), {})
    training = {
        "data": ckpt.get("data", {}),
        "steps": ckpt["step"],
        "batch_size": cfg["batch_size"],
        "optimizer": cfg["optimizer"],
        "lr": cfg["lr"],
        "schedule": cfg["schedule"],
        "loss": "learned_weighting" if cfg["learn_weighting"] else f"beta={cfg['beta']}",
        "pretrained": ckpt.get("pretrained", ""),
        "seed": cfg["seed"],
        "train_seconds": round(float(ckpt.get("seconds", 0.0)), 1),
        "validation": {k: v for k, v in last_eval.items() if k.startswith("median_")},
    }
    if metrics:
        training["evaluation"] = metrics
    return Contract(
        preprocessing=Preprocessing(**pre),
        output=OutputSpec(position_offset=tuple(norm["offset"]), position_scale=float(norm["scale"])),
        scene=SceneInfo(name=ckpt["scene"]["name"], extent=tuple(ckpt["scene"]["extent"])),
        training=training,
        code_version=ckpt.get("code_version", ""),
        camera=Camera.from_dict(ckpt["camera"], "checkpoint camera", ValueError) if ckpt.get("camera") else None,
    )


def mc_dropout_record(model: PoseNet) -> dict[str, Any]:
    """What the contract records of a --mc-dropout export's sampling (``training.mc_dropout``): the
    method engines run and its dropout rates. Files without the record predate the paper's sampling
    and have only the ``mc_dropout`` method (head dropout on the centre crop), which engines keep."""
    return {
        "sampling": "paper",
        "method": PoseNet.MC_CROPS_METHOD,
        "feature_dropout": model.feature_dropout,
        "head_dropout": float(model.pose_final.dropout.p),
        "crops": "random, one per sample",
    }


def export_checkpoint(
    ckpt_path: str | Path,
    out: str | Path,
    mc_dropout: bool = False,
    feature_dropout: float = PoseNetConfig.feature_dropout,
) -> Path:
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, feature_dropout)
    contract = contract_from_checkpoint(ckpt)
    if mc_dropout:
        contract = replace(contract, training={**contract.training, "mc_dropout": mc_dropout_record(model)})
    return export_torchscript(model, contract, out, mc_dropout)
