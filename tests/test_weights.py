"""The weights stage against a local HTTP server on 127.0.0.1 (nothing else is reached): a good
file, a bad checksum, an interrupted transfer resumed, a 404, files already in place, downloads
switched off; the stage's records for a configured run and the reason evaluation reports."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
from pathlib import Path

import pytest
import torch

from gaugan.config import Config, replace
from gaugan.pinned import Pin, WeightFile
from gaugan.weights import FOUND_IN_PLACE, fetch, needed_weights
from stages import weights as weights_stage
from tests.http_support import serving


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (name -> bytes), honours ``Range: bytes=N-``; a name in
    ``server.cut_once`` is cut off halfway through its first transfer."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        name = self.path.lstrip("/")
        self.server.requests.append((name, self.headers.get("Range")))
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if name in self.server.cut_once:
            self.server.cut_once.discard(name)
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    with serving(_Handler) as httpd:
        httpd.files, httpd.requests, httpd.cut_once = {}, [], set()
        yield httpd


PAYLOAD = bytes(range(256)) * 400


def state_dict_bytes(value: float) -> bytes:
    buffer = io.BytesIO()
    torch.save({"conv.weight": torch.full((2, 2), value)}, buffer)
    return buffer.getvalue()


def served_file(server, tmp_path: Path, payload: bytes = PAYLOAD, name: str = "net-abcd.pth",
                sha256: str | None = None) -> WeightFile:
    server.files[name] = payload
    pin = Pin(len(payload), sha256 or hashlib.sha256(payload).hexdigest())
    return WeightFile("a test network", name, f"{server.url}/{name}", tmp_path / "cache" / name, pin)


def test_good_file_is_fetched_verified_and_recorded(server, tmp_path):
    file = served_file(server, tmp_path)
    record = fetch(file, progress=False)
    assert record["status"] == "ok" and file.destination.read_bytes() == PAYLOAD
    assert record["sha256"] == hashlib.sha256(PAYLOAD).hexdigest() and record["bytes"] == len(PAYLOAD)
    assert record["source"] == file.url and record["path"] == str(file.destination)
    assert record["checksum"] == f"published: {len(PAYLOAD):,} bytes, sha256 {record['sha256']}"
    assert sorted(p.name for p in file.destination.parent.iterdir()) == [file.filename]  # no staging leftovers
    again = fetch(file, progress=False)  # present and valid: verified, not fetched again
    assert again == record and len(server.requests) == 1


def test_bad_checksum_is_unavailable_and_never_put_in_place(server, tmp_path):
    file = served_file(server, tmp_path, sha256="0" * 64)
    record = fetch(file, progress=False)
    assert record["status"] == "unavailable" and "failed verification (not the published file" in record["reason"]
    assert f"differs from the expected {'0' * 64}" in record["reason"]
    assert not file.destination.exists()
    assert (file.destination.parent / f"{file.filename}.checksum-mismatch").read_bytes() == PAYLOAD


def test_interrupted_transfer_is_resumed(server, tmp_path):
    file = served_file(server, tmp_path)
    server.cut_once.add(file.filename)
    first = fetch(file, progress=False)
    assert first["status"] == "unavailable" and "connection closed after" in first["reason"]
    assert "resumed on the next run" in first["reason"] and not file.destination.exists()
    second = fetch(file, progress=False)
    assert second["status"] == "ok" and file.destination.read_bytes() == PAYLOAD
    assert server.requests == [(file.filename, None), (file.filename, f"bytes={len(PAYLOAD) // 2}-")]


def test_404_and_no_url_and_downloads_off_say_how_to_place_the_file(server, tmp_path):
    missing = WeightFile("a test network", "gone.pth", f"{server.url}/gone.pth", tmp_path / "gone.pth")
    record = fetch(missing, progress=False)
    assert record["status"] == "unavailable" and "HTTP 404" in record["reason"]
    assert f"place it at {tmp_path / 'gone.pth'}" in record["reason"]
    user_supplied = WeightFile("drn", "drn.pth", None, tmp_path / "drn.pth", where_to_get="fyu/drn's model page")
    assert "no public URL: download fyu/drn's model page elsewhere" in fetch(user_supplied, progress=False)["reason"]
    file = served_file(server, tmp_path)
    off = fetch(file, download=False, progress=False)
    assert off["status"] == "unavailable" and "weights.download is false" in off["reason"]
    assert len(server.requests) == 1  # only the 404


def test_a_wrong_file_in_place_is_reported_not_used(server, tmp_path):
    file = served_file(server, tmp_path)
    file.destination.parent.mkdir(parents=True)
    file.destination.write_bytes(b"x" * 10)
    record = fetch(file, progress=False)
    assert record["status"] == "unavailable" and "10 bytes, expected" in record["reason"]
    assert server.requests == []


def test_mirror_replaces_the_published_url(server, tmp_path):
    file = served_file(server, tmp_path, name="elsewhere.pth")
    published = WeightFile(file.what, file.filename, "https://example.invalid/elsewhere.pth", file.destination,
                           file.pin)
    assert fetch(published, mirror=server.url + "/", progress=False)["status"] == "ok"


def run_config(**sections) -> Config:
    """The dataclass defaults (VGG loss on, as published) with ``sections`` changed."""
    return replace(Config(), **{"data": {"dataset": "landscapes"}, "loss": {"use_vgg_loss": False}, **sections})


def test_what_a_run_needs(tmp_path):
    hub = tmp_path / "hub"
    needed = needed_weights(run_config(), tmp_path, hub)
    assert [f.destination for f in needed["inception"].files] == [hub / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"]
    assert needed["vgg19"].files == () and needed["vgg19"].reason == "loss.use_vgg_loss is false"
    assert needed["segmenter"].files == () and "'trained' segmenter" in needed["segmenter"].reason
    ade = needed_weights(run_config(data={"dataset": "ade20k"}, loss={"use_vgg_loss": True}), tmp_path, hub)
    assert [f.filename for f in ade["segmenter"].files] == ["encoder_epoch_50.pth", "decoder_epoch_50.pth"]
    assert ade["segmenter"].files[0].destination == tmp_path / "data/weights/upernet101_ade20k/encoder_epoch_50.pth"
    assert ade["vgg19"].files[0].pin.sha256.startswith("dcbb9e9d")
    configured = needed_weights(run_config(evaluate={"fid_weights": "w/inception.pth"}), tmp_path, hub)
    assert configured["inception"].files[0].destination == tmp_path / "w/inception.pth"


def test_the_weights_stage_fetches_the_very_files_the_segmenter_loads(tmp_path):
    """One description of a pretrained file (:class:`gaugan.pinned.WeightFile`): the weights
    stage's files of a published segmenter are the ones its loader checks and reads."""
    from gaugan.segmenters.published import published_segmenter_for

    needed = needed_weights(run_config(data={"dataset": "ade20k"}), tmp_path, tmp_path / "hub")
    loaded = published_segmenter_for("ade20k").weight_files(tmp_path / "data/weights")
    assert needed["segmenter"].files == tuple(loaded.values()) and list(loaded) == ["encoder", "decoder"]
    assert {type(file) for group in needed.values() for file in group.files} == {WeightFile}


def test_stage_records_every_group_and_evaluation_reports_the_reason(server, tmp_path, monkeypatch):
    """The stage from a mirror: the published segmenter's files (no published checksum) arrive, a
    fake Inception file fails its checksum and is recorded as unavailable; evaluation says why."""
    from pipeline.evaluation import inception_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    server.files.update({"encoder_epoch_50.pth": state_dict_bytes(1.0), "decoder_epoch_50.pth": state_dict_bytes(2.0),
                         "pt_inception-2015-12-05-6726825d.pth": b"not inception"})
    cfg = run_config(data={"dataset": "ade20k"}, weights={"mirror": server.url})
    weights_stage.run(cfg, tmp_path, progress=False)
    records = {group: json.loads((tmp_path / "reports" / "weights" / f"{group}.json").read_text())
               for group in ("inception", "vgg19", "segmenter")}
    assert records["segmenter"]["status"] == "ok" and len(records["segmenter"]["files"]) == 2
    assert records["segmenter"]["files"][0]["checksum"].startswith("none published")
    assert (tmp_path / "data/weights/upernet101_ade20k/decoder_epoch_50.pth").read_bytes() == state_dict_bytes(2.0)
    assert records["vgg19"] == {"group": "vgg19", "needed": False, "status": "not needed",
                                "reason": "loss.use_vgg_loss is false", "files": []}
    assert records["inception"]["status"] == "unavailable" and "13 bytes, expected 95,628,359" in records["inception"]["reason"]
    assert records["inception"]["files"][0]["path"] == str(Path(torch.hub.get_dir()) / "checkpoints" /
                                                          "pt_inception-2015-12-05-6726825d.pth")
    lookup = inception_weights(cfg, tmp_path)
    assert not lookup.available and lookup.reason.startswith("the weights stage could not provide the Inception weights")
    assert "dvc repro --force --single-item weights" in lookup.reason


def test_fid_needs_no_setting_once_the_weights_stage_has_the_file(server, tmp_path, monkeypatch):
    """The stage puts the Inception file where evaluation looks by default (the torch hub cache).
    A small stand-in file plays the published one (its size and sha256 patched in)."""
    from gaugan.metrics import fid
    from pipeline.evaluation import inception_weights

    payload = b"inception stand-in" * 100
    monkeypatch.setattr(fid, "FID_WEIGHTS_PIN", Pin(len(payload), hashlib.sha256(payload).hexdigest()))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    server.files["pt_inception-2015-12-05-6726825d.pth"] = payload
    cfg = run_config(weights={"mirror": server.url})
    assert not inception_weights(cfg, tmp_path).available
    weights_stage.run(cfg, tmp_path, progress=False)
    lookup = inception_weights(cfg, tmp_path)  # evaluate.fid_weights is null: nothing configured
    assert lookup.available and lookup.path == tmp_path / "torch_home" / "hub" / "checkpoints" / \
        "pt_inception-2015-12-05-6726825d.pth"


# ---- nothing unverified is ever read (issue 20, items 4 and 9) ----


def compact_vgg19_file(path: Path) -> Path:
    """A file that loads as torchvision's VGG19 features (every shape right) in a few KB: each
    tensor is one zero expanded to its shape, so only one element per tensor is stored."""
    import torchvision

    with torch.device("meta"):
        features = torchvision.models.vgg19(weights=None).features
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"features.{key}": torch.zeros(()).expand(value.shape) for key, value in features.state_dict().items()},
               path)
    return path


def test_the_published_checksums_are_full_sha256_values():
    """Pinned in full (the file names carry only their first 8 hex digits), with the sizes."""
    from gaugan import losses
    from gaugan.metrics import fid

    for pin, name in ((losses.VGG19_PIN, losses.VGG19_FILE), (fid.FID_WEIGHTS_PIN, fid.FID_WEIGHTS_FILE)):
        assert re.fullmatch(r"[0-9a-f]{64}", pin.sha256) and pin.sha256[:8] == name.rsplit("-", 1)[1].split(".")[0]
    assert losses.VGG19_PIN.num_bytes == 574_673_361 and fid.FID_WEIGHTS_PIN.num_bytes == 95_628_359


def test_a_vgg19_file_that_fails_its_checksum_is_never_loaded(tmp_path, monkeypatch):
    """Item 4: the weights stage reports a tampered hub-cache vgg19-dcbb9e9d.pth as not the
    published file, and training refuses it (it used to load it without a word); a file named
    by loss.vgg_weights is the user's own choice, recorded as such and loaded."""
    from gaugan import losses

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    tampered = compact_vgg19_file(losses.default_vgg_weights_path())
    cfg = run_config(loss={"use_vgg_loss": True}, weights={"download": False})
    record = weights_stage.run(cfg, tmp_path, progress=False)["vgg19"]
    assert record["status"] == "unavailable" and "not the published file" in record["reason"]
    with pytest.raises(losses.VGGWeightsError) as refused:
        losses.load_vgg19_features(None)
    message = str(refused.value)
    assert message.startswith(f"{tampered}: not the published VGG19 weights (") and "\n" not in message
    assert "delete it and run the weights stage again" in message and losses.VGG19_URL in message
    assert "set loss.vgg_weights to a VGG19 file you trust" in message

    own = tmp_path / "mine" / "vgg19_features.pth"
    own.parent.mkdir()
    tampered.rename(own)
    cfg = run_config(loss={"use_vgg_loss": True, "vgg_weights": str(own)}, weights={"download": False})
    record = weights_stage.run(cfg, tmp_path, progress=False)["vgg19"]
    assert record["status"] == "ok" and "your own file (loss.vgg_weights)" in record["files"][0]["note"]
    assert len(losses.load_vgg19_features(own)) == 30


def test_a_file_matching_only_the_hash_prefix_in_its_name_is_refused(tmp_path, monkeypatch):
    """Item 9: the full sha256 is compared, not the 32 bits the file name carries."""
    from gaugan.metrics import fid

    payload = b"inception stand-in" * 100
    digest = hashlib.sha256(payload).hexdigest()
    other = digest[:-1] + ("0" if digest[-1] != "0" else "1")  # the same 8-digit prefix, another file
    monkeypatch.setattr(fid, "FID_WEIGHTS_PIN", Pin(len(payload), other))
    path = tmp_path / fid.FID_WEIGHTS_FILE
    path.write_bytes(payload)
    assert f"sha256 {digest} differs from the expected {other}" in fid.check_weights_file(path)
    assert not fid.find_inception_weights(path).available
    inception = needed_weights(run_config(evaluate={"fid_weights": str(path)}), tmp_path, tmp_path)["inception"]
    assert fetch(inception.files[0], download=False, progress=False)["status"] == "unavailable"


def test_inception_is_verified_then_read_weights_only(tmp_path, monkeypatch, write_crafted_checkpoint):
    """Item 9: pytorch-fid unpickles its file with weights_only=False; even a file whose
    checksum were forged must not run code: it is read weights-only, and refused in one line."""
    from gaugan.metrics import fid

    path, marker = tmp_path / fid.FID_WEIGHTS_FILE, tmp_path / "pwned"
    write_crafted_checkpoint(path, marker)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(fid, "FID_WEIGHTS_PIN", Pin(path.stat().st_size, digest))  # as if its checksum were forged
    with pytest.raises(fid.InceptionWeightsError) as refused:
        fid.inception_network(path)
    assert not marker.exists()
    message = str(refused.value)
    assert message.startswith(f"Inception weights for FID: {path}: refused: the file holds a disallowed Python object")
    assert "could run code" in message and "\n" not in message


def test_weights_come_over_https_only(server, tmp_path):
    """Item 9: a plain-http URL or mirror is refused in one line (only the loopback address,
    whose bytes never leave this machine, may be plain http), and so is a redirect to one."""
    file = WeightFile("a test network", "net-abcd.pth", "http://example.invalid/net-abcd.pth",
                      tmp_path / "net-abcd.pth")
    record = fetch(file, progress=False)
    assert record["status"] == "unavailable" and "\n" not in record["reason"]
    assert record["reason"].startswith("refused http://example.invalid/net-abcd.pth: weights are fetched over https")
    mirrored = fetch(served_file(server, tmp_path), mirror="http://mirror.invalid/models", progress=False)
    assert mirrored["status"] == "unavailable" and "refused http://mirror.invalid/models/" in mirrored["reason"]
    assert "weights.mirror" in mirrored["reason"]

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("Location", "http://example.invalid/net-abcd.pth")
            self.end_headers()

        def log_message(self, *args):
            pass

    with serving(Redirect) as redirecting:
        moved = WeightFile("a test network", "net-abcd.pth", f"{redirecting.url}/net-abcd.pth", tmp_path / "moved.pth")
        record = fetch(moved, progress=False)
    assert record["status"] == "unavailable" and "redirected to http://example.invalid/net-abcd.pth" in record["reason"]
    assert not (tmp_path / "moved.pth").exists()


def deeplab_config(server) -> Config:
    return run_config(data={"dataset": "coco"}, weights={"mirror": server.url})


def test_published_segmenter_files_are_pinned_at_first_fetch_and_checked_at_every_load(server, tmp_path):
    """Item 9: no checksum is published for them, so the size and sha256 of the first verified
    fetch are recorded beside the file, and any later change is refused by the stage and the loader."""
    from gaugan.segmenters.published import SegmenterWeightsError, ensure_weights, published_segmenter_for

    state = io.BytesIO()
    torch.save({"conv.weight": torch.ones(2, 2)}, state)
    name = "deeplabv2_resnet101_msc-cocostuff164k-100000.pth"
    server.files[name] = state.getvalue()
    record = weights_stage.run(deeplab_config(server), tmp_path, progress=False)["segmenter"]
    assert record["status"] == "ok"
    path = tmp_path / "data/weights/deeplabv2_resnet101_msc_cocostuff164k" / name
    pin = json.loads(path.with_name(name + ".pin.json").read_text())
    assert pin["bytes"] == len(state.getvalue()) and pin["sha256"] == hashlib.sha256(state.getvalue()).hexdigest()
    assert pin["source"] == f"{server.url}/{name}"
    checksum = record["files"][0]["checksum"]
    assert checksum.startswith("none published: size and sha256 pinned at the first verified fetch")
    entry = published_segmenter_for("coco")
    assert ensure_weights(entry, tmp_path / "data/weights") == {name: path}

    tampered = io.BytesIO()
    torch.save({"conv.weight": torch.zeros(2, 2)}, tampered)
    path.write_bytes(tampered.getvalue())
    with pytest.raises(SegmenterWeightsError) as refused:
        ensure_weights(entry, tmp_path / "data/weights")
    message = str(refused.value)
    assert message.startswith(f"{path}: changed since its first verified fetch (sha256 ") and "\n" not in message
    assert "delete it and run the weights stage again" in message
    again = weights_stage.run(deeplab_config(server), tmp_path, progress=False)["segmenter"]
    assert again["status"] == "unavailable" and "changed since its first verified fetch" in again["reason"]
    assert [request for request in server.requests if request[0] == name] == [(name, None)]  # fetched once


def test_a_segmenter_file_placed_by_hand_is_pinned_by_the_stage_before_any_load(tmp_path):
    """DRN-D-105 has no URL: the user places it; loaders refuse it until the weights stage has
    checked that it reads as a state dict and pinned it."""
    from gaugan.segmenters.published import SegmenterWeightsError, ensure_weights, published_segmenter_for

    entry = published_segmenter_for("cityscapes")
    path = tmp_path / "data/weights/drn_d_105_cityscapes/drn_d_105_cityscapes.pth"
    path.parent.mkdir(parents=True)
    torch.save({"conv.weight": torch.ones(2, 2)}, path)
    with pytest.raises(SegmenterWeightsError, match=r"drn_d_105_cityscapes.pth: not verified yet .*run the weights "
                                                    r"stage \(dvc repro weights\)"):
        ensure_weights(entry, tmp_path / "data/weights")
    cfg = run_config(data={"dataset": "cityscapes"}, weights={"download": False})
    record = weights_stage.run(cfg, tmp_path, progress=False)["segmenter"]
    pin = json.loads(path.with_name(path.name + ".pin.json").read_text())
    assert record["status"] == "ok" and pin["source"] == FOUND_IN_PLACE
    assert ensure_weights(entry, tmp_path / "data/weights") == {path.name: path}
    path.with_name(path.name + ".pin.json").unlink()
    path.write_text("<html>404</html>")  # a web page saved under the file's name is never pinned
    record = weights_stage.run(cfg, tmp_path, progress=False)["segmenter"]
    assert record["status"] == "unavailable" and "a text file, beginning '<html>404</html>'" in record["reason"]
    assert not path.with_name(path.name + ".pin.json").exists()
