"""The weights stage against a local HTTP server on 127.0.0.1 (nothing else is reached): a good
file, a bad checksum, an interrupted transfer resumed, a 404, files already in place, downloads
switched off; the stage's records for a configured run and the reason evaluation reports."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
from pathlib import Path

import pytest
import torch

from gaugan.config import Config, replace
from gaugan.weights import WeightFile, fetch, needed_weights
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


def served_file(server, tmp_path: Path, payload: bytes = PAYLOAD, name: str = "net-abcd.pth",
                prefix: str | None = None) -> WeightFile:
    server.files[name] = payload
    prefix = prefix or hashlib.sha256(payload).hexdigest()[:8]
    return WeightFile("a test network", name, f"{server.url}/{name}", tmp_path / "cache" / name, len(payload), prefix)


def test_good_file_is_fetched_verified_and_recorded(server, tmp_path):
    file = served_file(server, tmp_path)
    record = fetch(file, progress=False)
    assert record["status"] == "ok" and file.destination.read_bytes() == PAYLOAD
    assert record["sha256"] == hashlib.sha256(PAYLOAD).hexdigest() and record["bytes"] == len(PAYLOAD)
    assert record["source"] == file.url and record["path"] == str(file.destination)
    assert "published in the file name" in record["checksum"]
    assert sorted(p.name for p in file.destination.parent.iterdir()) == [file.filename]  # no staging leftovers
    again = fetch(file, progress=False)  # present and valid: verified, not fetched again
    assert again == record and len(server.requests) == 1


def test_bad_checksum_is_unavailable_and_never_put_in_place(server, tmp_path):
    file = served_file(server, tmp_path, prefix="00000000")
    record = fetch(file, progress=False)
    assert record["status"] == "unavailable" and "not the published one" in record["reason"]
    assert "does not start with 00000000" in record["reason"]
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
                           file.num_bytes, file.sha256_prefix)
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
    assert ade["vgg19"].files[0].sha256_prefix == "dcbb9e9d"
    configured = needed_weights(run_config(evaluate={"fid_weights": "w/inception.pth"}), tmp_path, hub)
    assert configured["inception"].files[0].destination == tmp_path / "w/inception.pth"


def test_stage_records_every_group_and_evaluation_reports_the_reason(server, tmp_path, monkeypatch):
    """The stage from a mirror: the published segmenter's files (no published checksum) arrive, a
    fake Inception file fails its checksum and is recorded as unavailable; evaluation says why."""
    from pipeline.evaluation import inception_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    server.files.update({"encoder_epoch_50.pth": b"encoder", "decoder_epoch_50.pth": b"decoder",
                         "pt_inception-2015-12-05-6726825d.pth": b"not inception"})
    cfg = run_config(data={"dataset": "ade20k"}, weights={"mirror": server.url})
    weights_stage.run(cfg, tmp_path, progress=False)
    records = {group: json.loads((tmp_path / "reports" / "weights" / f"{group}.json").read_text())
               for group in ("inception", "vgg19", "segmenter")}
    assert records["segmenter"]["status"] == "ok" and len(records["segmenter"]["files"]) == 2
    assert records["segmenter"]["files"][0]["checksum"].startswith("none published")
    assert (tmp_path / "data/weights/upernet101_ade20k/decoder_epoch_50.pth").read_bytes() == b"decoder"
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
    A small stand-in file plays the published one (its size and hash prefix patched in)."""
    from gaugan import weights
    from gaugan.metrics import fid
    from pipeline.evaluation import inception_weights

    payload = b"inception stand-in" * 100
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    for module in (fid, weights):
        monkeypatch.setattr(module, "FID_WEIGHTS_BYTES", len(payload))
        monkeypatch.setattr(module, "FID_WEIGHTS_SHA256_PREFIX", prefix)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    server.files["pt_inception-2015-12-05-6726825d.pth"] = payload
    cfg = run_config(weights={"mirror": server.url})
    assert not inception_weights(cfg, tmp_path).available
    weights_stage.run(cfg, tmp_path, progress=False)
    lookup = inception_weights(cfg, tmp_path)  # evaluate.fid_weights is null: nothing configured
    assert lookup.available and lookup.path == tmp_path / "torch_home" / "hub" / "checkpoints" / \
        "pt_inception-2015-12-05-6726825d.pth"
