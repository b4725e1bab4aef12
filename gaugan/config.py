"""The one configuration schema of the project.

Frozen dataclasses, one per section of ``params.yaml``, mirrored key for key. Loading
(:func:`config_from_dict`) rejects unknown keys, missing keys and wrong types with a
message that names the key, the value and what is allowed. Derived numbers (label
channels, the start size of the generator) are computed from the config and the dataset
spec, never written back into it.

Defaults follow the official SPADE code (docs/SPADE.md sections 1-2) except where the
built-in dataset needs a CPU-sized run; those places say so.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from gaugan.errors import UserError

DATASET_NAMES = ("landscapes", "ade20k", "ade20k_outdoor", "coco", "cityscapes", "facades", "custom")
DatasetName = Literal["landscapes", "ade20k", "ade20k_outdoor", "coco", "cityscapes", "facades", "custom"]
PreprocessMode = Literal["resize_and_crop", "scale_width_and_crop", "fixed", "none"]


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown or of the wrong type or range."""


# --------------------------------------------------------------------------------------
# Sections.


@dataclass(frozen=True)
class BuiltinDataConfig:
    """The procedurally generated landscape dataset (no download)."""

    num_train: int = 1000
    num_val: int = 100
    size: int = 64  # square side of the stored images; CPU-sized on purpose
    seed: int = 0


@dataclass(frozen=True)
class CustomDataConfig:
    """Any folder of ``images/``, ``labels/`` and optional ``instances/``."""

    num_classes: int | None = None  # None: inferred from the training labels
    dontcare_label: int | None = 255  # label value meaning "don't care", None: none
    val_fraction: float = 0.1  # used only when the folder has no val/ split
    split_seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    dataset: DatasetName = "landscapes"
    root: str = "data/raw"  # downloads and extracted archives, one folder per dataset
    processed_dir: str = "data/processed"  # the training-ready store
    # Sizes: None means the dataset's published value (gaugan.data.registry).
    load_size: int | None = None
    crop_size: int | None = None
    aspect_ratio: float | None = None
    preprocess_mode: PreprocessMode | None = None
    use_instance: bool | None = None  # None: the dataset's own convention
    flip: bool = True
    num_workers: int = 2
    # Larger images are refused as corrupt files or decompression bombs (PIL's own guard
    # stops at 179 megapixels with a traceback); raise it for genuinely huge photos.
    max_image_pixels: int = 100_000_000
    outdoor_list: str | None = None  # ade20k_outdoor: a file of image stems instead of the built-in filter
    builtin: BuiltinDataConfig = field(default_factory=BuiltinDataConfig)
    custom: CustomDataConfig = field(default_factory=CustomDataConfig)


@dataclass(frozen=True)
class GeneratorConfig:
    # "spade": the paper's generator; "clade": class-adaptive normalization (Tan et al.
    # 2020) in place of SPADE; "pix2pixhd": the baseline fed the label map only at its input;
    # "oasis": the OASIS generator (Sushko et al. 2021; docs/OASIS.md): SPADE blocks, no
    # encoder, one block fewer than SPADE's.
    arch: Literal["spade", "clade", "pix2pixhd", "oasis"] = "spade"
    ngf: int = 64
    num_upsampling_layers: Literal["normal", "more", "most"] = "normal"
    param_free_norm: Literal["instance", "batch", "syncbatch"] = "syncbatch"
    spade_kernel_size: Literal[1, 3, 5] = 3
    spade_hidden: int = 128
    use_spectral_norm: bool = True
    # 3D noise (OASIS): channels of N(0, 1) noise concatenated with the label map at G's
    # input and in every SPADE layer (spade and oasis generators; OASIS uses 64); 0: none.
    noise_channels: int = 0
    # pix2pixHD baseline only
    pix2pixhd_num_downsample: int = 4
    pix2pixhd_num_blocks: int = 9


@dataclass(frozen=True)
class DiscriminatorConfig:
    # "multiscale": the paper's PatchGANs on (label map, image), hinge loss (+ feature
    # matching); "oasis": the OASIS segmentation discriminator on the image alone, trained
    # with the class-balanced N+1 cross-entropy (and LabelMix; docs/OASIS.md).
    arch: Literal["multiscale", "oasis"] = "multiscale"
    ndf: int = 64  # oasis: the widths are ndf x (2, 2, 4, 4, 8, 8), as published at 64
    num_discriminators: int = 2  # num_D (multiscale)
    num_layers: int = 4  # n_layers_D (multiscale)
    num_res_blocks: int = 6  # oasis: down (and up) residual blocks, 1..6; image sides multiples of 2**n
    use_spectral_norm: bool = True
    norm: Literal["instance", "none"] = "instance"  # multiscale


@dataclass(frozen=True)
class EncoderConfig:
    use_vae: bool = False  # style encoder + KL loss; G then starts from z
    nef: int = 64  # the official code uses ngf here
    z_dim: int = 256
    use_spectral_norm: bool = True


@dataclass(frozen=True)
class LossConfig:
    gan_mode: Literal["hinge", "ls", "original"] = "hinge"  # the multiscale discriminator's loss
    use_feat_loss: bool = True  # feature matching (multiscale discriminator)
    lambda_feat: float = 10.0
    use_vgg_loss: bool = True
    lambda_vgg: float = 10.0
    vgg_weights: str | None = None  # path to vgg19-dcbb9e9d.pth; None: torch hub cache
    lambda_kld: float = 0.05
    # OASIS discriminator only (docs/OASIS.md): weight the real pixels' cross-entropy by
    # inverse class frequency, and LabelMix's consistency loss (published weights: 10 for
    # ADE20K and COCO-Stuff, 5 for Cityscapes).
    use_class_balancing: bool = True
    use_labelmix: bool = False
    lambda_labelmix: float = 10.0


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-4
    use_ttur: bool = True  # G lr/2, D lr*2, betas (0, 0.9)
    # The rates of G and D before the decay, replacing lr (and TTUR's split) when set
    # (OASIS: G 1e-4, D 4e-4 with betas 0 / 0.999; Cityscapes G 4e-4).
    lr_g: float | None = None
    lr_d: float | None = None
    beta1: float = 0.5  # used without TTUR
    beta2: float = 0.999  # used without TTUR
    num_epochs_constant: int = 100  # niter
    num_epochs_decay: int = 100  # niter_decay
    fused: bool = True  # fused Adam where the device supports it


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 8  # global batch size (split over DDP processes)
    max_steps: int | None = None  # stop early (smoke runs, benchmarks); None: all epochs
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # GPUs one training claims on its node among those no other experiment holds (one per
    # torchrun process; pipeline/launch.py, gaugan/gpu_claims.py).
    gpus: int = 1
    # CPU threads torch computes with in every stage; None: OMP_NUM_THREADS, else the
    # cores available minus data.num_workers, at least 1 (gaugan/threads.py).
    num_threads: int | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"  # autocast dtype on CUDA; CPU always fp32
    channels_last: bool = True
    compile: Literal["none", "blocks", "full"] = "none"  # torch.compile: per residual block / D scale, or whole nets
    cuda_graph: bool = False  # CUDA, one process: replay the whole G+D step from a CUDA graph
    label_conv: Literal["auto", "lookup", "dense"] = "auto"  # convs over the one-hot map: exact lookup or dense
    cudnn_benchmark: bool = True
    use_ema: bool = False
    ema_decay: float = 0.999
    # Batches of training images that the EMA generator's batch-norm statistics are
    # recomputed on before it is sampled, scored or saved (its weights are an average,
    # so G's statistics do not fit it; OASIS does the same with 51); 0: copy G's.
    ema_statistics_batches: int = 51
    log_every: int = 10
    sample_every: int = 200
    checkpoint_every: int = 500
    checkpoint_dir: str = "checkpoints/train"
    resume: bool = True


@dataclass(frozen=True)
class SegmenterConfig:
    """The segmenter the pipeline trains for datasets without a published one."""

    width: int = 32
    num_steps: int = 3000  # optimiser steps (as many epochs as they take: small splits get trained enough)
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    checkpoint_dir: str = "checkpoints/segmenter"


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 16
    seed: int = 0  # z for VAE models, from the prior
    use_ema: bool = True  # use EMA weights when the checkpoint has them
    output_dir: str = "outputs/generated"
    fid_weights: str | None = None  # pt_inception-2015-12-05-6726825d.pth; None: torch hub cache
    segmenter: Literal["auto", "published", "trained", "torchscript", "none"] = "auto"
    segmenter_path: str | None = None  # evaluate.segmenter=torchscript: the user's TorchScript module
    segmenter_weights_dir: str = "data/weights"
    fid_stats_dir: str = "data/fid_stats"  # cached real-image Inception features, <dataset>_<H>x<W>.npz
    checkpoint: str | None = None  # generator to evaluate (ours or an official latest_net_G.pth); None: train's generator.pt
    style_image: str | None = None  # VAE only: sample every z from this photo's posterior instead of the prior
    every_epochs: int = 0  # score the generator every N epochs during training (0: off)
    during_training_images: int = 500  # the fixed subset scored during training
    checkpoint_choice: Literal["final", "best_fid", "best_miou"] = "final"  # the generator generate uses
    selection_split: Literal["val", "train_holdout"] = "val"  # where the during-training subset comes from


@dataclass(frozen=True)
class WeightsConfig:
    """Pretrained files evaluation and training need (the weights stage)."""

    download: bool = True  # fetch missing files from their published URLs (false: only check what is there)
    mirror: str | None = None  # an https base URL serving the same file names (a mirror) instead of the published URLs


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    experiment_name: str = "gaugan"
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite at the repo root


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# --------------------------------------------------------------------------------------
# Loading and validation.


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked against the annotation ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{key}: got {value!r}, expected {_describe(tp)}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is Literal:
        allowed = typing.get_args(tp)
        # bool is an int in Python: never let True stand for 1.
        if any(value == a and type(value) is type(a) for a in allowed):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _from_dict(tp, value, key)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a schema error, not a user error
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected {_describe(tp)}")


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"section '{prefix}'" if prefix else "the top level"
        raise ConfigError(
            f"unknown key(s) {', '.join(repr(f'{prefix}.{k}' if prefix else k) for k in unknown)} "
            f"in {where}; allowed keys: {', '.join(names)}"
        )
    missing = [n for n in names if n not in data]
    if missing:
        where = f"section '{prefix}'" if prefix else "the top level"
        raise ConfigError(
            f"missing key(s) {', '.join(repr(f'{prefix}.{k}' if prefix else k) for k in missing)} in {where}"
        )
    values = {n: _convert(data[n], hints[n], f"{prefix}.{n}" if prefix else n) for n in names}
    obj = cls(**values)
    _check_ranges(obj, prefix)
    return obj


def _check_ranges(obj: Any, prefix: str) -> None:
    """Value checks that a type cannot express."""

    def require(ok: bool, key: str, value: Any, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{prefix}.{key}: got {value!r}, expected {allowed}")

    positive_ints = {
        BuiltinDataConfig: ("num_train", "num_val", "size"),
        GeneratorConfig: ("ngf", "spade_hidden", "pix2pixhd_num_blocks"),
        DiscriminatorConfig: ("ndf", "num_discriminators", "num_layers", "num_res_blocks"),
        EncoderConfig: ("nef", "z_dim"),
        TrainConfig: ("batch_size", "gpus", "log_every", "sample_every", "checkpoint_every"),
        SegmenterConfig: ("width", "num_steps", "batch_size"),
        EvaluateConfig: ("batch_size", "during_training_images"),
    }.get(type(obj), ())
    for name in positive_ints:
        value = getattr(obj, name)
        require(value >= 1, name, value, "an integer >= 1")
    if isinstance(obj, DataConfig):
        for name in ("load_size", "crop_size"):
            value = getattr(obj, name)
            require(value is None or value >= 8, name, value, "null or an integer >= 8")
        require(obj.aspect_ratio is None or obj.aspect_ratio > 0, "aspect_ratio", obj.aspect_ratio, "null or > 0")
        require(obj.num_workers >= 0, "num_workers", obj.num_workers, "an integer >= 0")
        require(obj.max_image_pixels >= 1, "max_image_pixels", obj.max_image_pixels, "an integer >= 1")
    if isinstance(obj, CustomDataConfig):
        require(0.0 <= obj.val_fraction < 1.0, "val_fraction", obj.val_fraction, "a number in [0, 1)")
        require(obj.num_classes is None or obj.num_classes >= 1, "num_classes", obj.num_classes, "null or >= 1")
    if isinstance(obj, OptimConfig):
        require(obj.lr > 0, "lr", obj.lr, "a number > 0")
        for name in ("beta1", "beta2"):  # Adam's decay rates of its moment averages
            require(0.0 <= getattr(obj, name) < 1.0, name, getattr(obj, name), "a number in [0, 1)")
        require(obj.num_epochs_constant >= 0, "num_epochs_constant", obj.num_epochs_constant, ">= 0")
        require(obj.num_epochs_decay >= 0, "num_epochs_decay", obj.num_epochs_decay, ">= 0")
        require(obj.num_epochs_constant + obj.num_epochs_decay >= 1, "num_epochs_constant",
                obj.num_epochs_constant, "at least one epoch in total (with num_epochs_decay)")
    if isinstance(obj, TrainConfig):
        require(0.0 <= obj.ema_decay < 1.0, "ema_decay", obj.ema_decay, "a number in [0, 1)")
        require(obj.max_steps is None or obj.max_steps >= 1, "max_steps", obj.max_steps, "null or >= 1")
        require(obj.num_threads is None or obj.num_threads >= 1, "num_threads", obj.num_threads, "null or >= 1")
    if isinstance(obj, EvaluateConfig):
        require(obj.every_epochs >= 0, "every_epochs", obj.every_epochs, "an integer >= 0 (0: off)")
        require(obj.checkpoint_choice == "final" or obj.every_epochs > 0, "checkpoint_choice", obj.checkpoint_choice,
                "'final' while evaluate.every_epochs is 0 (the best generators are kept only when scored during "
                "training)")
    if isinstance(obj, GeneratorConfig):
        require(obj.pix2pixhd_num_downsample >= 0, "pix2pixhd_num_downsample", obj.pix2pixhd_num_downsample, ">= 0")
        require(obj.noise_channels >= 0, "noise_channels", obj.noise_channels, "an integer >= 0 (0: no 3D noise)")
        require(obj.noise_channels == 0 or obj.arch in ("spade", "oasis"), "noise_channels", obj.noise_channels,
                f"0 with generator.arch {obj.arch!r} (3D noise needs the spade or oasis generator)")
    if isinstance(obj, DiscriminatorConfig):
        require(obj.num_res_blocks <= 6, "num_res_blocks", obj.num_res_blocks, "an integer from 1 to 6")
    if isinstance(obj, LossConfig):
        require(obj.lambda_labelmix >= 0, "lambda_labelmix", obj.lambda_labelmix, "a number >= 0")
    if isinstance(obj, OptimConfig):
        for name in ("lr_g", "lr_d"):
            value = getattr(obj, name)
            require(value is None or value > 0, name, value, "null or a number > 0")
    if isinstance(obj, TrainConfig):
        require(obj.ema_statistics_batches >= 0, "ema_statistics_batches", obj.ema_statistics_batches,
                "an integer >= 0 (0: copy G's statistics)")


def _check_combinations(cfg: Config) -> None:
    """Settings of different sections that contradict each other; each error says what to set."""
    if cfg.encoder.use_vae and cfg.generator.arch == "oasis":
        raise ConfigError("encoder.use_vae: true needs generator.arch 'spade' or 'clade'; the oasis generator takes "
                          "3D noise instead of a style code (set encoder.use_vae=false)")
    if cfg.encoder.use_vae and cfg.generator.noise_channels:
        raise ConfigError(f"generator.noise_channels: got {cfg.generator.noise_channels} with encoder.use_vae: true; "
                          f"a generator takes either the VAE's z or 3D noise (set one of them to 0 / false)")
    if cfg.discriminator.arch == "oasis" and cfg.loss.use_feat_loss:
        raise ConfigError("loss.use_feat_loss: true needs discriminator.arch 'multiscale' (feature matching compares "
                          "PatchGAN features; the oasis discriminator is trained with its N+1 loss alone); set "
                          "loss.use_feat_loss=false")
    if cfg.discriminator.arch == "multiscale" and cfg.loss.use_labelmix:
        raise ConfigError("loss.use_labelmix: true needs discriminator.arch 'oasis' (LabelMix regularises a "
                          "per-pixel discriminator); set loss.use_labelmix=false")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a validated :class:`Config` from a plain mapping (e.g. parsed params.yaml)."""
    if not isinstance(data, dict):
        raise ConfigError(f"the configuration must be a mapping of sections, got {type(data).__name__}")
    cfg = _from_dict(Config, data, "")
    _check_combinations(cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The plain nested mapping of a config (the inverse of :func:`config_from_dict`)."""
    return dataclasses.asdict(cfg)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow params, diffs between configs)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with some keys of some sections changed (tests, presets)."""
    data = config_to_dict(cfg)
    for section, values in sections.items():
        if section not in data:
            raise ConfigError(f"unknown section {section!r}; allowed: {', '.join(data)}")
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(data[section].get(key), dict):
                data[section][key].update(value)
            else:
                data[section][key] = value
    return config_from_dict(data)
