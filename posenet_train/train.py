"""``posenet-train fit``: the training loop, nanoGPT-style: no framework, DDP through torchrun,
atomic checkpoints with exact resume, AMP on CUDA, bf16 autocast on CPUs with native bf16.

Exact resume: the batch at step k depends only on (seed, epoch, k) (see ``data.py``), and the
checkpoint stores model, loss weights, optimizer, scheduler, step and the torch RNG (dropout), so an
interrupted run that resumes ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import difflib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from posenet_ros import __version__
from posenet_ros.atomic import atomic_path
from posenet_ros.contract import Preprocessing
from posenet_ros.errors import first_line
from posenet_ros.geometry import position_error, quat_unit, rotation_error_deg
from posenet_ros.model import PoseNet, PoseNetConfig, load_imagenet_backbone
from posenet_train.data import Augmentation, PoseDataset, PositionNormalization, epoch_order, sample_rngs
from posenet_train.datasets import DatasetError, camera_extent, dataset_camera, read_poses_csv, split_records
from posenet_train.loss import PoseLoss

CHECKPOINT_NAME = "checkpoint.pt"
OPTIMIZERS = ("adam", "sgd", "adagrad")
SCHEDULES = ("constant", "step", "cosine")
TRAIN_PRECISIONS = ("fp32", "bf16", "auto")
# torchvision's ImageNet GoogLeNet weights; only fetched on request (never in tests or the demo).
IMAGENET_URL = "https://download.pytorch.org/models/googlenet-1378be20.pth"
# What a resumed run may change; everything else comes from the checkpoint.
RESUMABLE_OVERRIDES = ("steps", "checkpoint_every", "eval_every", "progress", "device", "threads")


# Help text of every FitConfig field, shown by ``posenet-train fit --help`` (the defaults are added there).
FIT_OPTION_HELP = {
    "scene_name": "scene name recorded in the model's contract (default: the data folder's name)",
    "input_size": "network input, pixels (square crop; PoseNet uses 224)",
    "resize_shortest_side": "images are resized to this shortest side before cropping (>= input size)",
    "final_fc_dim": "width of the final fully connected layer before the pose regressor",
    "batch_size": "images per step and process",
    "steps": "optimizer steps in total (a resumed run continues to this count; 0: --epochs passes over the "
    "training images, so the schedule scales with the data set)",
    "epochs": "passes over the training images when --steps is 0",
    "optimizer": "adam, sgd or adagrad",
    "lr": "learning rate (1e-4: Adam on PoseNet as in Kendall & Cipolla 2017 and geomapnet)",
    "momentum": "SGD momentum (sgd only)",
    "weight_decay": "L2 weight decay of convolution and fully connected weights (never of biases, "
    "batch-norm or the learned loss weights)",
    "schedule": "learning-rate schedule: constant, step (x0.1 every --lr-step-every) or cosine",
    "lr_step_every": "steps between x0.1 decays with --schedule step (0: unset)",
    "warmup_steps": "linear learning-rate warm-up over this many steps (0: none)",
    "beta": "PoseNet's loss weight of rotation against position, metres per unit quaternion distance "
    "(the paper's beta: 120-750 indoors, 250-2000 outdoors; ignored with --learn-weighting)",
    "learn_weighting": "learn the position/rotation weighting (Kendall 2017) instead of a fixed beta",
    "color_jitter": "brightness/contrast/saturation jitter in [0, 1) (0: none)",
    "seed": "seed of initialization, batch order and augmentation (a run is reproducible)",
    "pretrained": "backbone weights: auto (torchvision's ImageNet GoogLeNet where the torch hub cache has it, else "
    "none, said loudly), imagenet (downloads it), none, or a .pth state dict",
    "checkpoint_every": "steps between checkpoints (OUT/checkpoint.pt; Ctrl-C also saves one)",
    "eval_every": "steps between validation on the val images, test where there are none (0: never)",
    "eval_images": "val (or test) images used for each validation",
    "device": "auto, cpu, cuda or cuda:N",
    "amp": "mixed precision on CUDA (fp16 autocast; --precision bf16 or auto uses bf16 instead)",
    "precision": "autocast of the forward pass: fp32 (none; fp16 on CUDA with --amp), bf16 (fp32 master "
    "weights; on the CPU needs native bf16, AMX-BF16 or AVX512-BF16) or auto (bf16 on CUDA with bf16 and on "
    "CPUs with AMX-BF16, else as fp32)",
    "threads": "CPU threads for torch (0: torch's default)",
    "progress": "progress bar",
}


@dataclass(frozen=True)
class FitConfig:
    data: str
    out: str
    scene_name: str = ""
    input_size: int = 224
    resize_shortest_side: int = 256
    final_fc_dim: int = 2048
    batch_size: int = 32  # per process
    # Defaults from the literature. Learning rate: Adam at 1e-4, what Kendall & Cipolla (CVPR 2017,
    # "Geometric loss functions for camera pose regression") and geomapnet (Brahmbhatt et al., CVPR
    # 2018) use to fine-tune a pretrained backbone; 1e-3 is 10x that. Length: steps=0 sizes the run
    # by the data set, ``epochs`` passes over the training images (see ``resolve_steps``); the
    # released caffe-posenet solver ran 30k iterations at batch 64, about 480 epochs of 7-Scenes
    # Chess (4000 images), and a fixed 1000 steps is only 5-8 epochs of a 7-Scenes scene.
    steps: int = 0  # 0: from ``epochs`` and the data set's size
    epochs: float = 300.0
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    lr_step_every: int = 0  # steps between x0.1 decays for schedule "step"
    warmup_steps: int = 0
    beta: float = 500.0
    learn_weighting: bool = False
    color_jitter: float = 0.0
    seed: int = 0
    pretrained: str = "auto"  # "auto", "imagenet", "" or "none", or a path to torchvision GoogLeNet weights
    checkpoint_every: int = 500
    eval_every: int = 250
    eval_images: int = 64
    device: str = "auto"
    amp: bool = True  # CUDA only
    # bf16 autocast of the forward pass, weights and optimizer state stay fp32 (see ``autocast_dtype``).
    precision: str = "fp32"
    threads: int = 0
    progress: bool = True

    def validate(self) -> None:
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.input_size >= 32, "input_size must be >= 32"),
            (self.resize_shortest_side >= self.input_size, "resize_shortest_side must be >= input_size"),
            (self.batch_size >= 1 and self.steps >= 0, "batch_size must be >= 1 and steps >= 0 (0: from --epochs)"),
            (self.epochs > 0 and math.isfinite(self.epochs), "epochs must be a positive number"),
            (self.lr > 0 and math.isfinite(self.lr), "lr must be a positive number"),
            (self.schedule != "step" or self.lr_step_every > 0, "schedule 'step' needs lr_step_every > 0"),
            (0 <= self.color_jitter < 1, "color_jitter must be in [0, 1)"),
            (self.checkpoint_every >= 1 and self.eval_every >= 0, "checkpoint_every must be >= 1"),
            (self.eval_images >= 1 and self.warmup_steps >= 0, "eval_images must be >= 1, warmup_steps >= 0"),
            (self.threads >= 0, "threads must be >= 0 (0: torch's default)"),
            (self.precision in TRAIN_PRECISIONS, f"precision must be one of {', '.join(TRAIN_PRECISIONS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.precision == "bf16" and (why := bf16_refusal(self.device)):
            raise ValueError(why)

    def preprocessing(self) -> Preprocessing:
        # Inputs scaled to [-1, 1] (mean = std = 0.5): what torchvision's GoogLeNet weights expect.
        return Preprocessing(
            input_height=self.input_size,
            input_width=self.input_size,
            resize_shortest_side=self.resize_shortest_side,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        )

    def model_config(self) -> PoseNetConfig:
        return PoseNetConfig(final_fc_dim=self.final_fc_dim)


def _device_type(device: str) -> str:
    return "cuda" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "cpu"


def bf16_refusal(device: str) -> str | None:
    """Why bf16 autocast cannot run on ``device`` (a FitConfig device), in one line; None when it can.
    On the CPU only natively: emulated bf16 is slower than fp32 (engine.cpu_bf16_support)."""
    from posenet_ros.engine import cpu_bf16_support

    if _device_type(device) == "cuda":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return "precision bf16 needs a GPU with bf16 (compute capability 8.0+); use fp32 (--amp: fp16) or auto"
        return None
    if cpu_bf16_support() is None:
        return (
            "precision bf16 on the CPU needs native bf16 (AMX-BF16 or AVX512-BF16), which this CPU lacks "
            "(emulated bf16 is slower than fp32); use fp32 or auto"
        )
    return None


def _auto_bf16(device: torch.device) -> bool:
    """precision auto's rule: bf16 on CUDA with bf16, and on CPUs with AMX-BF16. Not on AVX512-BF16
    alone: there bf16 training measured slower than fp32 (docs/performance.md, 2026-12-01), while
    bf16 inference was faster."""
    from posenet_ros.engine import cpu_bf16_support

    if bf16_refusal(str(device)) is not None:
        return False
    return device.type == "cuda" or cpu_bf16_support() == "AMX-BF16"


def autocast_dtype(cfg: FitConfig, device: torch.device) -> torch.dtype | None:
    """The forward pass's autocast dtype, None for plain fp32: bf16 when asked (or with auto where
    ``device`` runs it natively), else fp16 on CUDA with ``cfg.amp``. Master weights, gradients
    and the optimizer stay fp32 either way; bf16 has fp32's range, so it needs no loss scaling."""
    wants_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and _auto_bf16(device))
    if wants_bf16:
        return torch.bfloat16
    return torch.float16 if cfg.amp and device.type == "cuda" else None


@dataclass
class FitResult:
    step: int
    interrupted: bool
    checkpoint: Path
    metrics: dict[str, float]
    seconds: float


# -- distributed ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single-process run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device cuda requested but CUDA is not available")
        return torch.device("cuda", info.local_rank if name == "cuda" else torch.device(name).index)
    if name != "cpu":
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device("cpu")


# -- building blocks -----------------------------------------------------------------------------


def resolve_steps(cfg: FitConfig, train_images: int, global_batch: int) -> int:
    """``cfg.steps``, or with 0 the steps of ``cfg.epochs`` passes over ``train_images``."""
    if cfg.steps > 0:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * train_images / global_batch))


def param_groups(model: nn.Module, loss_fn: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on convolution and fully connected weights only. Biases and batch-norm scales
    (1-D) are not decayed, as is usual since "Bag of tricks" (He et al. 2019) and in torchvision's
    recipes: their decay only fights the normalization. The learned loss weights s_x, s_q (0-D) are
    log variances whose decay would pull the weighting towards 1:1, i.e. bias it."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2] + list(loss_fn.parameters())
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: FitConfig, params: list[Any]) -> torch.optim.Optimizer:
    """``params``: parameters or parameter groups (``param_groups``); groups keep their own decay."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: FitConfig, step: int) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "step":
        return warm * 0.1 ** (step // cfg.lr_step_every)
    if cfg.schedule == "cosine":
        return warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps)))
    return warm


PRETRAINED_KINDS = (
    "'auto' (ImageNet weights where cached), 'imagenet' (torchvision's GoogLeNet weights, downloaded), 'none', "
    "or a GoogLeNet .pth state dict"
)


def imagenet_cache_path() -> Path:
    """Where torch.hub keeps the ImageNet weights once downloaded (``--pretrained imagenet``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET_URL).name


def resolve_pretrained(spec: str) -> str:
    """``auto``: the cached ImageNet weights where they are (the paper shows transfer from ImageNet
    is essential), else none; ``none``: none. Nothing is downloaded unless asked (``imagenet``)."""
    if spec == "auto":
        cached = imagenet_cache_path()
        return str(cached) if cached.is_file() else ""
    return "" if spec == "none" else spec


def check_pretrained(spec: str) -> None:
    """Refuse a --pretrained value that cannot be ImageNet backbone weights, in one line and before
    any image is decoded: a typo of the keyword, a missing file, an exported model, a checkpoint."""
    from posenet_ros.model_files import torch_file_kind

    if spec in ("", "imagenet", "auto", "none"):
        return
    path = Path(spec)
    if not path.exists():
        if difflib.get_close_matches(spec.lower(), ["imagenet"], n=1, cutoff=0.6):
            raise ValueError(f"--pretrained {spec}: no such file; did you mean the keyword imagenet?")
        raise ValueError(f"--pretrained {spec}: no such file; give {PRETRAINED_KINDS}")
    if not path.is_file():
        raise ValueError(f"--pretrained {spec} is a folder; give {PRETRAINED_KINDS}")
    kind = torch_file_kind(path)
    if kind == "torchscript":
        raise ValueError(
            f"--pretrained {spec} is an exported PoseNet model, not backbone weights; give {PRETRAINED_KINDS}"
        )
    if kind == "checkpoint":
        raise ValueError(
            f"--pretrained {spec} is a posenet-train checkpoint; continue that run with fit --resume --out "
            f"{path.parent}, or give {PRETRAINED_KINDS}"
        )
    if kind not in ("state_dict", "legacy"):
        raise ValueError(f"--pretrained {spec} is not a PyTorch weights file; give {PRETRAINED_KINDS}")


def load_pretrained(model: PoseNet, spec: str) -> str:
    if not spec:
        return "none (random init)"
    if spec == "imagenet":
        state = torch.hub.load_state_dict_from_url(IMAGENET_URL, progress=True, map_location="cpu")
        report = load_imagenet_backbone(model, state)
        return f"imagenet ({len(report.loaded)} backbone tensors)"
    check_pretrained(spec)
    try:
        state = torch.load(spec, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors for files that are not plain weights
        raise ValueError(f"--pretrained {spec}: cannot read it as weights ({first_line(exc)})") from None
    report = load_imagenet_backbone(model, state)
    return f"{spec} ({len(report.loaded)} backbone tensors)"


def atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@torch.no_grad()
def median_errors(
    model: PoseNet, dataset: PoseDataset, norm: PositionNormalization, limit: int, device: torch.device
) -> dict[str, float]:
    """Median position (m) / rotation (deg) error on up to ``limit`` evenly spread centre crops."""
    n = len(dataset)
    idx = np.unique(np.linspace(0, n - 1, min(limit, n)).round().astype(int)).tolist()
    was_training = model.training
    model.eval()
    preds = []
    for k in range(0, len(idx), 32):
        x, _ = dataset.batch(idx[k : k + 32], None)
        preds.append(model(x.to(device)).float().cpu().numpy().astype(np.float64))
    model.train(was_training)
    pred = np.concatenate(preds)
    target = dataset.targets[idx].numpy().astype(np.float64)
    pos_err = position_error(norm.undo(pred[:, :3]), norm.undo(target[:, :3]))
    rot_err = rotation_error_deg(quat_unit(pred[:, 3:]), target[:, 3:])
    return {"median_position_m": float(np.median(pos_err)), "median_rotation_deg": float(np.median(rot_err))}


class TrainStep(nn.Module):
    """The network and the loss as one module, so DDP wraps the learned loss weights (s_x, s_q)
    with the network: their gradients are all-reduced like every other parameter's, and every rank
    holds the values rank 0 saves. (Outside the DDP module each rank stepped them on its own
    batch's gradient alone and they drifted apart.)"""

    def __init__(self, model: PoseNet, loss_fn: PoseLoss, amp_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.amp_dtype = amp_dtype  # autocast dtype of the network's forward pass; None: fp32

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.autocast(x.device.type, dtype=self.amp_dtype or torch.float16, enabled=self.amp_dtype is not None):
            outputs = self.model(x)
        return self.loss_fn(outputs.float(), y)


class StopFlag:
    """Ctrl-C (SIGINT) asks the loop to stop after the current step and save a checkpoint."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():  # signals only work there
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# -- the loop ------------------------------------------------------------------------------------


def resolve_config(cfg: FitConfig, resume: bool) -> tuple[FitConfig, dict[str, Any] | None]:
    """On resume the checkpoint's config wins, except for the few fields a resume may change."""
    ckpt_path = Path(cfg.out) / CHECKPOINT_NAME
    if not resume:
        return cfg, None
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    saved = FitConfig(**{f.name: ckpt["config"][f.name] for f in fields(FitConfig) if f.name in ckpt["config"]})
    return replace(saved, **{k: getattr(cfg, k) for k in RESUMABLE_OVERRIDES}), ckpt


def fit(cfg: FitConfig, resume: bool = False, step_callback: Callable[[int], None] | None = None) -> FitResult:
    """Train; returns where it stopped. ``step_callback(step)`` runs after every step (tests use it)."""
    from tqdm import tqdm

    cfg, ckpt = resolve_config(cfg, resume)
    cfg.validate()
    if ckpt is None:  # a resumed run has its weights in the checkpoint
        check_pretrained(cfg.pretrained)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device_type = _device_type(cfg.device)
    info = init_distributed(device_type)
    device = pick_device(cfg.device, info)
    out = Path(cfg.out)
    data_root = Path(cfg.data)
    records = read_poses_csv(data_root)
    train_records = split_records(records, "train")
    train_camera = dataset_camera(data_root)  # the contract records it: the node checks the live camera's view
    test_records = [r for r in records if r.split == "test"]
    # The figures watched during training come from the val split, so the test split stays unseen;
    # a data set without val rows (written before there was one) falls back to test, and says so.
    watch_split = "val" if any(r.split == "val" for r in records) else "test"
    watch_records = [r for r in records if r.split == watch_split]
    norm = PositionNormalization.fit(train_records)
    spec = cfg.preprocessing()
    # The model and its pretrained weights come before the images are decoded, so a bad --pretrained
    # fails in a second, not after minutes of loading (the seed makes the order irrelevant).
    torch.manual_seed(cfg.seed + info.rank)
    model = PoseNet(cfg.model_config())
    weights = resolve_pretrained(cfg.pretrained)
    pretrained = load_pretrained(model, weights) if ckpt is None else ckpt["pretrained"]
    if ckpt is None and not weights and info.main:
        why = f"no ImageNet weights at {imagenet_cache_path()}" if cfg.pretrained == "auto" else "--pretrained none"
        print(
            f"posenet-train fit: WARNING: training from random initialization ({why}); PoseNet needs a "
            "pretrained backbone to reach the paper's accuracy (Kendall et al. 2015): pass --pretrained "
            "imagenet (downloads torchvision's GoogLeNet) or a .pth file",
            file=sys.stderr,
        )
    show = cfg.progress and info.main
    train_set = PoseDataset(data_root, train_records, spec, norm, Augmentation(True, cfg.color_jitter), progress=show)
    if watch_split == "test" and watch_records and cfg.eval_every and info.main:
        print(
            "posenet-train fit: note: no 'val' frames in the data set; the figures during training are on "
            "its test frames (convert again to get a val split)",
            file=sys.stderr,
        )
    eval_set = (
        PoseDataset(data_root, watch_records, spec, norm, Augmentation(False), progress=show) if watch_records else None
    )
    global_batch = cfg.batch_size * info.world_size
    if len(train_set) < global_batch:
        raise DatasetError(f"{len(train_set)} training images is fewer than one global batch of {global_batch}")
    steps_per_epoch = len(train_set) // global_batch
    cfg = replace(cfg, steps=resolve_steps(cfg, len(train_set), global_batch))  # the checkpoint keeps the count

    model = model.to(device).to(memory_format=torch.channels_last)
    # The loss sees normalized positions; position_scale takes its fixed-beta term back to metres.
    loss_fn = PoseLoss(cfg.beta, cfg.learn_weighting, position_scale=norm.scale).to(device)
    groups = param_groups(model, loss_fn, cfg.weight_decay)
    if ckpt is not None and len(ckpt["optimizer"]["param_groups"]) == 1:
        # A checkpoint from before the groups: one group, in this same parameter order.
        groups = [{"params": [*model.parameters(), *loss_fn.parameters()], "weight_decay": cfg.weight_decay}]
    optimizer = make_optimizer(cfg, groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    amp_dtype = autocast_dtype(cfg, device)
    # Loss scaling for fp16 only: bf16 has fp32's exponent range.
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step, history, elapsed = 0, [], 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        loss_fn.load_state_dict(ckpt["loss"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step, history, elapsed = ckpt["step"], ckpt["history"], ckpt["seconds"]
        torch.set_rng_state(ckpt["rng"][info.rank] if info.rank < len(ckpt["rng"]) else ckpt["rng"][0])
    train_step = TrainStep(model, loss_fn, amp_dtype)
    train_model = nn.parallel.DistributedDataParallel(train_step) if info.world_size > 1 else train_step
    train_model.train()

    def save() -> Path:
        rng_states = [torch.get_rng_state()]
        if info.world_size > 1:
            # DDP syncs batch-norm statistics from rank 0 only at the next forward; do it now so
            # every rank holds exactly the state the checkpoint records.
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
            # Each rank's dropout stream, gathered to the rank that writes.
            mine = torch.get_rng_state().to(device)
            gathered = [torch.empty_like(mine) for _ in range(info.world_size)]
            dist.all_gather(gathered, mine)
            rng_states = [g.cpu() for g in gathered]
        path = out / CHECKPOINT_NAME
        if info.main:
            state = {
                "config": asdict(cfg),
                "model": model.state_dict(),
                "loss": loss_fn.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "rng": rng_states,
                "history": history,
                "seconds": elapsed + time.perf_counter() - start,
                "normalization": asdict(norm),
                "preprocessing": asdict(spec),
                "scene": {"name": cfg.scene_name or data_root.resolve().name, "extent": camera_extent(train_records)},
                "data": {
                    "path": str(data_root.resolve()),
                    "train_images": len(train_records),
                    "test_images": len(test_records),
                    "val_images": sum(r.split == "val" for r in records),
                },
                "pretrained": pretrained,
                "camera": train_camera.to_dict() if train_camera is not None else None,
                "code_version": __version__,
            }
            atomic_save(state, path)
        if info.world_size > 1:
            dist.barrier()
        return path

    start = time.perf_counter()
    metrics: dict[str, float] = {}
    interrupted = False
    bar = tqdm(total=cfg.steps, initial=step, desc="fit", unit="step", disable=not show, dynamic_ncols=True)
    window_t, window_imgs = time.perf_counter(), 0
    with StopFlag() as stop:
        while step < cfg.steps:
            epoch, k = divmod(step, steps_per_epoch)
            order = epoch_order(cfg.seed, epoch, len(train_set))
            chunk = order[k * global_batch : (k + 1) * global_batch]
            indices = chunk[info.rank * cfg.batch_size : (info.rank + 1) * cfg.batch_size].tolist()
            x, y = train_set.batch(indices, sample_rngs(cfg.seed, epoch, indices))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss, stats = train_model(x, y)
            if not math.isfinite(stats["loss"]):
                raise FloatingPointError(f"loss became {stats['loss']} at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            window_imgs += len(indices) * info.world_size
            if step_callback is not None:
                step_callback(step)
            if (
                info.main
                and eval_set is not None
                and cfg.eval_every
                and (step % cfg.eval_every == 0 or step == cfg.steps)
            ):
                metrics = median_errors(model, eval_set, norm, cfg.eval_images, device)
                history.append({"step": step, "split": watch_split, **stats, **metrics})
            if show:
                now = time.perf_counter()
                postfix = {"loss": f"{stats['loss']:.3f}", "img/s": f"{window_imgs / max(now - window_t, 1e-9):.1f}"}
                if metrics:
                    postfix |= {
                        "med_m": f"{metrics['median_position_m']:.3f}",
                        "med_deg": f"{metrics['median_rotation_deg']:.2f}",
                    }
                bar.set_postfix(postfix, refresh=False)
                bar.update()
                if now - window_t > 10:
                    window_t, window_imgs = now, 0
            if _stop_requested(stop, info, device):
                interrupted = True
                break
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save()
    bar.close()
    path = save()
    seconds = elapsed + time.perf_counter() - start
    return FitResult(step, interrupted, path, metrics, seconds)


def _stop_requested(stop: StopFlag, info: DistInfo, device: torch.device) -> bool:
    """All ranks must agree to stop at the same step, or the next collective would hang."""
    if info.world_size == 1:
        return stop.requested
    flag = torch.tensor([int(stop.requested)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
