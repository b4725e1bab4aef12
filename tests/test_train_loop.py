"""The training loop on a tiny store: steps touch every parameter, losses move sanely, exact
resume (also after kill -9), refusal of an incompatible checkpoint, the divergence guard,
EMA, sample grids, and our fast schedule against the official one (same maths)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from gaugan import checkpoint as ckpt
from gaugan import losses
from gaugan.config import Config, replace
from gaugan.data.dataset import StoreDataset
from gaugan.data.registry import resolve_dataset
from gaugan.data.store import read_manifest, spec_from_manifest
from gaugan.models.loading import load_generator
from gaugan.train import steps
from gaugan.train.bench import synthetic_batch
from gaugan.train.guard import TrainingDiverged
from gaugan.train.loop import train
from gaugan.train.setup import build_training_models, make_optimizers
from gaugan.train.steps import Networks, discriminator_step, generator_step, prepare_batch, step_settings
from pipeline.params import dump_config
from stages import train as train_stage
from tests.support import ROOT, assert_identical, make_store, tiny_config


def one_batch(store: Path, cfg: Config):
    spec = spec_from_manifest(read_manifest(store))
    dataset = StoreDataset(store, "train", spec, train=True, seed=0)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(cfg.train.batch_size)])
    return spec, prepare_batch(batch, spec.num_label_values, torch.device("cpu"))


def step_objects(cfg: Config, spec, skip_d_weight_grads: bool = True):
    torch.manual_seed(0)
    G, D, E = build_training_models(cfg, spec)
    optimizers = make_optimizers(cfg, G, D, E, torch.device("cpu"), epoch=0)
    settings = step_settings(cfg, spec, reference=not skip_d_weight_grads)
    return Networks(G=G, D=D, D_module=D, E=E), optimizers, settings


# A conv bias right before a parameter-free normalisation (BatchNorm / InstanceNorm
# subtracts the per-channel mean) has a zero gradient by construction, in the official model
# too: SPADEResBlock's conv_0 feeds norm_1, and conv_1's output feeds the next block's norm.
# And the hinge loss gives D's final bias the gradient (fake in margin - real in margin) / N,
# exactly 0 while every output lies in (-1, 1), as in the first steps. These must still
# receive a gradient tensor (they are in the graph); only its value may be zero.
ZERO_GRADIENT_BY_CONSTRUCTION = (".conv_0.bias", ".conv_1.bias", ".model4.0.bias")


@pytest.mark.parametrize("use_vae", [False, True])
def test_steps_touch_every_parameter_and_losses_move(use_vae):
    # 64x64 (start 2x2): at 32x32 the generator starts at 1x1, where a batch of 2 makes
    # BatchNorm's output constant and the first block's SPADE gets no gradient at all.
    cfg = replace(tiny_config(size=64), encoder={"use_vae": use_vae})
    spec = resolve_dataset(cfg.data)
    seg, real = prepare_batch(synthetic_batch(spec, batch_size=2), spec.num_label_values, torch.device("cpu"))
    networks, optimizers, settings = step_objects(cfg, spec)

    def untouched(named_parameters):
        return [name for name, p in named_parameters
                if p.grad is None or not (p.grad.abs().sum() > 0 or name.endswith(ZERO_GRADIENT_BY_CONSTRUCTION))]

    g_losses = generator_step(networks, optimizers, seg, real, settings)
    trained = list(networks.G.named_parameters()) + (list(networks.E.named_parameters()) if use_vae else [])
    assert not untouched(trained), "G/E parameters without gradient"
    # The fast path computes no weight gradients for D in the G step (and leaves D trainable).
    assert all(p.grad is None and p.requires_grad for p in networks.D.parameters())
    assert set(g_losses) == {"loss/g_gan", "loss/g_feat", "loss/g_total"} | ({"loss/g_kld"} if use_vae else set())

    d_losses = discriminator_step(networks, optimizers, seg, real, settings)
    # Hinge at initialisation: D outputs near 0, so each term is near 1.
    assert d_losses["loss/d_real"].item() == pytest.approx(1.0, abs=0.1)
    assert d_losses["loss/d_fake"].item() == pytest.approx(1.0, abs=0.1)

    # A few more steps on the same batch: D learns to separate real from fake.
    for _ in range(5):
        generator_step(networks, optimizers, seg, real, settings)
        last = discriminator_step(networks, optimizers, seg, real, settings)
    assert torch.isfinite(torch.stack(list(last.values()))).all()
    assert last["loss/d_total"].item() < d_losses["loss/d_total"].item() - 0.05
    assert not untouched(networks.D.named_parameters()), "D parameters without gradient"


def test_fast_g_step_has_the_official_maths(store):
    """Our schedule against the official one (D weight gradients in the G step, a gradient for
    the fake in the D step): the skipped work changes no number."""
    cfg = tiny_config()
    spec, (seg, real) = one_batch(store, cfg)
    results = []
    for skip in (True, False):
        networks, optimizers, settings = step_objects(cfg, spec, skip_d_weight_grads=skip)
        for _ in range(2):
            generator_step(networks, optimizers, seg, real, settings)
            discriminator_step(networks, optimizers, seg, real, settings)
        results.append({**networks.G.state_dict(), **{f"D.{k}": v for k, v in networks.D.state_dict().items()}})
    for key, value in results[0].items():
        torch.testing.assert_close(value, results[1][key], rtol=0, atol=1e-6, msg=key)


def test_resume_equals_an_uninterrupted_run_exactly(store, tmp_path):
    # VAE: the encoder's noise comes from the global RNG, so this also checks its restore.
    cfg = replace(tiny_config(use_ema=True, ema_decay=0.9, checkpoint_every=3), encoder={"use_vae": True})
    full = train(cfg, store, tmp_path / "full", show_progress=False)
    assert full.step == 6 and full.resumed_from_step == 0

    first = train(replace(cfg, train={"max_steps": 3}), store, tmp_path / "split", show_progress=False)
    assert first.step == 3
    progress = ckpt.load_checkpoint(tmp_path / "split" / "last.pt")["progress"]
    assert progress == {"epoch": 0, "step": 3, "batch_in_epoch": 3}
    # Continue with different logging/checkpointing and a loader worker process: allowed, and
    # crosses an epoch boundary.
    second = train(replace(cfg, train={"log_every": 1, "checkpoint_every": 5}, data={"num_workers": 1}), store,
                   tmp_path / "split", show_progress=False)
    assert second.resumed_from_step == 3 and second.step == 6
    assert_identical(full.last_checkpoint, second.last_checkpoint)
    assert ckpt.load_checkpoint(second.last_checkpoint)["progress"] == {"epoch": 1, "step": 6, "batch_in_epoch": 2}

    # generator.pt: the same format, generation models only; the reader prefers the EMA.
    final = ckpt.load_checkpoint(full.generator_checkpoint)
    assert set(final["models"]) == {"G", "G_ema", "E"} and "optimizers" not in final
    loaded = load_generator(full.generator_checkpoint)
    assert loaded.weights == "G_ema"
    ema_state, g_state = final["models"]["G_ema"], final["models"]["G"]
    assert any(not torch.equal(ema_state[k], g_state[k]) for k in g_state if g_state[k].is_floating_point())

    # A rerun of a finished run changes nothing.
    again = train(cfg, store, tmp_path / "full", show_progress=False)
    assert again.step == 6 and again.resumed_from_step == 6
    assert_identical(full.last_checkpoint, again.last_checkpoint)


def test_resume_after_kill_9_equals_an_uninterrupted_run(store, tmp_path):
    """A process killed with SIGKILL right after step 5 (checkpoints every 2 steps) resumes from step 4."""
    cfg = tiny_config(checkpoint_every=2)
    full = train(cfg, store, tmp_path / "full", show_progress=False)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from pathlib import Path
        from tests.support import tiny_config
        from gaugan.config import replace
        from gaugan.train.loop import train

        def report(metrics, step):
            if step == 5:
                os.kill(os.getpid(), signal.SIGKILL)

        cfg = replace(tiny_config(checkpoint_every=2), train={{"log_every": 1}})
        train(cfg, Path({str(store)!r}), Path({str(tmp_path / "killed")!r}), report=report, show_progress=False)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert ckpt.load_checkpoint(tmp_path / "killed" / "last.pt")["progress"]["step"] == 4
    assert not (tmp_path / "killed" / "generator.pt").exists()
    resumed = train(cfg, store, tmp_path / "killed", show_progress=False)
    assert resumed.resumed_from_step == 4
    assert_identical(full.last_checkpoint, resumed.last_checkpoint)


def test_resume_refuses_a_checkpoint_from_another_training_config(store, tmp_path):
    cfg = tiny_config(max_steps=2)
    train(cfg, store, tmp_path, show_progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    changed = replace(cfg, optim={"lr": 1e-3}, loss={"lambda_feat": 5.0}, train={"max_steps": 4})
    with pytest.raises(ckpt.CheckpointError) as caught:
        train(changed, store, tmp_path, show_progress=False)
    message = str(caught.value)
    assert "loss.lambda_feat: 10.0 -> 5.0" in message and "optim.lr: 0.0002 -> 0.001" in message
    assert "train.max_steps" not in message and str(tmp_path / "last.pt") in message
    assert (tmp_path / "last.pt").read_bytes() == before
    # Starting afresh is explicit.
    fresh = train(replace(changed, train={"resume": False}), store, tmp_path, show_progress=False)
    assert fresh.resumed_from_step == 0 and fresh.step == 4


def test_train_stage_refuses_a_crafted_last_pt_without_running_its_code(tmp_path, write_crafted_checkpoint):
    """``python -m stages.train`` reads last.pt to resume only through the safe reader: a
    pickle calling os.system never runs; the message names it and says how to start afresh."""
    cfg = tiny_config()
    make_store(tmp_path)
    (tmp_path / "params.yaml").write_text(dump_config(cfg))
    last, marker = tmp_path / cfg.train.checkpoint_dir / "last.pt", tmp_path / "command_ran"
    write_crafted_checkpoint(last, marker)
    env = {key: value for key, value in os.environ.items() if not key.startswith("DVC")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "stages.train"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert not marker.exists(), "unpickling last.pt ran the command"
    assert result.returncode != 0
    assert f"disallowed Python object ({os.system.__module__}.system)" in result.stderr, result.stderr[-2000:]
    assert "could run code" in result.stderr and "set train.resume=false or delete" in result.stderr

    # The stage first looks whether a finished run (generator.pt beside last.pt) is stale: safely too.
    (last.parent / "generator.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="disallowed Python object"):
        train_stage.run(cfg, tmp_path)
    assert not marker.exists()


def test_non_finite_loss_stops_naming_loss_and_step_and_keeps_the_good_checkpoint(store, tmp_path, monkeypatch):
    cfg = tiny_config(checkpoint_every=2, log_every=4)
    calls = {"count": 0}
    real_feature_matching = losses.feature_matching_loss

    def poisoned(pred_fake, pred_real):
        calls["count"] += 1
        value = real_feature_matching(pred_fake, pred_real)
        return value * float("nan") if calls["count"] == 3 else value  # the G step of step 3

    monkeypatch.setattr(losses, "feature_matching_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss/g_feat, loss/g_total, .*became non-finite at step 3;") as caught:
        train(cfg, store, tmp_path, show_progress=False)
    assert "last good checkpoint" in str(caught.value)
    kept = ckpt.load_checkpoint(tmp_path / "last.pt")
    assert kept["progress"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in kept["models"]["G"].values() if v.is_floating_point())
    assert not (tmp_path / "generator.pt").exists()


def test_divergence_before_any_checkpoint_says_a_rerun_starts_afresh(store, tmp_path, monkeypatch):
    cfg = tiny_config(checkpoint_every=100, log_every=2)
    real_feature_matching = losses.feature_matching_loss
    monkeypatch.setattr(losses, "feature_matching_loss", lambda *args: real_feature_matching(*args) * float("nan"))
    with pytest.raises(TrainingDiverged, match=r"became non-finite at step 1;") as caught:
        train(cfg, store, tmp_path, show_progress=False)
    message = str(caught.value)
    assert "no checkpoint of this run had been written yet" in message and "it starts afresh" in message
    assert "resumes" not in message and not (tmp_path / "last.pt").exists()


def test_non_finite_weights_are_never_checkpointed(store, tmp_path, monkeypatch):
    """D's weights turn NaN in the D update of step 4, a checkpoint step, while every loss up to
    then was finite: the checkpoint of step 2 must stay the last one."""
    cfg = tiny_config(checkpoint_every=2, log_every=100)
    calls = {"count": 0}
    real_discriminator_step = steps.discriminator_step

    def poisoned(networks, *args):
        step_losses = real_discriminator_step(networks, *args)
        calls["count"] += 1
        if calls["count"] == 4:
            with torch.no_grad():
                next(networks.D_module.parameters()).fill_(float("nan"))
        return step_losses

    monkeypatch.setattr(steps, "discriminator_step", poisoned)
    with pytest.raises(TrainingDiverged, match=r"the weights of D became non-finite at step 4 \(the losses") as caught:
        train(cfg, store, tmp_path, show_progress=False)
    assert f"the last good checkpoint {tmp_path / 'last.pt'} (step 2) is kept" in str(caught.value)
    assert "it resumes from that checkpoint" in str(caught.value)
    kept = ckpt.load_checkpoint(tmp_path / "last.pt")
    assert kept["progress"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in kept["models"]["D"].values() if v.is_floating_point())


def test_headline_speed_is_the_whole_runs_average_not_the_last_window(store, tmp_path, monkeypatch):
    """perf/images_per_s is images trained / wall time of the loop so far (after the last step:
    the run's average); the rate of the steps since the previous log is perf/images_per_s_window."""
    cfg = tiny_config(max_steps=4, log_every=2)
    calls = {"count": 0}
    real_generator_step = steps.generator_step

    def slow_first_window(*args):
        calls["count"] += 1
        if calls["count"] <= 2:
            time.sleep(0.5)
        return real_generator_step(*args)

    monkeypatch.setattr(steps, "generator_step", slow_first_window)
    reported = []
    result = train(cfg, store, tmp_path, report=lambda metrics, step: reported.append(metrics), show_progress=False)
    first, last = reported
    assert first["perf/images_per_s"] == pytest.approx(first["perf/images_per_s_window"], rel=0.01)
    # Two windows of 2 steps of 2 images: the run's rate is 8 images over both windows' time.
    seconds = 4 / first["perf/images_per_s_window"] + 4 / last["perf/images_per_s_window"]
    assert last["perf/images_per_s"] == pytest.approx(8 / seconds, rel=0.05)
    assert last["perf/images_per_s"] < last["perf/images_per_s_window"]
    assert result.metrics["perf/images_per_s"] == last["perf/images_per_s"]


def test_metrics_and_sample_grids_are_reported(store, tmp_path):
    cfg = tiny_config(max_steps=4, log_every=2, sample_every=2)
    reported, images = [], []
    result = train(cfg, store, tmp_path, report=lambda m, s: reported.append((s, m)),
                   report_image=lambda p, s: images.append((s, p)))
    assert [step for step, _ in reported] == [2, 4]
    metrics = reported[-1][1]
    for key in ("loss/g_gan", "loss/g_feat", "loss/d_real", "loss/d_fake", "lr/g", "lr/d",
                "perf/images_per_s", "perf/peak_memory_bytes"):
        assert key in metrics
    assert metrics["lr/g"] == pytest.approx(1e-4) and metrics["lr/d"] == pytest.approx(4e-4)
    assert [step for step, _ in images] == [2, 4]
    from PIL import Image

    with Image.open(images[-1][1]) as grid:  # 4 rows of label | generated | real, 32x32 each
        assert grid.size == (3 * 32, 4 * 32)
    assert result.metrics == metrics


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_steps_keep_fp32_weights_and_losses(dtype):
    """The CUDA autocast path, run with CPU autocast (no GPU here): fp32 master weights and
    gradients, fp32 losses, spectral norm in fp32; fp16 goes through gradient scalers."""
    from gaugan.train.performance import spectral_norm_in_fp32

    cfg = tiny_config(size=64)
    spec = resolve_dataset(cfg.data)
    seg, real = prepare_batch(synthetic_batch(spec, batch_size=2), spec.num_label_values, torch.device("cpu"),
                              channels_last=True)
    networks, optimizers, _ = step_objects(cfg, spec)
    assert spectral_norm_in_fp32(networks.G) > 0 and spectral_norm_in_fp32(networks.D) > 0
    if dtype is torch.float16:
        optimizers.scaler_G, optimizers.scaler_D = torch.amp.GradScaler("cpu"), torch.amp.GradScaler("cpu")
    settings = step_settings(cfg, spec, autocast_dtype=dtype)
    for _ in range(2):
        g_losses = generator_step(networks, optimizers, seg, real, settings)
        d_losses = discriminator_step(networks, optimizers, seg, real, settings)
    for value in {**g_losses, **d_losses}.values():
        assert value.dtype == torch.float32 and torch.isfinite(value)
    for module in (networks.G, networks.D):
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
                   for p in module.parameters() if p.grad is not None)
        assert all(b.dtype == torch.float32 for name, b in module.named_buffers() if name.endswith(("_u", "_v")))
