"""DistributedDataParallel on 2 CPU processes (gloo) against 1 process on the same global batch.

With instance norm in SPADE (per-image statistics) the two runs compute the same maths:
each rank averages its half of every global batch, DDP averages the two gradients, and
1 process averages the whole batch. Only the order of floating-point sums differs.

Tolerances, from measurements here: gradients agree to ~1e-6 relative; parameters whose
gradient is zero by construction (a bias before a normalisation, D's last bias while every
hinge term is active) carry float noise of ~1e-9 that differs between the runs. Adam then
turns that noise into a full step of either sign, so weights agree to 2 x the largest
learning rate, not to rounding. BatchNorm ('batch') differs by design (per-process
statistics); 'syncbatch' needs CUDA across processes (a clear error, test_train_units.py).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from gaugan import checkpoint as ckpt
from gaugan.config import Config, replace
from gaugan.train.loop import train
from tests.support import checkpoint_tensors, make_store, tiny_config

GRADIENT_RELATIVE_TOLERANCE = 1e-4  # of the tensor's largest gradient
GRADIENT_ABSOLUTE_TOLERANCE = 1e-6  # covers the noise of zero-by-construction gradients


def ddp_config() -> Config:
    # 64x64: instance norm needs more than the 1x1 start of a 32x32 generator.
    cfg = tiny_config(size=64, max_steps=1, batch_size=4, use_ema=True, ema_decay=0.5)
    return replace(cfg, generator={"param_free_norm": "instance"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, cfg: Config, store: str, out_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from gaugan.train.distributed import shutdown_distributed

    try:
        train(cfg, Path(store), Path(out_dir), show_progress=False)
    finally:
        shutdown_distributed()


def test_two_gloo_processes_match_one_process(tmp_path):
    store = make_store(tmp_path / "root", size=64)
    cfg = ddp_config()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(cfg, store, tmp_path / "single", show_progress=False)
    finally:
        torch.set_num_threads(threads)
    mp.start_processes(_worker, args=(2, _free_port(), cfg, str(store), str(tmp_path / "ddp")), nprocs=2,
                       join=True, start_method="spawn")

    payload = ckpt.load_checkpoint(tmp_path / "ddp" / "last.pt")
    single_payload = ckpt.load_checkpoint(single.last_checkpoint)
    assert payload["progress"] == single_payload["progress"] == {"epoch": 0, "step": 1, "batch_in_epoch": 1}
    assert len(payload["rng"]["per_rank"]) == 2  # each rank's random state, for an exact resume

    # Gradients: with TTUR Adam's beta1 is 0, so after one step exp_avg IS the gradient.
    for name in ("G", "D"):
        one, two = single_payload["optimizers"][name]["state"], payload["optimizers"][name]["state"]
        assert one.keys() == two.keys() and len(one) > 0
        for index in one:
            a, b = one[index]["exp_avg"], two[index]["exp_avg"]
            limit = GRADIENT_ABSOLUTE_TOLERANCE + GRADIENT_RELATIVE_TOLERANCE * a.abs().max().item()
            assert (a - b).abs().max().item() <= limit, f"{name} parameter {index}: gradients differ"

    # Weights (and EMA, spectral-norm vectors): within two Adam steps of the largest rate.
    largest_lr = max(payload["optimizers"][name]["param_groups"][0]["lr"] for name in ("G", "D"))
    one, two = checkpoint_tensors(single.last_checkpoint), checkpoint_tensors(tmp_path / "ddp" / "last.pt")
    assert one.keys() == two.keys()
    models = [key for key in one if key.split(".")[0] in ("G", "D", "G_ema")]
    worst = max((one[k].float() - two[k].float()).abs().max().item() for k in models)
    assert worst <= 2 * largest_lr, f"largest weight difference {worst:.3g}"
