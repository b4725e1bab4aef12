"""The built-in "landscapes" dataset: procedurally generated label maps and photos.

Semantic image synthesis (paper section 3) needs pairs of label maps and photos; the
paper's datasets need downloads of tens of gigabytes (docs/SPADE.md section 3). This
module generates a small dataset in the spirit of the GauGAN demo in seconds, with no
download, so that the whole pipeline runs on a laptop CPU:

- label maps layered like real scenes: sky on top, clouds (separate instances), mountain
  ranges with snow caps, a horizon, sea or lake with a sandy shore, grass, and trees,
  rocks and bushes scattered in perspective (far ones small and high, near ones large and
  low), each object its own instance;
- photos rendered from them with a distinct procedural texture per class (streaked water,
  grass blades, blotchy foliage, ridged rock, ...) and a global per-image style (time of
  day, season, colour jitter), so a style encoder (the paper's VAE, section 3.3) has
  something to learn that the label map does not determine.

Every image depends only on ``(seed, split, index)``: the dataset is identical whatever
the number of images generated or the order they are generated in. The files are written
in the custom layout (``{train,val}/{images,labels,instances}/*.png``) so that the
built-in dataset goes through exactly the same reader and validation as a user's folder.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gaugan.data.io import OutputMarker, check_replaceable, replace_dir, require_writable
from gaugan.data.registry import LANDSCAPE_CLASSES

SKY, CLOUD, MOUNTAIN, SNOW, WATER, SAND, GRASS, TREE, ROCK, BUSH = range(10)
assert LANDSCAPE_CLASSES[:10] == ("sky", "cloud", "mountain", "snow", "water", "sand", "grass", "tree", "rock", "bush")

SPLIT_CODES = {"train": 0, "val": 1}

# Global styles: colours of the sky (top, horizon), the light that falls on everything
# below it, the cloud colour and whether a low sun glows near the horizon.
_STYLES = {
    "day": dict(top=(0.22, 0.46, 0.88), horizon=(0.68, 0.82, 0.96), light=(1.0, 1.0, 1.0),
                cloud=(0.97, 0.97, 0.99), sun=None),
    "golden": dict(top=(0.32, 0.50, 0.82), horizon=(0.97, 0.84, 0.58), light=(1.05, 0.93, 0.74),
                   cloud=(1.0, 0.90, 0.76), sun=(1.0, 0.85, 0.55)),
    "sunset": dict(top=(0.28, 0.22, 0.52), horizon=(0.98, 0.52, 0.28), light=(0.92, 0.66, 0.52),
                   cloud=(0.96, 0.58, 0.52), sun=(1.0, 0.62, 0.30)),
    "dusk": dict(top=(0.05, 0.07, 0.20), horizon=(0.32, 0.30, 0.50), light=(0.42, 0.44, 0.62),
                 cloud=(0.42, 0.42, 0.56), sun=None),
    "overcast": dict(top=(0.58, 0.61, 0.66), horizon=(0.80, 0.82, 0.84), light=(0.78, 0.80, 0.84),
                     cloud=(0.74, 0.75, 0.78), sun=None),
}
_STYLE_NAMES = tuple(_STYLES)
_STYLE_WEIGHTS = np.array([0.36, 0.18, 0.18, 0.12, 0.16])

# Seasons change the vegetation: (grass, tree, bush) base colours.
_SEASONS = {
    "summer": ((0.28, 0.52, 0.18), (0.10, 0.32, 0.11), (0.20, 0.40, 0.14)),
    "spring": ((0.45, 0.70, 0.25), (0.22, 0.48, 0.16), (0.35, 0.58, 0.20)),
    "autumn": ((0.58, 0.55, 0.26), (0.72, 0.34, 0.08), (0.55, 0.30, 0.10)),
}
_SEASON_NAMES = tuple(_SEASONS)
_SEASON_WEIGHTS = np.array([0.5, 0.25, 0.25])


@dataclass(frozen=True)
class Landscape:
    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) uint8 class indices, LANDSCAPE_CLASSES order
    instance: np.ndarray  # (H, W) int32; each stuff region and each object its own id
    style: str
    season: str


# --------------------------------------------------------------------------------------
# Noise: value noise by separable interpolation of a random grid. Plain element-wise
# numpy (no BLAS): multi-threaded BLAS slows to a crawl on a loaded 2-core machine.


@functools.lru_cache(maxsize=64)
def _interpolation(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``size`` pixels: the left grid index and the (smoothstepped) weight of the right one."""
    position = (np.arange(size) + 0.5) / size * cells
    left = np.clip(np.floor(position).astype(int), 0, cells - 1)
    frac = position - left
    return left, frac * frac * (3 - 2 * frac)  # smoothstep: no visible grid lines


def _noise(rng: np.random.Generator, height: int, width: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Smooth noise in [-1, 1] with about cells_y x cells_x features."""
    cells_y, cells_x = max(1, min(cells_y, height)), max(1, min(cells_x, width))
    grid = rng.uniform(-1, 1, (cells_y + 1, cells_x + 1))
    top, weight_y = _interpolation(height, cells_y)
    rows = grid[top] * (1 - weight_y)[:, None] + grid[top + 1] * weight_y[:, None]  # (height, cells_x + 1)
    left, weight_x = _interpolation(width, cells_x)
    return rows[:, left] * (1 - weight_x) + rows[:, left + 1] * weight_x


def _noise_1d(rng: np.random.Generator, length: int, cells: int) -> np.ndarray:
    cells = max(1, min(cells, length))
    values = rng.uniform(-1, 1, cells + 1)
    left, weight = _interpolation(length, cells)
    return values[left] * (1 - weight) + values[left + 1] * weight


def _fractal_1d(rng: np.random.Generator, length: int, base_cells: int, octaves: int = 3) -> np.ndarray:
    total = np.zeros(length)
    for octave in range(octaves):
        total += _noise_1d(rng, length, base_cells * 2**octave) * 0.5**octave
    return total / (2 - 0.5 ** (octaves - 1))


@functools.lru_cache(maxsize=16)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    return yy, xx


# --------------------------------------------------------------------------------------
# Layout: the label and instance maps.


class _Canvas:
    """Label and instance maps plus a painter of shapes in bounding-box windows."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.label = np.full((height, width), SKY, dtype=np.uint8)
        self.instance = np.ones((height, width), dtype=np.int32)
        self.trunk = np.zeros((height, width), dtype=bool)  # rendering only: tree trunks are darker
        self.next_id = 2

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def paint(self, mask: np.ndarray, cls: int, instance_id: int, top: int = 0, left: int = 0,
              only_on: tuple[int, ...] | None = None) -> None:
        h, w = mask.shape
        labels = self.label[top:top + h, left:left + w]
        if only_on is not None:
            mask = mask & np.isin(labels, only_on)
        labels[mask] = cls
        self.instance[top:top + h, left:left + w][mask] = instance_id

    def window(self, top: float, bottom: float, left: float, right: float):
        """Integer window clipped to the canvas and local pixel-centre coordinates, or None."""
        t, b = max(0, int(np.floor(top))), min(self.height, int(np.ceil(bottom)) + 1)
        l, r = max(0, int(np.floor(left))), min(self.width, int(np.ceil(right)) + 1)
        if t >= b or l >= r:
            return None
        yy, xx = _grid(self.height, self.width)
        return t, l, yy[t:b, l:r] + 0.5, xx[t:b, l:r] + 0.5


def _ellipse(canvas: _Canvas, cy: float, cx: float, ry: float, rx: float):
    win = canvas.window(cy - ry, cy + ry, cx - rx, cx + rx)
    if win is None:
        return None
    t, l, y, x = win
    return t, l, ((y - cy) / max(ry, 0.5)) ** 2 + ((x - cx) / max(rx, 0.5)) ** 2 <= 1.0


def _layout_sky_and_mountains(rng: np.random.Generator, canvas: _Canvas, horizon: float) -> None:
    height, width = canvas.height, canvas.width
    yy, xx = _grid(height, width)
    # Clouds first: mountains painted later hide them, as in a real scene.
    for _ in range(rng.choice([0, 1, 2, 3, 4, 5], p=[0.15, 0.2, 0.25, 0.2, 0.12, 0.08])):
        cloud_id = canvas.new_id()
        cy = rng.uniform(0.04, 0.75) * horizon
        cx = rng.uniform(-0.1, 1.1) * width
        size = rng.uniform(0.07, 0.2) * width
        for _ in range(rng.integers(3, 7)):
            oy, ox = rng.normal(0, 0.12) * size, rng.normal(0, 0.6) * size
            r = size * rng.uniform(0.35, 0.7)
            found = _ellipse(canvas, cy + oy, cx + ox, r * rng.uniform(0.35, 0.55), r)
            if found:
                t, l, mask = found
                canvas.paint(mask, CLOUD, cloud_id, t, l, only_on=(SKY, CLOUD))
    if rng.random() < 0.22:
        return
    num_ranges = rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2])
    for index in range(num_ranges):  # far to near: near ranges are lower and overlap the far ones
        peak_height = horizon * rng.uniform(0.35, 0.8) * (1 - 0.22 * index)
        profile = np.zeros(width)
        for _ in range(rng.integers(1, 4)):
            centre = rng.uniform(-0.1, 1.1) * width
            half_width = rng.uniform(0.25, 0.7) * width
            profile = np.maximum(profile, rng.uniform(0.55, 1.0) * (1 - np.abs(np.arange(width) + 0.5 - centre) / half_width))
        profile = np.clip(profile + 0.12 * _fractal_1d(rng, width, max(2, width // 16), 3), 0.02, 1.0)
        ridge = horizon - peak_height * profile
        mask = (yy >= ridge[None, :]) & (yy < horizon + 1)
        canvas.paint(mask, MOUNTAIN, canvas.new_id())
        if peak_height > 0.3 * horizon and rng.random() < 0.8:
            snow_line = horizon - peak_height * rng.uniform(0.45, 0.75) + 0.06 * peak_height * _fractal_1d(
                rng, width, max(2, width // 8), 2)
            snow = mask & (yy < snow_line[None, :])
            if snow.any():
                canvas.paint(snow, SNOW, canvas.new_id())


def _layout_ground(rng: np.random.Generator, canvas: _Canvas, horizon: float) -> None:
    height, width = canvas.height, canvas.width
    yy, xx = _grid(height, width)
    ground_height = height - horizon
    ground = yy >= horizon
    canvas.paint(ground, GRASS, canvas.new_id())
    mode = rng.choice(["sea", "lake", "plain"], p=[0.35, 0.35, 0.3])
    if mode == "sea":
        shore = horizon + ground_height * rng.uniform(0.12, 0.55) + 0.08 * ground_height * _fractal_1d(
            rng, width, 3, 3)
        shore += np.linspace(0, 1, width) * ground_height * rng.normal(0, 0.15)  # a slanted coast
        canvas.paint(ground & (yy < shore[None, :]), WATER, canvas.new_id())
        beach = rng.uniform(0.08, 0.3) * ground_height * (1 + 0.4 * _fractal_1d(rng, width, 4, 2))
        if rng.random() < 0.2:
            beach = beach + height  # a beach down to the bottom of the picture
        canvas.paint(ground & (yy >= shore[None, :]) & (yy < (shore + beach)[None, :]), SAND, canvas.new_id())
    elif mode == "lake":
        cy = horizon + ground_height * rng.uniform(0.3, 0.65)
        ry = min(cy - horizon - 1, ground_height * rng.uniform(0.12, 0.3))
        rx = width * rng.uniform(0.25, 0.5)
        cx = width * rng.uniform(0.2, 0.8)
        angle = np.arctan2((yy - cy) / max(ry, 1), (xx - cx) / rx)
        wobble = 1 + 0.15 * np.sin(angle * rng.integers(2, 5) + rng.uniform(0, 6.3)) + 0.08 * np.sin(
            angle * 7 + rng.uniform(0, 6.3))
        distance = np.sqrt(((yy - cy) / max(ry, 1)) ** 2 + ((xx - cx) / rx) ** 2) / wobble
        rim = rng.uniform(1.12, 1.35)
        canvas.paint(ground & (distance < rim), SAND, canvas.new_id())
        canvas.paint(ground & (distance < 1), WATER, canvas.new_id())
    elif rng.random() < 0.45:  # a sandy path or patch across the plain
        cy = horizon + ground_height * rng.uniform(0.4, 0.9)
        found = _ellipse(canvas, cy, width * rng.uniform(0.1, 0.9), ground_height * rng.uniform(0.05, 0.15),
                         width * rng.uniform(0.15, 0.4))
        if found:
            t, l, mask = found
            canvas.paint(mask, SAND, canvas.new_id(), t, l, only_on=(GRASS,))


def _layout_objects(rng: np.random.Generator, canvas: _Canvas, horizon: float) -> None:
    height, width = canvas.height, canvas.width
    ground_height = height - horizon
    density = rng.choice([0.3, 1.0, 2.5], p=[0.35, 0.45, 0.2])  # open land, some trees, woods
    requests = (
        [(TREE, (GRASS,))] * rng.poisson(6 * density)
        + [(BUSH, (GRASS,))] * rng.poisson(4 * density)
        + [(ROCK, (GRASS, SAND, WATER))] * rng.poisson(3.5)
    )
    placed = []
    for cls, allowed in requests:
        for _ in range(6):  # a few tries to land on allowed ground
            depth = rng.uniform(0.02, 1.0) ** 0.8  # 0 at the horizon, 1 at the bottom edge
            base_y = horizon + 1 + depth * (ground_height + 0.15 * height)
            x = rng.uniform(0, width)
            probe_y = min(int(base_y), height - 1)
            if canvas.label[probe_y, min(int(x), width - 1)] in allowed:
                in_open_water = (cls == ROCK and canvas.label[probe_y, min(int(x), width - 1)] == WATER
                                 and not (np.asarray(canvas.label[max(0, probe_y - 3):probe_y + 4, :]) != WATER).any())
                if in_open_water:
                    continue  # rocks in water only near a shore
                placed.append((base_y, x, 0.12 + 0.88 * depth, cls))
                break
    placed.sort(key=lambda item: item[0])  # far (high) objects first, near ones cover them
    for base_y, x, scale, cls in placed:
        instance_id = canvas.new_id()
        if cls == TREE:
            tree_height = scale * rng.uniform(0.22, 0.42) * height
            if rng.random() < 0.5:  # conifer: a triangle
                win = canvas.window(base_y - tree_height, base_y, x - 0.25 * tree_height, x + 0.25 * tree_height)
                if win is None:
                    continue
                t, l, y, xs = win
                half = 0.2 * tree_height * (y - (base_y - tree_height)) / tree_height + 0.3
                jag = 1 + 0.15 * np.sin((y - base_y) / max(tree_height, 1) * 25)
                mask = (np.abs(xs - x) <= half * jag) & (y <= base_y)
                canvas.paint(mask, TREE, instance_id, t, l)
                trunk_mask = (np.abs(xs - x) <= max(0.5, 0.03 * tree_height)) & (y > base_y - 0.12 * tree_height) & (y <= base_y)
                canvas.trunk[t:t + mask.shape[0], l:l + mask.shape[1]] |= trunk_mask
            else:  # broadleaf: a blobby crown on a trunk
                crown_ry = 0.36 * tree_height
                crown_cy = base_y - tree_height + crown_ry
                trunk_width = max(0.6, 0.05 * tree_height)
                win = canvas.window(crown_cy, base_y, x - trunk_width, x + trunk_width)
                if win is not None:
                    t, l, y, xs = win
                    mask = np.abs(xs - x) <= trunk_width
                    canvas.paint(mask, TREE, instance_id, t, l)
                    canvas.trunk[t:t + mask.shape[0], l:l + mask.shape[1]] |= mask
                for _ in range(rng.integers(2, 5)):
                    found = _ellipse(canvas, crown_cy + rng.normal(0, 0.15) * crown_ry, x + rng.normal(0, 0.25) * crown_ry,
                                     crown_ry * rng.uniform(0.6, 0.9), crown_ry * rng.uniform(0.6, 1.0))
                    if found:
                        t, l, mask = found
                        canvas.paint(mask, TREE, instance_id, t, l)
                        canvas.trunk[t:t + mask.shape[0], l:l + mask.shape[1]] &= ~mask
        elif cls == BUSH:
            size = scale * rng.uniform(0.05, 0.11) * width
            for _ in range(rng.integers(2, 4)):
                found = _ellipse(canvas, base_y - 0.5 * size + rng.normal(0, 0.1) * size, x + rng.normal(0, 0.5) * size,
                                 size * rng.uniform(0.45, 0.65), size * rng.uniform(0.6, 0.9))
                if found:
                    t, l, mask = found
                    canvas.paint(mask, BUSH, instance_id, t, l)
        else:  # rock: the upper half of a lumpy ellipse standing on the ground
            rx = scale * rng.uniform(0.06, 0.16) * width
            ry = rx * rng.uniform(0.5, 0.9)
            win = canvas.window(base_y - ry, base_y, x - rx, x + rx)
            if win is None:
                continue
            t, l, y, xs = win
            angle = np.arctan2(base_y - y, xs - x)
            lump = 1 + 0.12 * np.sin(angle * rng.integers(3, 6) + rng.uniform(0, 6.3))
            mask = (((y - base_y) / ry) ** 2 + ((xs - x) / rx) ** 2 <= lump**2) & (y <= base_y)
            canvas.paint(mask, ROCK, instance_id, t, l)


# --------------------------------------------------------------------------------------
# Rendering: colour and texture per class under a global style.


def _render(rng: np.random.Generator, canvas: _Canvas, horizon: float, style_name: str, season_name: str) -> np.ndarray:
    """The photo: per pixel, ``colour[class] * shade + sky_gradient * sky_mix`` plus light and haze.

    ``shade`` carries each class's texture, ``sky_mix`` how much of the sky's colour the
    class picks up (all of it for the sky, reflections for water, haze for mountains).
    Composing scalar fields per class keeps rendering to a few dozen array operations.
    """
    height, width = canvas.height, canvas.width
    yy, xx = _grid(height, width)
    label = canvas.label
    style = _STYLES[style_name]

    def jitter(colour, amount=0.04, hue=True):
        """Random colour shift; ``hue=False`` keeps it mostly in brightness (greys stay grey)."""
        shift = rng.normal(0, amount, 3) if hue else rng.normal(0, amount) + rng.normal(0, amount / 4, 3)
        return np.clip(np.asarray(colour) + shift, 0, 1.1)

    top, horizon_colour, light = jitter(style["top"]), jitter(style["horizon"]), jitter(style["light"], 0.03)
    grass_colour, tree_colour, bush_colour = (jitter(c, 0.05) for c in _SEASONS[season_name])

    scale = width / 64  # texture frequencies follow the image size
    coarse = _noise(rng, height, width, 3, 3)
    medium = _noise(rng, height, width, int(8 * scale), int(8 * scale))
    fine = _noise(rng, height, width, int(24 * scale), int(24 * scale))
    streak_x = _noise(rng, height, width, int(32 * scale), 3)  # horizontal streaks: ripples on water
    streak_y = _noise(rng, height, width, int(12 * scale), int(48 * scale))  # vertical streaks: grass blades
    grain = rng.uniform(-1, 1, (height, width))
    ridged = 1 - np.abs(0.6 * medium + 0.4 * fine)  # creases like eroded rock
    depth = np.clip((yy - horizon) / max(height - horizon, 1), 0, 1)  # 0 at the horizon, 1 at the bottom

    colour = np.zeros((10, 3))
    colour[CLOUD] = jitter(style["cloud"], 0.03, hue=False)
    colour[MOUNTAIN] = 0.72 * jitter((0.45, 0.41, 0.38), 0.05, hue=False)
    colour[SNOW] = jitter((0.94, 0.95, 1.0), 0.02, hue=False)
    colour[WATER] = jitter((0.10, 0.30, 0.50), 0.04)
    colour[SAND] = jitter((0.86, 0.76, 0.54), 0.04, hue=False)
    colour[GRASS], colour[TREE], colour[BUSH] = grass_colour, tree_colour, bush_colour
    colour[ROCK] = jitter((0.50, 0.49, 0.47), 0.06, hue=False)
    sky_mix_of_class = np.zeros(10)
    sky_mix_of_class[[SKY, CLOUD, MOUNTAIN]] = 1.0, 0.12, 0.28

    textures = {
        CLOUD: 0.84 + 0.1 * medium + 0.04 * fine,
        MOUNTAIN: 0.72 + 0.28 * ridged + 0.1 * coarse + 0.05 * grain,
        SNOW: 0.9 + 0.06 * medium + 0.05 * fine,
        WATER: (0.55 + 0.45 * depth) * (0.9 + 0.12 * streak_x),
        SAND: 0.9 + 0.05 * medium + 0.07 * grain,
        GRASS: 0.85 + 0.13 * streak_y + 0.08 * coarse + 0.05 * grain,
        TREE: 0.65 + 0.5 * np.abs(fine) ** 0.7 + 0.12 * medium,
        ROCK: 0.7 + 0.2 * ridged + 0.12 * grain,
        BUSH: 0.75 + 0.3 * np.abs(grain) * (fine > -0.2),
    }
    present = np.bincount(label.ravel(), minlength=10) > 0
    shade = np.ones((height, width))
    for cls, texture in textures.items():
        if present[cls]:
            np.copyto(shade, texture, where=label == cls)
    sky_mix = sky_mix_of_class[label]
    if present[WATER]:
        np.copyto(sky_mix, 0.5 * (1 - depth) * (0.9 + 0.12 * streak_x), where=label == WATER)

    # The sky: a vertical gradient from the top colour to the horizon colour (the horizon
    # colour everywhere below the horizon), which water reflects and haze fades towards.
    t = np.clip(yy[:, :1] / max(horizon, 1), 0, 1) ** 1.4
    gradient = top * (1 - t) + horizon_colour * t  # (H, 1, 3)
    gradient = gradient[:, None, :] if gradient.ndim == 2 else gradient
    image = colour[label] * shade[..., None] + gradient * sky_mix[..., None]
    if present[SKY]:
        image += 0.02 * (coarse * (label == SKY))[..., None]
    if style["sun"] is not None:  # a low sun glowing in the sky and glittering on water
        sun_x = rng.uniform(0.15, 0.85) * width
        distance = np.sqrt((xx - sun_x) ** 2 + ((yy - horizon * 0.9) * 1.6) ** 2) / width
        glow = 0.6 * np.exp(-((distance / 0.18) ** 2)) * (label == SKY)
        glow += 0.35 * np.exp(-(((xx - sun_x) / (0.06 * width)) ** 2)) * (label == WATER) * (streak_x > 0)
        image += np.asarray(style["sun"]) * glow[..., None]
    image[canvas.trunk] = jitter((0.30, 0.20, 0.12), 0.03) * 0.8

    # Every instance a slightly different shade; light falls on everything but the sky;
    # the ground fades towards the horizon colour near the horizon (aerial perspective).
    # (mostly brightness: a per-channel cast would turn grey rocks purple)
    instance_jitter = 1 + rng.normal(0, 0.07, (canvas.next_id + 1, 1)) + rng.normal(0, 0.012, (canvas.next_id + 1, 3))
    factor = instance_jitter[canvas.instance] * np.where((label == SKY)[..., None], 1.0, light)
    haze = (0.3 * (1 - depth) ** 4 * (yy >= horizon))[..., None]
    image = image * factor * (1 - haze) + horizon_colour * haze
    image += rng.uniform(-0.02, 0.02, image.shape)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def generate_landscape(seed: int, split: str, index: int, size: int = 64) -> Landscape:
    """One landscape, a function of ``(seed, split, index, size)`` only."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_CODES)}, got {split!r}")
    if size < 16:
        raise ValueError(f"data.builtin.size: got {size}, expected at least 16 pixels")
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index, size])
    canvas = _Canvas(size, size)
    horizon = rng.uniform(0.38, 0.62) * size
    style = _STYLE_NAMES[rng.choice(len(_STYLE_NAMES), p=_STYLE_WEIGHTS)]
    season = _SEASON_NAMES[rng.choice(len(_SEASON_NAMES), p=_SEASON_WEIGHTS)]
    _layout_sky_and_mountains(rng, canvas, horizon)
    _layout_ground(rng, canvas, horizon)
    _layout_objects(rng, canvas, horizon)
    image = _render(rng, canvas, horizon, style, season)
    return Landscape(image, canvas.label, canvas.instance, style, season)


def _save_png(array: np.ndarray, path: Path) -> None:
    if array.ndim == 2 and array.max(initial=0) > 255:
        Image.fromarray(array.astype(np.uint16)).save(path, format="PNG", compress_level=1)  # 16-bit greyscale
    else:
        Image.fromarray(array.astype(np.uint8)).save(path, format="PNG", compress_level=1)


def _write_one(args: tuple[Path, str, int, int, int]) -> str:
    folder, split, index, size, seed = args
    sample = generate_landscape(seed, split, index, size)
    stem = f"{index:06d}"
    Image.fromarray(sample.image).save(folder / split / "images" / f"{stem}.png", format="PNG", compress_level=1)
    _save_png(sample.label, folder / split / "labels" / f"{stem}.png")
    _save_png(sample.instance, folder / split / "instances" / f"{stem}.png")
    return sample.style


# builtin.json marks a generated landscapes folder, the only kind write_landscapes replaces.
LANDSCAPES_MARKER = OutputMarker("builtin.json", "landscapes", "data.root", key="dataset")


def write_landscapes(out_dir: str | os.PathLike, num_train: int, num_val: int, size: int, seed: int,
                     progress: bool = False, num_workers: int = 0) -> dict:
    """Generate the dataset into ``out_dir/{train,val}/{images,labels,instances}/``.

    Written into a temporary sibling folder and renamed at the end, so an interrupted run
    never leaves a half-written dataset. Returns (and writes as ``builtin.json``) a
    description: the parameters and counts (plus, returned only, the generation speed).
    """
    from gaugan.data.check import parallel_map

    out_dir = Path(out_dir)
    require_writable(out_dir, "data.root", "the generated dataset", replaced=True)
    check_replaceable(out_dir, LANDSCAPES_MARKER)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    start = time.perf_counter()
    counts = {"train": num_train, "val": num_val}
    jobs = []
    for split, count in counts.items():
        for kind in ("images", "labels", "instances"):
            (tmp_dir / split / kind).mkdir(parents=True, exist_ok=True)
        jobs += [(tmp_dir, split, index, size, seed) for index in range(count)]
    results = parallel_map(_write_one, jobs, num_workers, chunksize=32)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=len(jobs), desc="landscapes", unit="img")
    styles: dict[str, int] = {}
    for style in results:
        styles[style] = styles.get(style, 0) + 1
    seconds = time.perf_counter() - start
    info = {
        "dataset": "landscapes",
        "classes": list(LANDSCAPE_CLASSES),
        "seed": seed,
        "size": size,
        "counts": counts,
        "styles": dict(sorted(styles.items())),
    }
    # Timings stay out of the file: it must be identical for identical data (DVC hashes it).
    (tmp_dir / "builtin.json").write_text(json.dumps(info, indent=2) + "\n")
    info = dict(info, seconds=round(seconds, 3), num_workers=num_workers,
                images_per_s_with_png_writing=round(len(jobs) / max(seconds, 1e-9), 1))
    replace_dir(tmp_dir, out_dir, LANDSCAPES_MARKER)
    return info
