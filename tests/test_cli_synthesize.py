"""``gaugan synthesize`` and ``gaugan params`` end to end, in-process, on tiny checkpoints made here."""

from __future__ import annotations

import dataclasses
import errno
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from gaugan.data.registry import published_spec
from gaugan.data.semantic import semantic_input
from gaugan.models import build_generator, published_parameter_counts
from pipeline.cli import app
from tests.support import dontcare_spec, tiny_config, write_checkpoint

SPEC = published_spec("landscapes")  # 10 classes + instance edges = 11 channels, 64x64
runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_checkpoint(root / "generator.pt", SPEC)
    write_checkpoint(root / "vae.pt", SPEC, use_vae=True)
    # An official-style file: a plain state dict (here at a tiny width; the structure is read from the file).
    official = tmp_path_factory.mktemp("official") / "latest_net_G.pth"
    torch.save(torch.load(root / "generator.pt", weights_only=True)["models"]["G"], official)
    wrong = tmp_path_factory.mktemp("wrong") / "latest_net_G.pth"
    torch.manual_seed(1)
    torch.save(build_generator(tiny_config().generator, 9, (64, 64)).state_dict(), wrong)
    rng = np.random.default_rng(0)
    label = np.zeros((48, 40), dtype=np.uint8)  # another size than the model's 64x64: resized (nearest)
    label[:, 20:] = 7
    label[30:, :] = 3
    Image.fromarray(label).save(root / "label.png")
    instance = (label > 0).astype(np.uint8) + (np.arange(40)[None, :] > 30).astype(np.uint8)
    Image.fromarray(instance).save(root / "instance.png")
    Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(root / "style.png")
    bad_label = label.copy()
    bad_label[0, 0] = 12  # landscapes has classes 0..9
    Image.fromarray(bad_label).save(root / "bad_label.png")
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(root / "small_instance.png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    return {"root": root, "ours": root / "generator.pt", "vae": root / "vae.pt", "official": official,
            "wrong": wrong, "label": root / "label.png", "instance": root / "instance.png",
            "style": root / "style.png", "bad_label": root / "bad_label.png",
            "small_instance": root / "small_instance.png", "broken": root / "broken.png"}


def synthesize(files, output, *extra: str, checkpoint=None, dataset: str = "landscapes", label=None,
               instance="default"):
    args = ["synthesize", "--checkpoint", str(checkpoint or files["ours"]), "--dataset", dataset,
            "--label", str(label or files["label"]), "--output", str(output), "--device", "cpu"]
    if instance == "default":
        instance = files["instance"]
    if instance is not None:
        args += ["--instance", str(instance)]
    return runner.invoke(app, args + list(extra))


def expected_image(files, checkpoint) -> np.ndarray:
    """The same image computed step by step: PIL nearest resize, one-hot + edges, G in eval mode."""
    payload = torch.load(checkpoint, weights_only=True)
    G = build_generator(tiny_config().generator, SPEC.label_channels, SPEC.image_size)
    G.load_state_dict(payload["models"]["G"])
    G.eval()
    label = np.asarray(Image.open(files["label"]).resize((64, 64), Image.Resampling.NEAREST), dtype=np.int64)
    instance = np.asarray(Image.open(files["instance"]).resize((64, 64), Image.Resampling.NEAREST), dtype=np.int64)
    seg = semantic_input(torch.from_numpy(label)[None], 10, torch.from_numpy(instance)[None])
    with torch.no_grad():
        fake = G(seg)[0]
    return ((fake.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_synthesize_our_checkpoint(files, tmp_path):
    output = tmp_path / "out" / "fake.png"
    result = synthesize(files, output)
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(output))
    assert image.shape == (64, 64, 3)
    np.testing.assert_array_equal(image, expected_image(files, files["ours"]))
    assert [p.name for p in output.parent.iterdir()] == ["fake.png"]  # no temporary file left


def test_synthesize_official_style_checkpoint(files, tmp_path):
    output = tmp_path / "official.png"
    result = synthesize(files, output, checkpoint=files["official"])
    assert result.exit_code == 0, result.output
    # Official files hold one set of weights: here our G.
    np.testing.assert_array_equal(np.asarray(Image.open(output)), expected_image(files, files["ours"]))


def test_synthesize_vae_prior_and_style(files, tmp_path):
    outputs = {}
    for name, extra in {"seed0": ["--seed", "0"], "seed0_again": ["--seed", "0"], "seed1": ["--seed", "1"],
                        "style": ["--style", str(files["style"])]}.items():
        outputs[name] = tmp_path / f"{name}.png"
        result = synthesize(files, outputs[name], *extra, checkpoint=files["vae"])
        assert result.exit_code == 0, result.output
    pixels = {name: np.asarray(Image.open(path)) for name, path in outputs.items()}
    assert np.array_equal(pixels["seed0"], pixels["seed0_again"])
    assert not np.array_equal(pixels["seed0"], pixels["seed1"])
    assert not np.array_equal(pixels["seed0"], pixels["style"])


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("out_of_range", ["bad_label.png", "12", "outside the valid range 0..9", "--dataset"]),
        ("size_mismatch", ["small_instance.png", "20x20", "40x48", "same size"]),
        ("unreadable_label", ["broken.png", "unreadable image"]),
        ("missing_label", ["nothing.png", "file not found"]),
        ("wrong_channels", ["latest_net_G.pth", "trained on 9 label channels", "'landscapes' gives 11", "--dataset"]),
        ("style_without_vae", ["generator.pt", "--style needs a VAE generator"]),
        ("instance_missing", ["label.png", "uses instance edges", "--instance"]),
        ("other_dataset", ["generator.pt", "trained on dataset 'landscapes'", "--dataset is 'facades'"]),
        ("unknown_dataset", ["--dataset", "'mnist'", "ade20k"]),
        ("missing_checkpoint", ["nope.pt", "checkpoint file not found"]),
        ("official_custom", ["latest_net_G.pth", "name the dataset"]),
    ],
)
def test_synthesize_errors_are_clear(files, tmp_path, case, fragments):
    output = tmp_path / "fake.png"
    kwargs = {
        "out_of_range": {"label": files["bad_label"]},
        "size_mismatch": {"instance": files["small_instance"]},
        "unreadable_label": {"label": files["broken"]},
        "missing_label": {"label": tmp_path / "nothing.png"},
        "wrong_channels": {"checkpoint": files["wrong"]},
        "instance_missing": {"instance": None},
        "other_dataset": {"dataset": "facades", "instance": None},
        "unknown_dataset": {"dataset": "mnist"},
        "missing_checkpoint": {"checkpoint": tmp_path / "nope.pt"},
        "official_custom": {"checkpoint": files["official"], "dataset": "custom"},
    }.get(case, {})
    extra = ["--style", str(files["style"])] if case == "style_without_vae" else []
    result = synthesize(files, output, *extra, **kwargs)
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert "Traceback" not in result.output
    assert not output.exists()


def test_the_dontcare_value_and_its_stored_index_both_mean_dont_care(tmp_path):
    """A map saved by the studio holds the don't-care index (5 here), a dataset's file the raw value 255:
    the same image from both; one beyond them is an error naming the accepted values."""
    checkpoint = write_checkpoint(tmp_path / "custom.pt", dontcare_spec(32))
    raw = np.full((32, 32), 1, np.uint8)
    raw[16:, :] = 3
    raw[4:12, 20:30] = 255
    maps = {"raw": raw, "index": np.where(raw == 255, 5, raw).astype(np.uint8), "beyond": np.where(raw == 255, 6, raw)}
    results = {}
    for name, labels in maps.items():
        Image.fromarray(labels.astype(np.uint8)).save(tmp_path / f"{name}.png")
        results[name] = runner.invoke(app, [
            "synthesize", "--checkpoint", str(checkpoint), "--dataset", "custom", "--device", "cpu",
            "--label", str(tmp_path / f"{name}.png"), "--instance", str(tmp_path / "raw.png"),
            "--output", str(tmp_path / f"{name}_photo.png")])
    assert results["raw"].exit_code == 0, results["raw"].output
    assert results["index"].exit_code == 0, results["index"].output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "raw_photo.png")),
                          np.asarray(Image.open(tmp_path / "index_photo.png")))
    assert results["beyond"].exit_code == 2
    assert "label value(s) 6 outside the valid range 0..4, the don't-care value 255 or its index 5" in (
        results["beyond"].stderr)


def test_params_json_and_table():
    result = runner.invoke(app, ["params", "--dataset", "ade20k", "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)
    assert counts == published_parameter_counts(published_spec("ade20k"))
    assert round(counts["G"] / 1e6, 1) == 96.5 and round(counts["D"] / 1e6, 1) == 5.8
    assert round(counts["E"] / 1e6, 1) == 10.5
    table = runner.invoke(app, ["params", "--dataset", "coco"])
    assert table.exit_code == 0 and "184 label channels" in table.stdout and "(97.48 M)" in table.stdout
    unknown = runner.invoke(app, ["params", "--dataset", "custom"])
    assert unknown.exit_code == 2 and "no published configuration" in unknown.stderr


@pytest.mark.parametrize(("suffix", "image_format"), [(".png", "PNG"), (".jpg", "JPEG"), (".JPEG", "JPEG"),
                                                      (".webp", "WEBP")])
def test_the_output_suffix_decides_the_format(files, tmp_path, suffix, image_format):
    output = tmp_path / f"fake{suffix}"
    result = synthesize(files, output)
    assert result.exit_code == 0, result.output
    assert Image.open(output).format == image_format and Image.open(output).size == (64, 64)


def test_an_unknown_output_suffix_is_refused(files, tmp_path):
    result = synthesize(files, tmp_path / "fake.gif")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--output" in result.stderr and "'.gif'" in result.stderr and ".png, .jpg, .jpeg, .webp" in result.stderr
    assert list(tmp_path.iterdir()) == []


def _no_temporary_files(folder) -> bool:
    return not [path for path in folder.rglob("*") if ".tmp" in path.name]


def test_output_errors_name_the_destination_and_leave_nothing_behind(files, tmp_path, monkeypatch):
    existing_folder = tmp_path / "out"
    existing_folder.mkdir()
    result = synthesize(files, existing_folder)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"--output {existing_folder}: is a folder; name the image file")
    assert ".tmp" not in result.stderr and _no_temporary_files(tmp_path)

    def disk_full(self, fp, format=None, **params):  # half a file written, then the disk is full
        with open(fp, "wb") as handle:
            handle.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))

    monkeypatch.setattr(Image.Image, "save", disk_full)
    output = tmp_path / "full" / "fake.png"
    result = synthesize(files, output)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"{output}: cannot write the output (No space left on device)"
    assert not output.exists() and _no_temporary_files(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_named(files, tmp_path):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = synthesize(files, folder / "fake.png")
    finally:
        folder.chmod(0o755)
    assert result.exit_code == 2 and result.stderr.startswith(f"{folder / 'fake.png'}: cannot write the output")
    assert ".tmp" not in result.stderr and _no_temporary_files(tmp_path)


def test_synthesize_redraws_a_regions_noise_as_the_studio_does(tmp_path):
    """OASIS: --seed draws the 3D noise, --region CLASS=SEED re-draws one class's (the studio's 'Regions')."""
    from gaugan.data.registry import published_spec as spec_of
    from gaugan.synthesize import load_generator_for, synthesize_image

    spec = dataclasses.replace(spec_of("landscapes"), load_size=32, crop_size=32)
    checkpoint = write_checkpoint(tmp_path / "oasis.pt", spec, noise=True)
    labels = np.zeros((32, 32), np.uint8)
    labels[16:] = 6
    Image.fromarray(labels).save(tmp_path / "label.png")
    Image.fromarray(labels).save(tmp_path / "instance.png")

    def run(*extra: str) -> np.ndarray:
        output = tmp_path / f"out{len(extra)}.png"
        result = runner.invoke(app, ["synthesize", "--checkpoint", str(checkpoint), "--dataset", "landscapes",
                                     "--label", str(tmp_path / "label.png"), "--instance",
                                     str(tmp_path / "instance.png"), "--output", str(output), "--seed", "3",
                                     "--device", "cpu", *extra])
        assert result.exit_code == 0, result.output
        return np.asarray(Image.open(output))

    plain, rerolled = run(), run("--region", "6=11")
    assert not np.array_equal(plain, rerolled)
    loaded = load_generator_for(checkpoint, None, torch.device("cpu"))
    expected = synthesize_image(loaded, labels.astype(np.int64), labels.astype(np.int64), 3, class_seeds={6: 11})
    np.testing.assert_array_equal(rerolled, np.asarray(expected))
    for bad, fragment in (("6:11", "expected CLASS=SEED"), ("12=1", "outside the model's classes 0..9")):
        result = runner.invoke(app, ["synthesize", "--checkpoint", str(checkpoint), "--dataset", "landscapes",
                                     "--label", str(tmp_path / "label.png"), "--instance", str(tmp_path / "instance.png"),
                                     "--output", str(tmp_path / "bad.png"), "--region", bad, "--device", "cpu"])
        assert result.exit_code == 2 and fragment in result.output, result.output
