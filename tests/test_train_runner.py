"""How the training step executes (gaugan.train.runner): labels or the one-hot map for G,
compiled blocks, the CUDA-graph schedule (recorded and replayed with the CPU stand-in), and
the settings' errors. The maths must not change with any of them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gaugan.config import ConfigError, replace
from gaugan.data.registry import resolve_dataset
from gaugan.data.semantic import LabelRangeError, semantic_labels
from gaugan.train import compiled
from gaugan.train.bench import synthetic_batch
from gaugan.train.cuda_graphs import EagerRecorder, GraphedStep
from gaugan.train.loop import train
from gaugan.train.runner import LOOKUP_MIN_LABEL_CHANNELS, use_label_lookup
from gaugan.train.schedule import set_learning_rate
from gaugan.train.setup import build_training, single_process
from tests.support import assert_identical, tiny_config

CPU = torch.device("cpu")


def runner_for(cfg):
    """Fresh G, D (+E) from ``train.seed``, built as training builds them, and the runner ``cfg.train`` asks for."""
    spec = resolve_dataset(cfg.data)
    training = build_training(cfg, spec, single_process(CPU))
    return training.step().runner, spec, (training.G, training.D, training.E)


def batches(spec, count: int, batch_size: int = 2):
    return [synthetic_batch(spec, batch_size, seed=index) for index in range(count)]


def parameters(models) -> dict[str, torch.Tensor]:
    return {f"{index}.{name}": value.detach().clone() for index, model in enumerate(models) if model is not None
            for name, value in model.state_dict().items()}


# ---- label input -------------------------------------------------------------------------


def test_label_conv_setting_and_auto_rule():
    assert use_label_lookup("lookup", 9, CPU) and not use_label_lookup("dense", 151, CPU)
    assert not use_label_lookup("auto", LOOKUP_MIN_LABEL_CHANNELS - 1, CPU)
    assert use_label_lookup("auto", LOOKUP_MIN_LABEL_CHANNELS, CPU)
    assert not use_label_lookup("auto", 151, torch.device("cuda"))  # unmeasured on GPUs: the published path
    with pytest.raises(ConfigError, match="train.label_conv"):
        use_label_lookup("sparse", 9, CPU)


@pytest.mark.parametrize("use_vae", [False, True])
def test_a_step_with_the_lookup_equals_a_step_with_the_one_hot_map(use_vae):
    """Loss values of a whole G + D step. (Whole-step gradients are no test of exactness at
    this size: the L1 feature-matching terms flip sign on rounding alone -- channels-last vs
    NCHW moves G's gradients by 1% here -- so the gradients are compared layer by layer and
    network by network in test_onehot_conv.py.)"""
    base = replace(tiny_config(size=64), encoder={"use_vae": use_vae})
    results = []
    for label_conv in ("dense", "lookup"):
        runner, spec, _ = runner_for(replace(base, train={"label_conv": label_conv}))
        assert runner.label_lookup == (label_conv == "lookup")
        results.append(runner(batches(spec, 1)[0]))
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("graphed", [False, True])
def test_a_batch_with_an_out_of_range_label_stops_the_step_with_one_line(graphed):
    """Checked on the host once per batch: also before a CUDA graph's replay, which reads the
    batch from device buffers where the step itself cannot check it without a host sync."""
    runner, spec, _ = runner_for(replace(tiny_config(), train={"label_conv": "lookup"}))
    if graphed:
        runner.graphed = lambda batch: pytest.fail("the recorded step ran on a batch with an out-of-range label")
    batch = batches(spec, 1)[0]
    batch["label"][1, 0, 0] = spec.num_label_values
    with pytest.raises(LabelRangeError, match=rf"^batch of store items 0, 1: label index {spec.num_label_values} "
                                              rf"outside the valid range 0\.\.{spec.num_label_values - 1}"):
        runner(batch)


# ---- CUDA-graph schedule (CPU stand-in) --------------------------------------------------


def test_graphed_step_warms_up_records_once_and_replays_like_eager_steps():
    cfg = tiny_config()
    eager, spec, eager_models = runner_for(cfg)
    graphed_runner, _, graphed_models = runner_for(cfg)
    recorder = EagerRecorder()
    graphed = GraphedStep(graphed_runner.eager_step, [graphed_runner.optimizers.G, graphed_runner.optimizers.D], CPU,
                          warmup_steps=2, recorder=recorder)
    data = batches(spec, 6)
    for index, batch in enumerate(data):
        if index == 4:  # the schedule's next epoch: a new learning rate is recorded again
            for runner in (eager, graphed_runner):
                set_learning_rate(runner.optimizers.G, 5e-5)
        expected, got = eager(batch), graphed(batch)
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[name], got[name]) for name in expected)
        assert recorder.recordings == (0 if index < 2 else 1 if index < 4 else 2)
    assert graphed.static_batch["label"].data_ptr() != data[-1]["label"].data_ptr()  # static copies
    expected_state, got_state = parameters(eager_models), parameters(graphed_models)
    assert all(torch.equal(expected_state[name], got_state[name]) for name in expected_state)


def test_graphed_step_refuses_another_batch_shape_and_too_little_warmup():
    runner, spec, _ = runner_for(tiny_config())
    graphed = GraphedStep(runner.eager_step, [runner.optimizers.G], CPU, warmup_steps=1, recorder=EagerRecorder())
    graphed(synthetic_batch(spec, 2))
    graphed(synthetic_batch(spec, 2))
    with pytest.raises(ValueError, match=r"same batch shapes.*'label' is \(1, 32, 32\).*train.cuda_graph=false"):
        graphed(synthetic_batch(spec, 1))
    with pytest.raises(ValueError, match="warmup_steps"):
        GraphedStep(runner.eager_step, [], CPU, warmup_steps=0)


def test_cuda_graph_setting_names_what_it_needs():
    with pytest.raises(ConfigError, match=r"train.cuda_graph: true needs a CUDA device \(this run uses cpu\)"):
        runner_for(tiny_config(cuda_graph=True))


# ---- compiled blocks ---------------------------------------------------------------------


@pytest.fixture
def dynamo_only(monkeypatch):
    """Dynamo's tracing, guards and recompilation without code generation: the compiled-mode
    plumbing of a whole step in seconds on the CPU (inductor takes minutes here, AOT autograd
    about a minute; both run on one block below)."""
    monkeypatch.setattr(compiled, "BACKEND", "eager")
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(("mode", "use_vae"), [("blocks", True), ("full", False)])
def test_compiled_steps_equal_eager_steps_and_keep_the_state_dict(dynamo_only, mode, use_vae):
    cfg = replace(tiny_config(size=64), encoder={"use_vae": use_vae})
    eager, spec, eager_models = runner_for(cfg)
    compiled_runner, _, compiled_models = runner_for(replace(cfg, train={"compile": mode}))
    batch = batches(spec, 1)[0]
    for _ in range(2):  # the second step runs the recorded variants again
        torch.manual_seed(1)  # the VAE's noise
        expected = eager(batch)
        torch.manual_seed(1)
        got = compiled_runner(batch)
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)
    expected_state, got_state = parameters(eager_models), parameters(compiled_models)
    assert expected_state.keys() == got_state.keys()  # checkpoints do not see compilation
    for name, value in expected_state.items():
        torch.testing.assert_close(got_state[name], value, rtol=1e-4, atol=1e-5, msg=name)
    if mode == "blocks":
        G, D, E = compiled_models
        assert sum(module._compiled_call_impl is not None for module in G.modules()) == 7  # the SPADE blocks
        assert sum(module._compiled_call_impl is not None for module in D.modules()) == 2  # the two scales
        assert E._compiled_call_impl is not None


def test_a_compiled_spade_block_computes_what_eager_does(monkeypatch):
    """One residual block with a learned shortcut, spectral norm and batch norms, through AOT
    autograd: values, gradients, and the buffers that its hooks and norms update in place, for
    lookup and dense label convolutions. About 10 s on the loaded 2-core CPU."""
    from gaugan.models.generator import SPADEResBlock
    from gaugan.models.spade import SPADE

    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    torch.manual_seed(0)
    block = SPADEResBlock(8, 4, lambda channels: SPADE(channels, 5, "batch", 3, 6), use_spectral_norm=True)
    reference = copy.deepcopy(block)
    assert compiled.compile_blocks(block) == 1
    x = torch.randn(2, 8, 8, 8)
    labels = semantic_labels(torch.randint(0, 4, (2, 16, 16)), 4, torch.randint(0, 2, (2, 16, 16)))
    try:
        for seg in (labels, labels.dense()):
            compare_and_backward(block(x, seg), reference(x, seg), tolerance=1e-4)
        assert_same_grads_and_buffers(block, reference)
    finally:
        torch._dynamo.reset()


def test_inductor_gets_spectral_norm_gradients_right_with_the_hook_kept_eager():
    """torch 2.14's inductor got weight_orig's gradient wrong with spectral norm's training-mode
    hook inside the compiled code (up to 8% of its largest value); the hook now runs eagerly.
    Inductor's code generation: about 10 s on an idle 2-core CPU, 25 s loaded."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(4, 4, 3, padding=1)), nn.ReLU(),
                           nn.utils.spectral_norm(nn.Conv2d(4, 4, 3, padding=1)))
    reference = copy.deepcopy(module)
    compiled_module = compiled.compile_whole(module)
    x = torch.randn(2, 4, 8, 8)
    try:
        for _ in range(2):
            compare_and_backward(compiled_module(x), reference(x), tolerance=1e-5)
        assert_same_grads_and_buffers(module, reference)
    finally:
        torch._dynamo.reset()


def compare_and_backward(got: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    """Equal outputs, then the same random upstream gradient through both."""
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
    upstream = torch.randn_like(got)
    got.backward(upstream)
    expected.backward(upstream)


def assert_same_grads_and_buffers(module: nn.Module, reference: nn.Module) -> None:
    for (name, param), reference_param in zip(module.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, reference_param.grad, rtol=1e-4, atol=1e-4, msg=name)
    for (name, buffer), reference_buffer in zip(module.named_buffers(), reference.buffers()):
        torch.testing.assert_close(buffer, reference_buffer, rtol=1e-4, atol=1e-5, msg=name)


# ---- in the training loop ------------------------------------------------------------------


def test_training_with_the_lookup_resumes_exactly(store, tmp_path):
    cfg = tiny_config(max_steps=4, checkpoint_every=2, label_conv="lookup")
    full = train(cfg, store, tmp_path / "full", show_progress=False)
    train(replace(cfg, train={"max_steps": 2}), store, tmp_path / "split", show_progress=False)
    resumed = train(cfg, store, tmp_path / "split", show_progress=False)
    assert resumed.resumed_from_step == 2 and resumed.step == 4
    assert_identical(full.last_checkpoint, resumed.last_checkpoint)


def test_the_loop_steps_through_the_runner_of_its_settings(store, tmp_path, monkeypatch):
    """train.label_conv reaches G in training (labels, not the one-hot map), and
    train.cuda_graph is checked there as in the benchmark."""
    from gaugan.data.semantic import SemanticLabels
    from gaugan.train import steps

    seen = []
    real_generator_step = steps.generator_step

    def recording(networks, optimizers, seg, *args):
        seen.append(type(seg))
        return real_generator_step(networks, optimizers, seg, *args)

    monkeypatch.setattr(steps, "generator_step", recording)
    train(tiny_config(max_steps=1, label_conv="lookup"), store, tmp_path / "lookup", show_progress=False)
    train(tiny_config(max_steps=1, label_conv="dense"), store, tmp_path / "dense", show_progress=False)
    assert seen == [SemanticLabels, torch.Tensor]
    with pytest.raises(ConfigError, match="train.cuda_graph: true needs a CUDA device"):
        train(tiny_config(max_steps=1, cuda_graph=True), store, tmp_path / "graph", show_progress=False)


# ---- on a GPU (skipped here; scripts/gpu_bench.sh runs the same checks) ----------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("setting", [{"cuda_graph": True}, {"label_conv": "lookup"}, {"compile": "blocks"}])
def test_on_a_gpu_an_execution_setting_gives_the_eager_dense_losses(setting):
    from gaugan.train.bench import compare_step_by_step

    cfg = replace(tiny_config(size=64), train={"device": "cuda", "precision": "fp32", "label_conv": "dense"})
    spec = resolve_dataset(cfg.data)
    # A CUDA graph replays from the 5th step on; the others differ from the first step on.
    steps = 6 if "cuda_graph" in setting else 1
    result = compare_step_by_step(cfg, replace(cfg, train=setting), spec, torch.device("cuda"), steps=steps)
    assert result["max_relative_difference"] < 1e-3, result
