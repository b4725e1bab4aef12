"""Where a training step's time and FLOPs go: torch.profiler's op mix and torch's flop counter.

    PYTHONPATH=. python scripts/profile_step.py --config cpu_target          # 2-core CPU target config
    PYTHONPATH=. python scripts/profile_step.py --config ade20k --batch 1 --flops
    PYTHONPATH=. python scripts/profile_step.py --config ade20k --device cuda --batch 16

Prints (and with --output writes as JSON) the top ops by self time over ``--steps`` profiled
steps after one warm-up step, and with ``--flops`` the FLOPs of each part of a step: G's
forward, the G step's backward (through G, and through D and VGG to the fake), D's forward
on fake and real, VGG's forward, the D step's regenerated fake and D's backward.
docs/SPEED.md ("Measured on the CPU") quotes its output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from gaugan.config import Config, replace
from gaugan.data.registry import resolve_dataset
from gaugan.train.adversaries import discriminate
from gaugan.train.bench import LOOKUP_FLOP_FORMULAS, training_setup
from gaugan.train.performance import configure_device
from gaugan.train.steps import generate_fake, prepare_batch

CONFIGS = {
    # README "Speed": the 2-core CPU target (64x64, 8 classes + edge, ngf/ndf 16, SPADE hidden 128, batch 8, no VGG)
    "cpu_target": {"data": {"dataset": "custom", "custom": {"num_classes": 8, "dontcare_label": None},
                            "load_size": 64, "crop_size": 64},
                   "generator": {"ngf": 16, "spade_hidden": 128}, "discriminator": {"ndf": 16},
                   "loss": {"use_vgg_loss": False}, "train": {"batch_size": 8}},
    # The official ADE20K configuration (256x256, 151 channels, ngf/ndf 64, hidden 128, VGG)
    "ade20k": {"data": {"dataset": "ade20k"}, "train": {"batch_size": 16}},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu_target")
    parser.add_argument("--batch", type=int, help="batch size (default: the configuration's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (after one warm-up step)")
    parser.add_argument("--label-conv", choices=["auto", "lookup", "dense"], default="auto")
    parser.add_argument("--reference-schedule", action="store_true", help="the emulated official schedule")
    parser.add_argument("--vgg-weights", help="VGG19 weights file (ADE20K; random ones are fine for speed)")
    parser.add_argument("--flops", action="store_true", help="also count the FLOPs of each part of a step")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = replace(Config(), **CONFIGS[args.config])
    cfg = replace(cfg, train={"device": args.device, "label_conv": args.label_conv,
                              **({"batch_size": args.batch} if args.batch else {})},
                  loss={"vgg_weights": args.vgg_weights})
    spec = resolve_dataset(cfg.data)
    if not args.reference_schedule:
        configure_device(device, cfg.train.cudnn_benchmark)
    training, batch = training_setup(cfg, spec, device, args.reference_schedule)
    step = training.step()  # the training step, as the loop and gaugan bench run it
    result = {"config": args.config, "batch_size": cfg.train.batch_size, "device": str(device),
              "threads": torch.get_num_threads(), "schedule": "reference" if args.reference_schedule else "ours",
              "label_conv": "lookup" if step.runner.label_lookup else "dense"}
    if args.flops:
        result["flops"] = flops_by_part(step.runner, batch)
    step(batch)  # warm-up
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    started = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(args.steps):
            step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    result["step_s_profiled"] = (time.perf_counter() - started) / args.steps
    result["top_ops"] = top_ops(profile, args.top, device)
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


def top_ops(profile: torch.profiler.profile, count: int, device: torch.device) -> list[dict[str, object]]:
    """The ops with the most self time (device time on CUDA), with their share of the total."""
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [event for event in profile.key_averages() if getattr(event, key) > 0]
    total = sum(getattr(event, key) for event in events)
    events.sort(key=lambda event: getattr(event, key), reverse=True)
    return [{"op": event.key, "self_ms": getattr(event, key) / 1e3, "share": getattr(event, key) / total,
             "calls": event.count} for event in events[:count]]


def flops_by_part(runner, batch) -> dict[str, int]:
    """FLOPs of the parts of one step, counted separately (this runs one extra training step)."""
    networks, settings = runner.networks, runner.settings
    seg, real = prepare_batch(batch, runner.num_label_values, runner.device, runner.channels_last,
                              runner.label_lookup)

    def count(function) -> int:
        counter = FlopCounterMode(display=False, custom_mapping=LOOKUP_FLOP_FORMULAS)
        with counter:
            function()
        return int(counter.get_total_flops())

    parts = {}
    parts["G_forward"] = count(lambda: networks.G(seg))
    with torch.no_grad():
        fake = networks.G(seg)
        parts["D_forward_fake_and_real"] = count(lambda: discriminate(networks.D, seg, fake, real))
        if settings.vgg is not None:
            parts["VGG_forward_fake_and_real"] = count(lambda: settings.vgg(fake, real))
        parts["D_step_regenerated_fake"] = count(lambda: generate_fake(networks, seg, real))
    from gaugan.train.steps import discriminator_step, generator_step

    g_step = count(lambda: generator_step(networks, runner.optimizers, seg, real, settings))
    d_step = count(lambda: discriminator_step(networks, runner.optimizers, seg, real, settings))
    forwards = parts["G_forward"] + parts["D_forward_fake_and_real"] + parts.get("VGG_forward_fake_and_real", 0)
    parts["G_step_backward"] = g_step - forwards
    parts["D_step_D_backward"] = d_step - parts["D_step_regenerated_fake"] - parts["D_forward_fake_and_real"]
    parts["G_step"], parts["D_step"], parts["step"] = g_step, d_step, g_step + d_step
    return parts


if __name__ == "__main__":
    sys.exit(main())
