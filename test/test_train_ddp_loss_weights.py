"""Issue 18, defect 4: under DDP the learned loss weights (Kendall 2017's s_x, s_q) are
synchronized like the network's weights; before, they sat outside the DDP module, each rank
stepped them on its own batch and rank 0's were saved."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from posenet_train.synth import SynthConfig, render_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    import torch.distributed as dist

    from posenet_train import train

    losses: list[train.PoseLoss] = []

    class SpyLoss(train.PoseLoss):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            losses.append(self)

    train.PoseLoss = SpyLoss  # this process only
    cfg = train.FitConfig(
        data=data,
        out=out,
        input_size=32,
        resize_shortest_side=36,
        final_fc_dim=32,
        batch_size=2,
        steps=4,
        lr=0.05,  # large, so unsynchronized weights visibly part after four steps
        learn_weighting=True,
        eval_every=0,
        checkpoint_every=100,
        progress=False,
        threads=1,
        device="cpu",
        seed=1,
    )
    try:
        result = train.fit(cfg)
        loss = losses[0]
        torch.save(
            {"step": result.step, "s_x": loss.s_x.detach().clone(), "s_q": loss.s_q.detach().clone()},
            Path(out) / f"loss_rank{rank}.pt",
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_learned_loss_weights_are_identical_on_every_rank(tmp_path: Path) -> None:
    data = tmp_path / "scene"
    render_dataset(
        SynthConfig(train_sequences=2, test_sequences=1, frames_per_sequence=6, width=48, height=36),
        data,
        progress=False,
    )
    out = tmp_path / "run"
    out.mkdir()
    old = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",)}
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(_rank_main, args=(2, _free_port(), str(data), str(out)), nprocs=2, join=True)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    r0, r1 = (torch.load(out / f"loss_rank{r}.pt") for r in (0, 1))
    assert r0["step"] == r1["step"] == 4
    # They moved from their initial values (0, -3), and moved together.
    assert r0["s_x"].item() != pytest.approx(0.0, abs=1e-4) and r0["s_q"].item() != pytest.approx(-3.0, abs=1e-4)
    assert torch.equal(r0["s_x"], r1["s_x"]) and torch.equal(r0["s_q"], r1["s_q"])
    # And the checkpoint holds those values (rank 0 writes it).
    saved = torch.load(out / "checkpoint.pt", weights_only=False)["loss"]
    assert torch.equal(saved["s_x"], r0["s_x"]) and torch.equal(saved["s_q"], r0["s_q"])
