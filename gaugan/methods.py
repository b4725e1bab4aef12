"""The name of the method a configuration trains: SPADE, OASIS, or a pairing of their parts.

One protocol scores every method (docs/OASIS.md section 5); this name is what the report's
comparison table, MLflow's ``method`` parameter and ``reports/compare_methods.json`` show, so
that runs can be grouped and filtered by it. It is derived from the settings, never set.
"""

from __future__ import annotations

from gaugan.config import Config

GENERATOR_NAMES = {"spade": "SPADE", "clade": "CLADE", "pix2pixhd": "pix2pixHD", "oasis": "OASIS"}
DISCRIMINATOR_NAMES = {"multiscale": "PatchGAN", "oasis": "OASIS"}
# The discriminator each generator was published with: the pair is named by the generator alone.
PUBLISHED_PAIRS = {"spade": "multiscale", "clade": "multiscale", "pix2pixhd": "multiscale", "oasis": "oasis"}


def method_name(cfg: Config) -> str:
    """``"SPADE"``, ``"OASIS"``, ``"SPADE G + OASIS D"``, ``"OASIS (no LabelMix)"``, ...

    The generator and discriminator families, then the OASIS ablations in parentheses: no
    LabelMix, no 3D noise (OASIS generator), 3D noise (another generator), VGG (with the OASIS
    discriminator, which the paper trains without it).
    """
    g, d = cfg.generator.arch, cfg.discriminator.arch
    name = GENERATOR_NAMES[g] if PUBLISHED_PAIRS[g] == d else f"{GENERATOR_NAMES[g]} G + {DISCRIMINATOR_NAMES[d]} D"
    notes = []
    if d == "oasis" and not cfg.loss.use_labelmix:
        notes.append("no LabelMix")
    if g == "oasis" and not cfg.generator.noise_channels:
        notes.append("no 3D noise")
    if g != "oasis" and cfg.generator.noise_channels:
        notes.append("3D noise")
    if d == "oasis" and cfg.loss.use_vgg_loss:
        notes.append("VGG")
    return f"{name} ({', '.join(notes)})" if notes else name
