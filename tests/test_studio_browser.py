"""The studio page end to end in a real headless browser (Chromium through Playwright).

A person's session, checked pixel by pixel: paint strokes with two classes, flood-fill a
region, undo once, load a label map. After every edit the photo must change (and be the
generation of the new map), and the saved label map must hold exactly the class indices
the tools paint: the brush is a disc of the chosen diameter, strokes leave no gaps, the
bucket fills the 4-connected region. Any anti-aliasing (blended colours, stray indices at
stroke edges, a smoothed upscale on screen) or a photo that does not follow the edits
fails the test. A COCO-Stuff model checks the don't-care class end to end (load, generate,
paint, save, ``gaugan synthesize``), and a page from another origin must not make the
studio work.

Environment: ``GAUGAN_STUDIO_CHECKPOINT`` serves that checkpoint (a trained 64x64 landscapes
generator) instead of a tiny random one; ``GAUGAN_STUDIO_SCREENSHOT`` writes the final
screenshot of the page there (the README's docs/studio.png is made this way).
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
from collections import deque
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from gaugan.data.builtin import generate_landscape
from gaugan.data.classes import label_palette
from gaugan.studio.app import studio_for_checkpoint
from pipeline.cli import app as cli
from tests.http_support import serving
from tests.support import coco_spec, landscapes_spec, serve_in_thread, write_checkpoint

SIZE = 64
GRASS, TREE, WATER = 6, 7, 4
PALETTE = label_palette(10, "landscapes")

WAIT_FOR_PHOTO = """() => {
  const canvas = document.getElementById("label-canvas"), photo = document.getElementById("photo");
  const toast = document.getElementById("toast");
  if (!toast.hidden && toast.classList.contains("error")) return true;  // no photo is coming
  return photo.dataset.version === canvas.dataset.version && document.getElementById("busy").hidden;
}"""
ERROR_SHOWN = """() => {
  const toast = document.getElementById("toast");
  return !toast.hidden && toast.classList.contains("error") ? toast.textContent : null;
}"""
PHOTO_BYTES = """async () => {
  const response = await fetch(document.getElementById("photo").src);
  return Array.from(new Uint8Array(await response.arrayBuffer()));
}"""
CANVAS_PIXELS = """() => {
  const canvas = document.getElementById("label-canvas");
  return Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data);
}"""


def stamp_offsets(size: int) -> list[tuple[int, int]]:
    """The brush: a disc of odd diameter ``size`` (dx² + dy² <= r² + r, r = (size - 1) / 2)."""
    r = (size - 1) // 2
    return [(dx, dy) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dx * dx + dy * dy <= r * r + r]


def paint_stroke(labels: np.ndarray, points: list[tuple[int, int]], size: int, value: int) -> np.ndarray:
    """What a brush stroke through these (consecutive, 8-adjacent) pixels paints."""
    out = labels.copy()
    height, width = labels.shape
    for x, y in points:
        for dx, dy in stamp_offsets(size):
            if 0 <= x + dx < width and 0 <= y + dy < height:
                out[y + dy, x + dx] = value
    return out


def flood_fill(labels: np.ndarray, x: int, y: int, value: int) -> np.ndarray:
    out = labels.copy()
    target = labels[y, x]
    queue, seen = deque([(x, y)]), {(x, y)}
    while queue:
        px, py = queue.popleft()
        out[py, px] = value
        for nx, ny in ((px - 1, py), (px + 1, py), (px, py - 1), (px, py + 1)):
            if 0 <= nx < SIZE and 0 <= ny < SIZE and (nx, ny) not in seen and labels[ny, nx] == target:
                seen.add((nx, ny))
                queue.append((nx, ny))
    return out


class Studio:
    """The page, driven as a person would: clicks on controls, mouse strokes over the canvas."""

    def __init__(self, page, url: str, size: int = SIZE) -> None:
        self.page = page
        self.url = url
        self.size = size

    def wait_for_photo(self) -> np.ndarray:
        """The photo once it shows the current label map (an error shown instead fails the test)."""
        self.page.wait_for_function(WAIT_FOR_PHOTO, timeout=30000)
        error = self.page.evaluate(ERROR_SHOWN)
        assert error is None, error
        return np.asarray(Image.open(io.BytesIO(bytes(self.page.evaluate(PHOTO_BYTES)))))

    def save(self, button: str) -> Image.Image:
        with self.page.expect_download() as download:
            self.page.click(button)
        return Image.open(download.value.path())

    def select_class(self, name: str) -> None:
        self.page.fill("#class-search", name)
        self.page.click(f"#palette li:not([hidden]) >> text={name}")
        self.page.fill("#class-search", "")

    def screen(self, x: int, y: int) -> tuple[float, float]:
        """The screen position of the centre of canvas pixel (x, y)."""
        box = self.page.locator("#overlay-canvas").bounding_box()
        scale = box["width"] / self.size
        return box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale

    def stroke(self, start: tuple[int, int], end: tuple[int, int]) -> None:
        mouse = self.page.mouse
        mouse.move(*self.screen(*start))
        mouse.down()
        mouse.move(*self.screen(*end), steps=12)
        mouse.up()

    def click_pixel(self, x: int, y: int) -> None:
        self.page.mouse.click(*self.screen(x, y))


def check_exact(studio: Studio, expected: np.ndarray) -> None:
    """The saved maps, the canvas and the screen all hold exactly ``expected``."""
    saved = studio.save("#save-label")
    assert saved.mode == "P" and saved.size == (SIZE, SIZE)
    np.testing.assert_array_equal(np.asarray(saved), expected)
    instance = np.asarray(studio.save("#save-instance"))
    np.testing.assert_array_equal(instance, expected)  # one object per class region: id = class index
    canvas = np.array(studio.page.evaluate(CANVAS_PIXELS), np.uint8).reshape(SIZE, SIZE, 4)
    np.testing.assert_array_equal(canvas[..., :3], PALETTE[expected])  # no blended colour anywhere
    studio.page.mouse.move(0, 0)  # no brush outline over the canvas
    shot = np.asarray(Image.open(io.BytesIO(studio.page.locator("#stage").screenshot())).convert("RGB"))
    scale = shot.shape[0] // SIZE
    assert scale >= 4 and shot.shape[:2] == (SIZE * scale, SIZE * scale)
    np.testing.assert_array_equal(shot, PALETTE[np.kron(expected, np.ones((scale, scale), np.int64))])


def test_painting_filling_and_undo_are_exact_and_update_the_photo(browser_page, tmp_path):
    checkpoint = os.environ.get("GAUGAN_STUDIO_CHECKPOINT") or write_checkpoint(
        tmp_path / "generator.pt", landscapes_spec(SIZE))
    app = studio_for_checkpoint(checkpoint, None, torch.device("cpu"), tmp_path / "weights", tmp_path / "none.pt")
    with serve_in_thread(app) as url:
        studio = Studio(browser_page, url)
        browser_page.goto(url)
        photos = [studio.wait_for_photo()]
        maps = [np.asarray(studio.save("#save-label")).astype(np.int64)]
        assert photos[0].shape == (SIZE, SIZE, 3)

        def after_edit(expected: np.ndarray) -> None:
            photo = studio.wait_for_photo()
            assert not np.array_equal(photo, photos[-1]), "the photo did not change after the edit"
            check_exact(studio, expected)
            photos.append(photo)
            maps.append(expected)

        # A grass stroke (brush 5) and a tree stroke (brush 3) across it.
        studio.select_class("grass")
        browser_page.click("#sizes [data-size='5']")
        studio.stroke((8, 20), (50, 20))
        after_edit(paint_stroke(maps[-1], [(x, 20) for x in range(8, 51)], 5, GRASS))
        studio.select_class("tree")
        browser_page.click("#sizes [data-size='3']")
        studio.stroke((30, 4), (30, 36))
        after_edit(paint_stroke(maps[-1], [(30, y) for y in range(4, 37)], 3, TREE))

        # The bucket: water into the sky region above the grass stroke.
        studio.select_class("water")
        browser_page.click("[data-tool='fill']")
        studio.click_pixel(2, 2)
        after_edit(flood_fill(maps[-1], 2, 2, WATER))

        # Undo the fill: the tree stroke's map and photo come back.
        browser_page.click("#undo")
        photo = studio.wait_for_photo()
        assert not np.array_equal(photo, photos[-1]), "the photo did not change after undo"
        np.testing.assert_array_equal(photo, photos[2])  # the same map gives the same photo
        check_exact(studio, maps[2])

        # The photo shown is the server's generation of the saved map.
        saved = io.BytesIO()
        Image.fromarray(maps[2].astype(np.uint8)).save(saved, format="PNG")
        response = browser_page.request.post(url + "api/generate", multipart={
            "label": {"name": "label.png", "mimeType": "image/png", "buffer": saved.getvalue()}})
        assert response.ok
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(response.body()))), photo)

        # Load a built-in landscape's label map: the canvas holds it exactly, a new photo follows.
        landscape = generate_landscape(0, "val", 3, size=SIZE).label.astype(np.uint8)
        Image.fromarray(landscape).save(tmp_path / "landscape.png")
        browser_page.set_input_files("#load-label-file", str(tmp_path / "landscape.png"))
        after_edit(landscape.astype(np.int64))
        screenshot_path = Path(os.environ.get("GAUGAN_STUDIO_SCREENSHOT") or tmp_path / "studio.png")
        browser_page.screenshot(path=str(screenshot_path))
        assert Image.open(screenshot_path).size == (1440, 900)


def test_style_controls_follow_the_generator(browser_page, tmp_path):
    """VAE: a typed seed and "new style" change the photo; non-VAE: the controls are off and say why."""
    spec = landscapes_spec(32)
    vae = studio_for_checkpoint(write_checkpoint(tmp_path / "vae.pt", spec, use_vae=True), None,
                                torch.device("cpu"), tmp_path, tmp_path / "none.pt")
    with serve_in_thread(vae) as url:
        studio = Studio(browser_page, url)
        browser_page.goto(url)
        first = studio.wait_for_photo()
        assert browser_page.is_enabled("#seed") and browser_page.is_enabled("#new-style")
        # Only re-rolling one region is off for a VAE: it needs 3D noise.
        assert browser_page.is_disabled("#reroll-class") and browser_page.is_enabled("#style-photo")
        assert "3D noise" in browser_page.inner_text("#style-reason")
        browser_page.fill("#seed", "7")
        browser_page.press("#seed", "Enter")
        browser_page.wait_for_function("() => document.getElementById('photo').dataset.generations === '2'")
        seeded = studio.wait_for_photo()
        assert not np.array_equal(seeded, first)
        browser_page.click("#new-style")
        browser_page.wait_for_function("() => document.getElementById('photo').dataset.generations === '3'")
        assert browser_page.input_value("#seed") != "7"
        assert not np.array_equal(studio.wait_for_photo(), seeded)
    plain = studio_for_checkpoint(write_checkpoint(tmp_path / "plain.pt", spec), None, torch.device("cpu"),
                                  tmp_path, tmp_path / "none.pt")
    with serve_in_thread(plain) as url:
        browser_page.goto(url)
        Studio(browser_page, url).wait_for_photo()
        for control in ("#seed", "#new-style", "#style-photo"):
            assert browser_page.is_disabled(control), control
        assert "neither a VAE" in browser_page.inner_text("#style-reason")
        assert browser_page.is_disabled("#reroll-class")
        browser_page.set_input_files("#segment-photo-file", files=[{
            "name": "photo.png", "mimeType": "image/png", "buffer": tiny_photo()}])
        browser_page.wait_for_selector("#segment-reason:not([hidden])")
        assert "No segmenter available" in browser_page.inner_text("#segment-reason")


def test_noise_controls_new_style_reroll_a_region_and_reproduce_it(browser_page, tmp_path):
    """OASIS (3D noise): "new style" re-draws the noise, "re-roll" redraws the selected class's
    region (the region seeds show as class=seed), and typing the seed and regions back gives the
    same photo, byte for byte."""
    spec = landscapes_spec(32)
    app = studio_for_checkpoint(write_checkpoint(tmp_path / "oasis.pt", spec, noise=True), None,
                                torch.device("cpu"), tmp_path, tmp_path / "none.pt")
    generations = "() => document.getElementById('photo').dataset.generations === '{}'"
    with serve_in_thread(app) as url:
        studio = Studio(browser_page, url, size=32)
        browser_page.goto(url)
        first = studio.wait_for_photo()
        for control in ("#seed", "#new-style", "#reroll-class", "#class-seeds"):
            assert browser_page.is_enabled(control), control
        assert browser_page.is_disabled("#style-photo") and "3D noise" in browser_page.inner_text("#style-reason")
        assert "3D noise" in browser_page.inner_text("#model-summary")
        browser_page.click("#new-style")
        browser_page.wait_for_function(generations.format(2))
        styled = studio.wait_for_photo()
        assert not np.array_equal(styled, first)
        ground = int(np.bincount(np.asarray(studio.save("#save-label")).ravel()).argmax())  # the largest region
        studio.select_class(spec_class_name(ground))
        assert browser_page.inner_text("#reroll-name") == spec_class_name(ground)
        browser_page.click("#reroll-class")
        browser_page.wait_for_function(generations.format(3))
        rerolled = studio.wait_for_photo()
        assert not np.array_equal(rerolled, styled)
        seed, regions = browser_page.input_value("#seed"), browser_page.input_value("#class-seeds")
        assert regions.startswith(f"{ground}=") and "," not in regions
        browser_page.click("#new-style")  # everything changes, the region's own noise too
        browser_page.wait_for_function(generations.format(4))
        assert not np.array_equal(studio.wait_for_photo(), rerolled)
        browser_page.fill("#seed", seed)  # the regions stay: the re-rolled photo again
        browser_page.press("#seed", "Enter")
        browser_page.wait_for_function(generations.format(5))
        np.testing.assert_array_equal(studio.wait_for_photo(), rerolled)
        browser_page.fill("#class-seeds", "")  # no region re-rolled: the photo before the re-roll
        browser_page.press("#class-seeds", "Enter")
        browser_page.wait_for_function(generations.format(6))
        np.testing.assert_array_equal(studio.wait_for_photo(), styled)
        browser_page.fill("#class-seeds", regions)  # typed back: reproduced from the seeds
        browser_page.press("#class-seeds", "Enter")
        browser_page.wait_for_function(generations.format(7))
        np.testing.assert_array_equal(studio.wait_for_photo(), rerolled)
        browser_page.fill("#class-seeds", "x=1")
        browser_page.press("#class-seeds", "Enter")
        browser_page.wait_for_selector("#toast.error:not([hidden])")
        assert "not class=seed" in browser_page.inner_text("#toast")


def spec_class_name(index: int) -> str:
    from gaugan.data.registry import LANDSCAPE_CLASSES

    return LANDSCAPE_CLASSES[index]


def tiny_photo() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_dontcare_pixels_load_generate_paint_save_and_synthesize(browser_page, tmp_path):
    """COCO-Stuff's don't-care value 255 becomes index 182 on the canvas: the page generates from it,
    paints it, saves it, and ``gaugan synthesize`` reads the saved maps back to the page's photo."""
    size, dontcare = 32, 182
    checkpoint = write_checkpoint(tmp_path / "coco.pt", coco_spec(size))
    app = studio_for_checkpoint(checkpoint, None, torch.device("cpu"), tmp_path / "weights", tmp_path / "none.pt")
    with serve_in_thread(app) as url:
        studio = Studio(browser_page, url, size)
        browser_page.goto(url)
        studio.wait_for_photo()
        raw = np.full((size, size), 156, np.uint8)  # sky-other over grass, a void region (255) in the sky
        raw[20:, :] = 123
        raw[4:12, 16:28] = 255
        Image.fromarray(raw).save(tmp_path / "void.png")
        browser_page.set_input_files("#load-label-file", str(tmp_path / "void.png"))
        loaded_photo = studio.wait_for_photo()
        expected = np.where(raw == 255, dontcare, raw).astype(np.int64)
        np.testing.assert_array_equal(np.asarray(studio.save("#save-label")), expected)

        studio.select_class("dontcare")
        browser_page.click("#sizes [data-size='5']")
        studio.stroke((4, 26), (20, 26))
        painted_photo = studio.wait_for_photo()
        assert not np.array_equal(painted_photo, loaded_photo), "the photo did not change after painting don't care"
        expected = paint_stroke(expected, [(x, 26) for x in range(4, 21)], 5, dontcare)
        label, instance = studio.save("#save-label"), studio.save("#save-instance")
        np.testing.assert_array_equal(np.asarray(label), expected)
        label.save(tmp_path / "saved_label.png")
        instance.save(tmp_path / "saved_instance.png")

    output = tmp_path / "synthesized.png"
    result = CliRunner().invoke(cli, [
        "synthesize", "--checkpoint", str(checkpoint), "--dataset", "coco", "--device", "cpu", "--output", str(output),
        "--label", str(tmp_path / "saved_label.png"), "--instance", str(tmp_path / "saved_instance.png")])
    assert result.exit_code == 0, result.output
    # The studio folds spectral norm and runs channels-last: the same maths, equal to float rounding.
    np.testing.assert_allclose(np.asarray(Image.open(output)).astype(int), painted_photo.astype(int), atol=1)


ATTACKER_PAGE = """<!doctype html><title>a page elsewhere</title><script>
async function attack(studio, label) {
  const form = new FormData();
  form.append("label", new Blob([Uint8Array.from(atob(label), (c) => c.charCodeAt(0))], {type: "image/png"}), "l.png");
  await fetch(studio + "api/generate", {method: "POST", mode: "no-cors", body: form});
  return "answered";
}
</script>"""


class AttackerPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server hook
        body = ATTACKER_PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_page_from_another_origin_cannot_make_the_studio_generate(browser_page, tmp_path):
    """A multipart POST needs no preflight: Chromium sends it from any page, and the studio must refuse it."""
    app = studio_for_checkpoint(write_checkpoint(tmp_path / "plain.pt", landscapes_spec(32)), None,
                                torch.device("cpu"), tmp_path, tmp_path / "none.pt")
    generator = app.state.service.loaded.generator
    forward, calls = generator.forward, []
    generator.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
    label = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(label, format="PNG")
    with serve_in_thread(app) as studio_url, serving(AttackerPage) as attacker:
        browser_page.goto(attacker.url + "/")
        encoded = base64.b64encode(label.getvalue()).decode()
        sent = browser_page.evaluate(f"attack({json.dumps(studio_url)}, {json.dumps(encoded)})")
        assert sent == "answered"
        assert calls == [], "a page from another origin made the studio generate"
        browser_page.goto(studio_url)  # the studio's own page still works
        Studio(browser_page, studio_url, 32).wait_for_photo()
        assert calls
