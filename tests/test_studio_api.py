"""The studio's HTTP API on tiny generators: shapes, determinism, every error path, serialised device use,
the request queue, cross-origin requests and the don't-care index."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import threading
import tracemalloc

import httpx2 as httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from gaugan.data.classes import label_palette
from gaugan.data.registry import published_spec
from gaugan.models.loading import load_generator
from gaugan.segmenters.trained import TrainedSegmenter, save_trained_segmenter
from gaugan.studio.app import STATIC_DIR, studio_for_checkpoint
from gaugan.studio.inputs import MAX_UPLOAD_BYTES, LabelInput, Upload, read_label_upload
from gaugan.studio.service import StudioService, StudioSetupError
from gaugan.synthesize import synthesize_image
from tests.support import dontcare_spec, landscapes_spec, serve_in_thread, wait_until, write_checkpoint

SPEC = landscapes_spec(32)  # 10 classes + instance edges
FACADES = dataclasses.replace(published_spec("facades"), load_size=32, crop_size=32)  # 13 classes, no instances
DONTCARE = dontcare_spec(32)  # 5 classes; raw 255 is the don't-care index 5
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def error_messages(monkeypatch):
    """Every error message the API sends in these tests; none may show an object's repr."""
    sent: list[str] = []
    render = JSONResponse.render

    def recording_render(self, content):
        if isinstance(content, dict) and "error" in content:
            sent.append(content["error"])
        return render(self, content)

    monkeypatch.setattr(JSONResponse, "render", recording_render)
    yield sent
    assert not [message for message in sent if " object at 0x" in message], sent


def png(array: np.ndarray, mode: str | None = None, palette: np.ndarray | None = None) -> bytes:
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def scene(size: int = 32) -> np.ndarray:
    labels = np.zeros((size, size), np.uint8)
    labels[size // 2:, :] = 6  # grass under sky
    labels[size // 4: size // 2, size // 3: 2 * size // 3] = 2  # a mountain
    return labels


def decode(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio")
    return {
        "plain": write_checkpoint(root / "plain.pt", SPEC),
        "vae": write_checkpoint(root / "vae.pt", SPEC, use_vae=True),
        "noise": write_checkpoint(root / "noise.pt", SPEC, noise=True),
        "facades": write_checkpoint(root / "facades.pt", FACADES),
        "dontcare": write_checkpoint(root / "dontcare.pt", DONTCARE),
        "root": root,
    }


def make_client(checkpoints, name: str = "plain", segmenter=None, **kwargs) -> TestClient:
    app = studio_for_checkpoint(checkpoints[name], None, CPU, checkpoints["root"] / "weights",
                                segmenter or checkpoints["root"] / "no-segmenter.pt")
    return TestClient(app, **kwargs)


@pytest.fixture(scope="module")
def client(checkpoints):
    with make_client(checkpoints) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def vae_client(checkpoints):
    with make_client(checkpoints, "vae") as test_client:
        yield test_client


def generate(client: TestClient, label: bytes | None, headers: dict[str, str] | None = None, **fields):
    files = {} if label is None else {"label": ("label.png", label, "image/png")}
    data = {}
    for name, value in fields.items():
        if isinstance(value, bytes):
            files[name] = (f"{name}.png", value, "application/octet-stream")
        else:
            data[name] = value
    return client.post("/api/generate", files=files, data=data, headers=headers)


def error_of(response) -> str:
    return response.json()["error"]


def test_info_describes_the_model(client):
    info = client.get("/api/info").json()
    assert info["dataset"] == "landscapes" and info["image_size"] == {"height": 32, "width": 32}
    assert info["use_instance"] is True and info["vae"] is False
    assert [entry["name"] for entry in info["classes"]][:3] == ["sky", "cloud", "mountain"]
    palette = label_palette(10, "landscapes")
    assert info["classes"][4]["colour"] == "#{:02x}{:02x}{:02x}".format(*palette[4])
    assert "neither a VAE" in info["style"]["seed_reason"] and info["style"]["photo_reason"]
    assert "3D noise" in info["style"]["region_reason"] and info["noise_channels"] == 0
    assert info["device"].startswith("cpu (")


def test_a_stores_class_table_names_and_colours_the_palette(checkpoints):
    """A custom dataset's classes file reaches the page through the store's manifest."""
    names = [f"part {index}" for index in range(SPEC.num_label_values)]
    colours = [[index, 2 * index, 3 * index] for index in range(SPEC.num_label_values)]
    manifest = {"dataset": SPEC.name, "num_label_values": SPEC.num_label_values, "class_names": names,
                "class_colours": colours}
    app = studio_for_checkpoint(checkpoints["plain"], None, CPU, checkpoints["root"] / "weights",
                                checkpoints["root"] / "no-segmenter.pt", manifest=manifest)
    with TestClient(app) as test_client:
        classes = test_client.get("/api/info").json()["classes"]
    assert [entry["name"] for entry in classes] == names
    assert classes[3]["colour"] == "#030609"
    other = {**manifest, "dataset": "facades"}  # a store of another dataset keeps the model's own table
    app = studio_for_checkpoint(checkpoints["plain"], None, CPU, checkpoints["root"] / "weights",
                                checkpoints["root"] / "no-segmenter.pt", manifest=other)
    with TestClient(app) as test_client:
        assert test_client.get("/api/info").json()["classes"][0]["name"] == "sky"


def test_generate_matches_synthesize_image(client, checkpoints):
    """The photo is the one gaugan.synthesize computes: same labels, instance edges, weights."""
    labels = scene()
    instance = (labels == 2).astype(np.uint8) + 5 * (np.arange(32)[None, :] > 20)
    response = generate(client, png(labels), instance=png(instance.astype(np.uint8)))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert re.fullmatch(r"generate;dur=[0-9.]+", response.headers["server-timing"])
    assert json.loads(response.headers["x-studio-notes"]) == []
    photo = decode(response.content)
    assert photo.shape == (32, 32, 3) and photo.dtype == np.uint8
    loaded = load_generator(checkpoints["plain"])
    expected = np.asarray(synthesize_image(loaded, labels.astype(np.int64), instance.astype(np.int64)))
    # The studio folds spectral norm and runs channels-last: the same maths, equal to float rounding.
    np.testing.assert_allclose(photo.astype(int), expected.astype(int), atol=1)


def test_generate_accepts_palette_pngs_and_derives_instances(client):
    labels = scene()
    palette = label_palette(10, "landscapes")
    as_palette = generate(client, png(labels, "P", palette))
    as_grey = generate(client, png(labels))
    with_label_as_instance = generate(client, png(labels), instance=png(labels))
    assert as_palette.status_code == as_grey.status_code == 200
    assert as_palette.content == as_grey.content == with_label_as_instance.content
    notes = json.loads(as_grey.headers["x-studio-notes"])
    assert any("each class region counts as one object" in note for note in notes)


def test_generate_changes_with_the_label_map(client):
    first = generate(client, png(scene())).content
    edited = scene()
    edited[2:6, 2:6] = 4
    assert generate(client, png(edited)).content != first


def test_wrong_size_is_resized_with_a_note(client):
    labels = scene(32)
    large = np.kron(labels, np.ones((2, 2), np.uint8))  # 64x64, the same map at twice the size
    response = generate(client, png(large))
    assert response.status_code == 200
    assert decode(response.content).shape == (32, 32, 3)
    notes = json.loads(response.headers["x-studio-notes"])
    assert any("64x64; resized (nearest neighbour) to the model's 32x32" in note for note in notes)
    assert response.content == generate(client, png(labels)).content


def test_vae_seed_is_deterministic_and_style_changes_the_photo(vae_client):
    info = vae_client.get("/api/info").json()
    assert info["vae"] is True and info["style"]["seed_reason"] is None and info["style"]["photo_reason"] is None
    label = png(scene())
    seed_3 = generate(vae_client, label, seed="3")
    assert seed_3.headers["x-studio-seed"] == "3"
    assert seed_3.content == generate(vae_client, label, seed="3").content
    assert seed_3.content != generate(vae_client, label, seed="4").content
    style = png(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    styled = generate(vae_client, label, seed="3", style=style)
    assert styled.status_code == 200, styled.text
    assert styled.content != seed_3.content
    assert styled.content == generate(vae_client, label, seed="3", style=style).content


def test_noise_style_new_style_and_a_rerolled_region_are_reproducible(checkpoints):
    """OASIS: "new style" re-draws the 3D noise, "re-roll" one class's region; the seeds reproduce both."""
    with make_client(checkpoints, "noise") as noise_client:
        info = noise_client.get("/api/info").json()
        assert info["noise_channels"] == 4 and info["vae"] is False
        assert info["style"]["seed_reason"] is None and info["style"]["region_reason"] is None
        assert "3D noise" in info["style"]["photo_reason"]  # no style photos without a VAE encoder
        labels = scene()
        label = png(labels)
        base = generate(noise_client, label, seed="3")
        assert base.status_code == 200, base.text
        assert base.content == generate(noise_client, label, seed="3").content
        new_style = decode(generate(noise_client, label, seed="4").content).astype(int)
        assert np.abs(new_style - decode(base.content)).mean() > 1
        rerolled = generate(noise_client, label, seed="3", class_seeds='{"6": 11}')
        assert rerolled.status_code == 200 and json.loads(rerolled.headers["x-studio-class-seeds"]) == {"6": 11}
        assert rerolled.content == generate(noise_client, label, seed="3", class_seeds='{"6": 11}').content
        assert rerolled.content != base.content
        # The same as the library's noise for (seed 3, class 6 -> 11).
        from gaugan.synthesize import load_generator_for, synthesize_image

        loaded = load_generator_for(checkpoints["noise"], None, CPU)
        expected = synthesize_image(loaded, labels.astype(np.int64), labels.astype(np.int64), 3, class_seeds={6: 11})
        assert np.array_equal(decode(rerolled.content), np.asarray(expected))
        for bad, fragment in (('{"x": 1}', "'x'"), ('{"10": 1}', "'10'"), ('{"6": -1}', "'6'"), ("[6]", "[6]"),
                              ('{"6": 1.5}', "'6'"), ("{", "'{'")):
            response = generate(noise_client, label, seed="3", class_seeds=bad)
            assert response.status_code == 400 and "class_seeds" in error_of(response), bad
            assert fragment in error_of(response) and "class index -> seed" in error_of(response), error_of(response)
        assert "3D noise" in error_of(generate(noise_client, label, style=label))


@pytest.mark.parametrize(
    ("case", "status", "fragments"),
    [
        ("missing_label", 400, ["'label' is missing"]),
        ("not_png", 415, ["label (label.png)", "not a PNG"]),
        ("jpeg", 415, ["not a PNG"]),
        ("truncated", 422, ["label (label.png)", "unreadable image"]),
        ("out_of_range", 422, ["label (label.png)", "label value(s) 12", "valid range 0..9", "GET /api/info"]),
        ("colour", 422, ["label (label.png)", "colour (RGB) image", "class indices"]),
        ("too_large", 413, ["label (label.png)", "over the 20 MB limit"]),
        ("too_many_pixels", 413, ["label (label.png)", "5000x5000 pixels", "over the limit"]),
        ("instance_size", 422, ["instance (instance.png)", "same size"]),
        ("bad_seed", 400, ["seed", "'abc'", "expected an integer"]),
        ("negative_seed", 400, ["seed", "-1"]),
        ("style_without_vae", 400, ["style (style.png)", "neither a VAE"]),
        ("class_seeds_without_noise", 400, ["class_seeds", "3D noise"]),
        ("label_as_text", 400, ["'label' must be a file upload"]),
    ],
)
def test_bad_input_gets_a_clear_4xx(client, case, status, fragments):
    labels = scene()
    good = png(labels)
    bad = labels.copy()
    bad[0, 0] = 12
    files = {
        "not_png": {"label": b"GIF89a not a png at all"},
        "jpeg": {"label": jpeg_bytes()},
        "truncated": {"label": good[:60]},
        "out_of_range": {"label": png(bad)},
        "colour": {"label": png(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))},
        "too_large": {"label": good + b"\0" * (MAX_UPLOAD_BYTES + 1)},
        "too_many_pixels": {"label": png(np.zeros((5000, 5000), np.uint8))},
        "instance_size": {"label": good, "instance": png(np.zeros((20, 20), np.uint8))},
        "bad_seed": {"label": good, "seed": "abc"},
        "negative_seed": {"label": good, "seed": "-1"},
        "style_without_vae": {"label": good, "style": good},
        "class_seeds_without_noise": {"label": good, "class_seeds": '{"6": 1}'},
        "missing_label": {},
    }.get(case, {})
    if case == "label_as_text":
        response = client.post("/api/generate", data={"label": "sky"})
    else:
        label = files.pop("label", None)
        response = generate(client, label, **files)
    assert response.status_code == status, response.text
    for fragment in fragments:
        assert fragment in error_of(response), (fragment, error_of(response))
    assert generate(client, good).status_code == 200  # the server keeps serving


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(scene()).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_instance_for_a_model_without_instance_edges_is_refused(checkpoints):
    with make_client(checkpoints, "facades") as facades:
        labels = np.full((32, 32), 2, np.uint8)
        assert generate(facades, png(labels)).status_code == 200
        response = generate(facades, png(labels), instance=png(labels))
        assert response.status_code == 400 and "no instance edge channel" in error_of(response)


def test_oversized_body_is_refused_before_parsing(client):
    body = b"x" * (3 * MAX_UPLOAD_BYTES + 2**20 + 10)
    response = client.post("/api/generate", content=body, headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413 and "request body" in error_of(response)


def test_an_internal_error_answers_500_and_the_server_keeps_serving(checkpoints, monkeypatch):
    with make_client(checkpoints, raise_server_exceptions=False) as test_client:
        service = test_client.app.state.service
        monkeypatch.setattr(service.loaded.generator, "forward", lambda *args: 1 / 0)
        response = generate(test_client, png(scene()))
        assert response.status_code == 500 and "ZeroDivisionError" in error_of(response)
        monkeypatch.undo()
        assert generate(test_client, png(scene())).status_code == 200


def test_concurrent_requests_never_overlap_on_the_device(checkpoints):
    """Eight clients at once: every request answered (generated, or refused by the queue), the generator
    never runs twice at the same time."""
    with make_client(checkpoints) as test_client:
        service = test_client.app.state.service
        generator = service.loaded.generator
        forward = generator.forward
        active, overlaps, calls = [0], [0], [0]
        guard = threading.Lock()
        statuses: list[int] = []

        def watched_forward(*args, **kwargs):
            with guard:
                active[0] += 1
                calls[0] += 1
                overlaps[0] = max(overlaps[0], active[0])
            # The widest window for an overlap: every other request has arrived (refused or waiting).
            wait_until(lambda: len(statuses) + service.queue.waiting >= 7, "the other requests have arrived")
            try:
                return forward(*args, **kwargs)
            finally:
                with guard:
                    active[0] -= 1

        generator.forward = watched_forward

        def request(client_id: str) -> None:
            statuses.append(generate(test_client, png(scene()), headers={"X-Studio-Client": client_id}).status_code)

        threads = [threading.Thread(target=request, args=(f"page-{index}",)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(statuses) == 8 and set(statuses) <= {200, 429} and 200 in statuses, statuses
    assert calls[0] == statuses.count(200) and overlaps[0] == 1


def test_segment_without_a_segmenter_is_503_with_the_reason(client):
    photo = png(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    response = client.post("/api/segment", files={"photo": ("photo.png", photo, "image/png")})
    assert response.status_code == 503
    assert "no segmenter for dataset 'landscapes'" in error_of(response)
    assert "no-segmenter.pt" in error_of(response) and "segmenter stage" in error_of(response)


def test_segment_returns_a_label_map_from_the_trained_segmenter(checkpoints):
    torch.manual_seed(0)
    segmenter = TrainedSegmenter(SPEC, width=4)
    path = checkpoints["root"] / "segmenter.pt"
    save_trained_segmenter(segmenter, path, {})
    photo_array = np.random.default_rng(3).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    with make_client(checkpoints, segmenter=path) as test_client:
        response = test_client.post("/api/segment", files={"photo": ("photo.png", png(photo_array), "image/png")})
        assert response.status_code == 200, response.text
        missing = test_client.post("/api/segment", files={})
        assert missing.status_code == 400 and "'photo' is missing" in error_of(missing)
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "P" and image.size == (32, 32)
    labels = np.asarray(image)
    resized = Image.fromarray(photo_array).resize((32, 32), Image.Resampling.BICUBIC)
    batch = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)[None]
    np.testing.assert_array_equal(labels, segmenter.eval().predict(batch)[0].numpy())


def test_label_and_instance_maps_are_normalised_for_the_editor(client):
    labels = np.kron(scene(16), np.ones((4, 4), np.uint8))  # 64x64 -> the model's 32x32
    response = client.post("/api/label", files={"label": ("map.png", png(labels), "image/png")})
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "P" and image.size == (32, 32)
    assert response.content[24] == 8  # IHDR bit depth: 8 bits per index, as the page's decoder reads them
    np.testing.assert_array_equal(np.asarray(image), np.kron(scene(16), np.ones((2, 2), np.uint8)))
    assert any("resized" in note for note in json.loads(response.headers["x-studio-notes"]))
    ids = np.full((32, 32), 26001, np.uint16)  # Cityscapes-style ids: renumbered from 0, edges kept
    ids[:, 16:] = 40000
    response = client.post("/api/instance", files={"instance": ("ids.png", png(ids), "image/png")})
    assert response.status_code == 200
    compact = np.asarray(Image.open(io.BytesIO(response.content)))
    assert set(np.unique(compact)) == {0, 1} and (compact[:, :16] == 0).all() and (compact[:, 16:] == 1).all()


def test_the_page_is_served_without_external_resources(client):
    page = client.get("/")
    assert page.status_code == 200 and "GauGAN" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    names = sorted(path.name for path in STATIC_DIR.iterdir() if path.name != "index.html")
    assert {"studio.js", "studio.css", "favicon.svg"} <= set(names)
    for name in names:
        response = client.get(f"/{name}")
        assert response.status_code == 200
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", response.text), name
    assert not re.search(r"https?://", page.text)


def test_the_page_script_is_es_modules_served_as_javascript(client, monkeypatch):
    """A module script runs only when served with a JavaScript MIME type (the page also sends
    nosniff), whatever the system's MIME table says (text/plain for .js on some systems)."""
    import starlette.responses

    guess_type = starlette.responses.guess_type
    monkeypatch.setattr(starlette.responses, "guess_type", lambda path, *args, **kwargs: (
        ("text/plain", None) if str(path).endswith(".js") else guess_type(path, *args, **kwargs)))
    page = client.get("/")
    assert re.findall(r"<script[^>]*>", page.text) == ['<script type="module" src="studio.js">']
    modules = sorted(path.name for path in STATIC_DIR.glob("*.js"))
    assert len(modules) > 1
    imported = set()
    for name in modules:
        response = client.get(f"/{name}")
        assert response.status_code == 200 and response.headers["content-type"] == "text/javascript; charset=utf-8"
        assert response.headers["x-content-type-options"] == "nosniff"
        imports = re.findall(r'^import [^;]*? from "([^"]+)";', response.text, re.MULTILINE | re.DOTALL)
        assert all(spec.startswith("./") and (STATIC_DIR / spec[2:]).is_file() for spec in imports), name
        imported.update(spec[2:] for spec in imports)
    assert imported == set(modules) - {"studio.js"}  # every module is used, from the entry module down


def test_a_request_cancelled_while_waiting_is_dropped(client):
    """The page cancels stale generations; one whose client left before its turn never reaches the device."""
    service = client.app.state.service
    labels = scene().astype(np.int64)
    label_input = LabelInput(labels, labels)
    assert service.generate(label_input, 0, is_cancelled=lambda: True) is None
    assert service.generate(label_input, 0, is_cancelled=lambda: False).png.startswith(b"\x89PNG")


def test_a_class_table_beyond_8_bits_is_refused_at_start():
    spec = dataclasses.replace(FACADES, name="custom", label_nc=300)
    with pytest.raises(StudioSetupError, match="300 label values; the studio paints 8-bit indices"):
        StudioService(None, spec, CPU)


def multipart_request(port: int, label: bytes) -> bytes:
    boundary = "studio-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"label\"; filename=\"label.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + label + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
    return head + body


def test_a_client_that_leaves_while_waiting_costs_no_generation(checkpoints):
    """Over a real connection: the page aborts a stale request; the server skips it when its turn comes."""
    import socket

    app = studio_for_checkpoint(checkpoints["plain"], None, CPU, checkpoints["root"], checkpoints["root"] / "none.pt")
    service = app.state.service
    generator = service.loaded.generator
    forward, calls, entered, release = generator.forward, [], threading.Event(), threading.Event()

    def held_forward(*args, **kwargs):
        calls.append(threading.current_thread().name)
        entered.set()
        release.wait(timeout=60)
        return forward(*args, **kwargs)

    generator.forward = held_forward
    label = png(scene())
    with serve_in_thread(app) as url:
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        first = socket.create_connection(("127.0.0.1", port))
        first.sendall(multipart_request(port, label))
        wait_until(entered.is_set, "the first request holds the device")
        stale = socket.create_connection(("127.0.0.1", port))
        stale.sendall(multipart_request(port, label))
        wait_until(lambda: service.queue.waiting == 1, "the second request waits")
        stale.close()  # as the page's AbortController does
        # A third request, behind the stale one: when it is answered, the stale one's turn has come and gone.
        later: list[httpx.Response] = []
        third = threading.Thread(target=lambda: later.append(post_label(url, "page-c", label)))
        third.start()
        try:
            wait_until(lambda: service.queue.waiting == 2, "the third request waits behind the stale one")
        finally:
            release.set()
        assert first.recv(12) == b"HTTP/1.1 200"
        third.join(timeout=60)
        first.close()
    assert [response.status_code for response in later] == [200]
    assert len(calls) == 2  # the first and the third: the stale one never reached the device


# ---------------------------------------------------------------------------------------
# The don't-care index: what the page loads, paints and saves is what the API takes back.


def dontcare_scene() -> np.ndarray:
    """Raw values of a custom dataset with void 255: classes 0..4 and a void region."""
    labels = np.full((32, 32), 1, np.uint8)
    labels[16:, :] = 3
    labels[4:12, 20:30] = 255
    return labels


def test_the_dontcare_index_round_trips_through_the_studio(checkpoints):
    """Loading turns 255 into index 5; the page sends 5 back, paints it, saves it: all of it generates."""
    with make_client(checkpoints, "dontcare") as test_client:
        classes = test_client.get("/api/info").json()["classes"]
        assert [entry["name"] for entry in classes][-1] == "dontcare" and classes[-1]["index"] == 5
        raw = dontcare_scene()
        loaded = test_client.post("/api/label", files={"label": ("void.png", png(raw), "image/png")})
        assert loaded.status_code == 200, loaded.text
        indices = decode(loaded.content)
        np.testing.assert_array_equal(indices, np.where(raw == 255, 5, raw))
        as_raw = generate(test_client, png(raw))
        as_index = generate(test_client, png(indices))  # what the page sends after loading
        assert as_raw.status_code == 200, as_raw.text
        assert as_index.status_code == 200, as_index.text
        assert as_index.content == as_raw.content
        painted = indices.copy()
        painted[20:28, 2:10] = 5  # the don't-care class painted with the brush
        response = generate(test_client, png(painted))
        assert response.status_code == 200, response.text
        assert response.content != as_index.content
        beyond = indices.copy()
        beyond[0, 0] = 6
        refused = generate(test_client, png(beyond))
        assert refused.status_code == 422
        assert "label value(s) 6" in error_of(refused) and "don't-care value 255 or its index 5" in error_of(refused)


# ---------------------------------------------------------------------------------------
# Memory: label maps are decoded small, oversized ones not at all, and the work in flight is bounded.


def test_an_oversized_map_is_refused_before_it_is_decoded(client, monkeypatch):
    """A 16 KB PNG of 4096x4096 pixels would cost a 32x32 model megabytes to decode: 413 from its header."""
    huge = png(np.zeros((4096, 4096), np.uint8))
    assert len(huge) < 2**16

    def no_decoding(self, *args, **kwargs):
        raise AssertionError(f"{self.size} pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    requests = [("/api/generate", {"label": huge}), ("/api/generate", {"label": png(scene()), "instance": huge}),
                ("/api/label", {"label": huge}), ("/api/instance", {"instance": huge})]
    for url, uploads in requests:
        response = client.post(url, files={name: (f"{name}.png", data, "image/png") for name, data in uploads.items()})
        assert response.status_code == 413, (url, response.text)
        message = error_of(response)
        assert "4096x4096" in message and "model's 32x32" in message and "up to 256x256" in message, message


def test_a_label_map_is_decoded_in_its_own_8_bits(tmp_path):
    """The largest map a 32x32 model takes (256x256), decoded and resized: far less than one int64 copy."""
    labels = np.kron(scene(32), np.ones((8, 8), np.uint8))
    upload = Upload("label", "large.png", png(labels))
    tracemalloc.start()
    try:
        result = read_label_upload(SPEC, upload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(result.labels, scene(32))
    assert peak < 4 * labels.size, f"{peak} bytes for {labels.size} pixels"


def post_label(url: str, client_id: str | None, label: bytes) -> httpx.Response:
    headers = {"X-Studio-Client": client_id} if client_id else {}
    with httpx.Client(timeout=60) as http:
        return http.post(url + "api/generate", files={"label": ("label.png", label, "image/png")}, headers=headers)


def test_a_newer_request_replaces_the_older_one_of_its_client_and_a_full_queue_answers_429(checkpoints):
    """One request on the model, two waiting: a newer one from a waiting client takes its place (409
    for the older), a request beyond the queue is answered 429 at once."""
    app = studio_for_checkpoint(checkpoints["plain"], None, CPU, checkpoints["root"], checkpoints["root"] / "none.pt")
    service = app.state.service
    generator = service.loaded.generator
    forward, entered, release = generator.forward, threading.Event(), threading.Event()

    def held_forward(*args, **kwargs):
        entered.set()
        release.wait(timeout=60)
        return forward(*args, **kwargs)

    generator.forward = held_forward
    responses: dict[str, httpx.Response] = {}
    threads: list[threading.Thread] = []
    label = png(scene())
    with serve_in_thread(app) as url:
        def send(name: str, client_id: str) -> None:
            thread = threading.Thread(target=lambda: responses.__setitem__(name, post_label(url, client_id, label)))
            thread.start()
            threads.append(thread)

        try:
            send("running", "page-a")
            wait_until(entered.is_set, "the first request holds the model")
            send("older", "page-b")
            wait_until(lambda: service.queue.waiting == 1, "the second request waits")
            send("newer", "page-b")
            wait_until(lambda: "older" in responses, "the older request is answered")
            send("other", "page-c")
            wait_until(lambda: service.queue.waiting == 2, "two requests wait")
            refused = post_label(url, "page-d", label)
        finally:
            release.set()
            for thread in threads:
                thread.join(timeout=60)
    assert responses["older"].status_code == 409
    assert "replaced by a newer request from the same client" in responses["older"].json()["error"]
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "busy" in refused.json()["error"] and "try again" in refused.json()["error"]
    assert [responses[name].status_code for name in ("running", "newer", "other")] == [200, 200, 200]


def test_twenty_concurrent_requests_are_all_answered_and_one_is_decoded_at_a_time(checkpoints, monkeypatch):
    import gaugan.studio.app as studio_app

    app = studio_for_checkpoint(checkpoints["plain"], None, CPU, checkpoints["root"], checkpoints["root"] / "none.pt")
    decode_label, active, most = studio_app.read_label_upload, [0], [0]
    guard = threading.Lock()

    def counted(*args, **kwargs):
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            return decode_label(*args, **kwargs)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(studio_app, "read_label_upload", counted)
    label = png(np.kron(scene(32), np.ones((8, 8), np.uint8)))  # the largest map the model takes
    responses: list[httpx.Response] = []
    with serve_in_thread(app) as url:
        clients = [f"page-{index % 5}" if index % 4 else None for index in range(20)]  # None: a script
        threads = [threading.Thread(target=lambda c=c: responses.append(post_label(url, c, label))) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert len(responses) == 20
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {200, 409, 429} and 200 in statuses, statuses
    for response in responses:
        if response.status_code != 200:
            assert re.search(r"replaced by a newer request|busy", response.json()["error"]), response.text
    assert most[0] == 1 and app.state.service.queue.waiting == 0


# ---------------------------------------------------------------------------------------
# Requests from other web pages, and Host names.


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Origin": "http://testserver:8080"},  # another port is another origin
        {"Sec-Fetch-Site": "cross-site"},  # an older browser: no Origin on the POST
        {"Sec-Fetch-Site": "same-site"},
        {"Referer": "http://evil.example/page.html"},
    ],
)
def test_requests_from_other_web_pages_are_refused(checkpoints, headers):
    with make_client(checkpoints) as test_client:
        generator = test_client.app.state.service.loaded.generator
        forward, calls = generator.forward, []
        generator.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
        response = generate(test_client, png(scene()), headers=headers)
        assert response.status_code == 403, response.headers.get("content-type")
        assert "another web page" in error_of(response) and "http://testserver" in error_of(response)
        if "Origin" in headers:
            assert test_client.get("/api/info", headers=headers).status_code == 403
        assert calls == []


def test_the_studios_own_page_and_scripts_are_served(client):
    own = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin", "Referer": "http://testserver/"}
    assert generate(client, png(scene()), headers=own).status_code == 200
    assert generate(client, png(scene())).status_code == 200  # curl: no Origin, no Referer
    assert generate(client, png(scene()), headers={"Sec-Fetch-Site": "none"}).status_code == 200


def test_a_host_outside_the_allow_list_is_refused(checkpoints):
    """DNS rebinding: a page whose name resolves to this computer sends its own name as Host."""
    app = studio_for_checkpoint(checkpoints["plain"], None, CPU, checkpoints["root"], checkpoints["root"] / "none.pt",
                                allowed_hosts=["127.0.0.1", "localhost", "::1", "studio.lan"])
    with TestClient(app) as test_client:
        for host in ("127.0.0.1:7860", "localhost", "LOCALHOST:7860", "[::1]:7860", "studio.lan:7860"):
            assert test_client.get("/api/info", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "127.0.0.1.evil.example:7860", "[::2]:7860", "studio.lan.evil.example"):
            response = test_client.get("/api/info", headers={"Host": host})
            assert response.status_code == 400, host
            assert f"Host {host!r}" in error_of(response) and "--allowed-host" in error_of(response)


# ---------------------------------------------------------------------------------------
# Error messages name uploads by their field and file name.


@pytest.mark.parametrize(("url", "field"), [("/api/generate", "style"), ("/api/segment", "photo"),
                                            ("/api/label", "label"), ("/api/instance", "instance")])
def test_an_unreadable_upload_is_named_by_its_field_and_file_name(vae_client, url, field):
    files = {field: ("holiday.png", b"\x89PNG\r\n\x1a\nnot an image after all", "image/png")}
    if url == "/api/generate":
        files["label"] = ("label.png", png(scene()), "image/png")
    response = vae_client.post(url, files=files)
    assert response.status_code == 422, response.text
    assert error_of(response).startswith(f"{field} (holiday.png): "), error_of(response)
    assert " object at 0x" not in error_of(response)
