"""Training pieces without a training run: lr schedule, TTUR, global-batch sampler, EMA,
the sync-BN guard (checkpoint writing and the resume-compatibility rule: test_checkpoint.py)."""

from __future__ import annotations

import copy
import functools
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gaugan.config import ConfigError, OptimConfig
from gaugan.train.distributed import (
    DistributedContext,
    GlobalBatchSampler,
    check_sync_batchnorm,
    local_batch_size,
)
from gaugan.train.ema import GeneratorEMA
from gaugan.train.jobs import PeriodicJob, due_jobs
from gaugan.train.schedule import adam_betas, base_lr, learning_rates


def test_lr_constant_then_linear_decay_per_epoch_as_the_official_code():
    optim = OptimConfig(lr=2e-4, num_epochs_constant=3, num_epochs_decay=4)
    # The official code decrements lr by lr/niter_decay at the end of each epoch > niter:
    # epochs 0..3 (0-based) train at lr, then lr*(1 - k/4) for k = 1, 2, 3.
    rates = [base_lr(optim, epoch) for epoch in range(7)]
    assert rates == pytest.approx([2e-4, 2e-4, 2e-4, 2e-4, 1.5e-4, 1e-4, 0.5e-4])
    assert base_lr(optim, 7) == pytest.approx(0.0)  # would be the rate after the last epoch
    official, lr = [], 2e-4
    for epoch in range(1, 8):  # replay the official update_learning_rate(epoch) at epoch ends
        official.append(lr)
        if epoch > optim.num_epochs_constant:
            lr -= optim.lr / optim.num_epochs_decay
    assert rates == pytest.approx(official)


def test_ttur_split_is_reapplied_to_the_decayed_rate_and_betas():
    ttur = OptimConfig(lr=2e-4, use_ttur=True, num_epochs_constant=1, num_epochs_decay=2)
    assert learning_rates(ttur, 0) == pytest.approx((1e-4, 4e-4))
    assert learning_rates(ttur, 2) == pytest.approx((0.5e-4, 2e-4))
    assert adam_betas(ttur) == (0.0, 0.9)
    plain = OptimConfig(lr=2e-4, use_ttur=False, beta1=0.5, beta2=0.999, num_epochs_constant=1, num_epochs_decay=2)
    assert learning_rates(plain, 0) == pytest.approx((2e-4, 2e-4))
    assert adam_betas(plain) == (0.5, 0.999)


def test_global_batches_are_the_same_for_any_number_of_processes():
    one = GlobalBatchSampler(num_samples=13, global_batch_size=4, rank=0, world_size=1, seed=3)
    ranks = [GlobalBatchSampler(13, 4, rank, 2, seed=3) for rank in range(2)]
    for epoch in (0, 1):
        for sampler in [one, *ranks]:
            sampler.set_epoch(epoch)
        single = list(one)
        assert len(single) == 12 and len(set(single)) == 12  # incomplete last batch dropped
        split = [list(sampler) for sampler in ranks]
        rebuilt = [index for batch in range(3) for part in split for index in part[batch * 2:batch * 2 + 2]]
        assert rebuilt == single
    one.set_epoch(0)
    first = list(one)
    one.set_epoch(1)
    assert list(one) != first  # a new order every epoch, fixed by (seed, epoch)


def test_global_batch_size_must_divide_over_processes():
    assert local_batch_size(8, 4) == 2
    with pytest.raises(ConfigError, match="train.batch_size.*not divisible by the 3 processes"):
        local_batch_size(8, 3)


def test_syncbatch_on_several_cpu_processes_is_a_clear_error():
    cpu_pair = DistributedContext(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="generator.param_free_norm: 'syncbatch' needs CUDA"):
        check_sync_batchnorm("syncbatch", cpu_pair)
    check_sync_batchnorm("instance", cpu_pair)
    check_sync_batchnorm("syncbatch", DistributedContext(0, 0, 1, torch.device("cpu")))


def test_ema_averages_parameters_and_copies_buffers():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = GeneratorEMA(net, decay=0.9)
    start = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(4, 3))  # moves the BatchNorm running statistics
    ema.update(net)
    for averaged, before, now in zip(ema.module.parameters(), start, net.parameters()):
        torch.testing.assert_close(averaged, 0.9 * before + 0.1 * now)
        assert not averaged.requires_grad
    for averaged_buffer, buffer in zip(ema.module.buffers(), net.buffers()):
        torch.testing.assert_close(averaged_buffer, buffer)
    with pytest.raises(ValueError, match="ema_decay"):
        GeneratorEMA(net, decay=1.0)


def test_periodic_jobs_are_due_at_their_interval_and_after_the_last_step():
    jobs = [PeriodicJob("log", 2, print), PeriodicJob("sample", 5, print), PeriodicJob("checkpoint", 3, print)]
    due = {step: [job.name for job in due_jobs(jobs, step, total_steps=7)] for step in range(1, 8)}
    assert due == {1: [], 2: ["log"], 3: ["checkpoint"], 4: ["log"], 5: ["sample"], 6: ["log", "checkpoint"],
                   7: ["log", "sample", "checkpoint"]}


def test_spectral_norm_power_iteration_runs_without_autocast(monkeypatch):
    from torch.nn.utils.spectral_norm import SpectralNorm

    from gaugan.train.performance import spectral_norm_in_fp32

    seen = []
    compute_weight = SpectralNorm.compute_weight

    def spy(self, module, do_power_iteration):
        seen.append(torch.is_autocast_enabled("cpu"))
        return compute_weight(self, module, do_power_iteration)

    monkeypatch.setattr(SpectralNorm, "compute_weight", spy)
    plain = nn.utils.spectral_norm(nn.Conv2d(3, 4, 3))
    wrapped = nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(3, 4, 3)), nn.utils.spectral_norm(nn.Conv2d(4, 4, 3)))
    assert spectral_norm_in_fp32(wrapped) == 2
    wrapped.load_state_dict(wrapped.state_dict())  # state-dict hooks still work
    wrapped = copy.deepcopy(wrapped)  # as the EMA copy of G is made
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain(x)
        out = wrapped(x)
    assert seen == [True, False, False]  # autocast on for the plain hook only
    assert out.dtype == torch.bfloat16 and wrapped[0].weight_u.dtype == torch.float32


ALLOCATOR_PROBE = """
import ctypes, resource, sys
from gaugan.train import performance
if len(sys.argv) > 1:
    performance._TRIM_THRESHOLD = int(sys.argv[1])
assert performance.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
def faults_of_one_round(blocks=8, size=16 * 1024 * 1024):
    # A step's activations: many 16 MiB blocks (a 64x64 activation here) alive at once, then freed.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [libc.malloc(size) for _ in range(blocks)]
    for block in held:
        ctypes.memset(block, 1, size)
    for block in held:
        libc.free(ctypes.c_void_p(block))
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_round()
print(max(faults_of_one_round() for _ in range(4)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_reuses_large_blocks_without_page_faults(tmp_path):
    """Freed activations are kept and reused: no fresh zero-filled pages on the next step.

    mallopt takes a C int: a threshold that does not fit (1 << 34 once did) wraps to 0 and
    makes glibc hand every freed block back at once, the opposite of the intent.
    """
    import subprocess

    from gaugan.train import performance

    assert 0 < performance._TRIM_THRESHOLD < 2**31
    script = tmp_path / "probe.py"
    script.write_text(ALLOCATOR_PROBE)
    run = functools.partial(subprocess.run, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    kept = int(run([sys.executable, str(script)]).stdout.strip())
    assert kept < 1024, f"{kept} page faults per step of 128 MiB of re-allocated activations"
    # The probe can fail: with a trim threshold of 0 every block goes back to the kernel.
    returned = int(run([sys.executable, str(script), "0"]).stdout.strip())
    assert returned > 8192, returned
