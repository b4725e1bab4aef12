"""The whole training step replayed from a CUDA graph (``train.cuda_graph``).

Every step has the same shapes, so the thousands of kernels of a G step + D step (forwards,
backwards, both Adam updates, spectral norm's power iterations, the batch-norm statistics)
can be recorded once and replayed with one launch: a small model is then limited by the
GPU, not by Python launching kernels one by one.

How: the first ``warmup_steps`` steps run eagerly on a side stream (cuDNN autotuning, the
optimisers' lazy state, autograd's streams settle there); the next step copies its batch
into static input buffers, records the step into a graph (recording runs nothing) and
replays it; every later step copies its batch in and replays. Loss values come back as
copies of the graph's static outputs, on the device, without a host sync.

What the recording fixes, and how it is kept right:
- learning rates: fused Adam takes them as numbers baked into the graph, so a change of
  any optimiser's rate (the linear decay, once per epoch) records the step again;
- the optimisers are switched to ``capturable`` (step counts on the device), which fused
  Adam computes with the same kernel;
- the batch shape: a batch of another shape is an error (the loader drops partial batches);
- one process only (no DDP), no fp16 gradient scaler (its skipped steps need the host).
Recording uses ``capture_error_mode="thread_local"`` so that the data loader's
pin-memory thread may keep working meanwhile.

The recording is abstracted (:class:`Recorder`) so that the logic above runs, and is
tested, on the CPU with :class:`EagerRecorder`, which replays by calling the step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

StepFunction = Callable[[dict[str, Tensor]], dict[str, Tensor]]


class RecordedStep(Protocol):
    outputs: dict[str, Tensor]

    def replay(self) -> None: ...


Recorder = Callable[[StepFunction, dict[str, Tensor]], RecordedStep]


class CudaGraphStep:
    """A step recorded into a ``torch.cuda.CUDAGraph``: ``outputs`` are filled by ``replay()``."""

    def __init__(self, step: StepFunction, static_batch: dict[str, Tensor]) -> None:
        self.graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.outputs = step(static_batch)

    def replay(self) -> None:
        self.graph.replay()


class EagerRecorder:
    """The CPU stand-in for :class:`CudaGraphStep`: replay runs the step on the static inputs.

    Counts recordings, so that tests can see when a step is recorded again.
    """

    def __init__(self) -> None:
        self.recordings = 0

    def __call__(self, step: StepFunction, static_batch: dict[str, Tensor]) -> RecordedStep:
        self.recordings += 1
        return _EagerStep(step, static_batch)


class _EagerStep:
    def __init__(self, step: StepFunction, static_batch: dict[str, Tensor]) -> None:
        self.step, self.static_batch = step, static_batch
        self.outputs: dict[str, Tensor] = {}

    def replay(self) -> None:
        self.outputs = self.step(self.static_batch)


class GraphedStep:
    """``step(batch)`` with the warm-up / record / replay schedule of the module docstring.

    ``step`` takes a loader batch (host or ``device`` tensors) and returns loss tensors;
    ``optimizers`` are the ones it steps (their learning rates are watched). Recorded steps
    read their batch from static buffers on ``device``.
    """

    def __init__(
        self,
        step: StepFunction,
        optimizers: Sequence[torch.optim.Optimizer],
        device: torch.device,
        warmup_steps: int = 3,
        recorder: Recorder = CudaGraphStep,
    ) -> None:
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1 (the optimisers' state must exist), got {warmup_steps}")
        self.step, self.optimizers, self.warmup_steps, self.recorder = step, list(optimizers), warmup_steps, recorder
        self.device = device
        self.steps_run = 0
        self.recorded: RecordedStep | None = None
        self.recorded_rates: list[float] = []
        self.static_batch: dict[str, Tensor] = {}

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self.steps_run += 1
        if self.steps_run <= self.warmup_steps:
            return _on_side_stream(self.step, batch, self.device)
        rates = self._learning_rates()
        if self.recorded is None or rates != self.recorded_rates:
            self._record(batch, rates)
        else:
            self._copy_in(batch)
        self.recorded.replay()
        return {name: value.clone() for name, value in self.recorded.outputs.items()}

    def _record(self, batch: dict[str, Tensor], rates: list[float]) -> None:
        self.recorded = None  # frees the previous graph's memory pool first
        if self.static_batch:
            self._copy_in(batch)
        else:
            self.static_batch = {name: value.to(self.device, copy=True) for name, value in batch.items()}
        if self.device.type == "cuda":
            make_capturable(self.optimizers)
        self.recorded = self.recorder(self.step, self.static_batch)
        self.recorded_rates = rates

    def _copy_in(self, batch: dict[str, Tensor]) -> None:
        if batch.keys() != self.static_batch.keys():
            raise ValueError(f"a CUDA-graph step needs the same batch keys every step: "
                             f"{sorted(batch)} vs {sorted(self.static_batch)}")
        for name, value in batch.items():
            static = self.static_batch[name]
            if value.shape != static.shape or value.dtype != static.dtype:
                raise ValueError(
                    f"a CUDA-graph step needs the same batch shapes every step: {name!r} is "
                    f"{tuple(value.shape)} {value.dtype}, recorded with {tuple(static.shape)} {static.dtype}; "
                    "drop partial batches or set train.cuda_graph=false"
                )
            static.copy_(value, non_blocking=True)

    def _learning_rates(self) -> list[float]:
        return [float(group["lr"]) for optimizer in self.optimizers for group in optimizer.param_groups]


def make_capturable(optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Adam with its step counts on the parameters' device, as a recorded step needs them."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["capturable"] = True
            for param in group["params"]:
                state = optimizer.state.get(param)
                if state and "step" in state and state["step"].device != param.device:
                    state["step"] = state["step"].to(param.device)


def _on_side_stream(step: StepFunction, batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Warm-up steps run on a side stream, as CUDA graph recording asks (plain call on the CPU)."""
    if device.type != "cuda":
        return step(batch)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        outputs = step(batch)
    torch.cuda.current_stream(device).wait_stream(side)
    return outputs
