"""Downloads against archives the tests build and serve from 127.0.0.1 (Range requests,
resume, md5 mismatch, offline), COCO instance maps from annotations, the download stage
for every kind of dataset (generated, downloaded, user-supplied, custom)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import socket
import zipfile

import numpy as np
import pytest
from PIL import Image

from gaugan.data.coco_instances import decode_uncompressed_rle, paint_instances
from gaugan.data.download import DownloadError, download_dataset, download_file, resources_with_base_url
from gaugan.data.io import DataError
from gaugan.data.semantic import instance_edges
from stages import download as download_stage
from tests.http_support import serving
from tests.support import data_config, label_map, make_custom


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from ``server.files`` (name -> bytes), honouring ``Range: bytes=N-``."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        name = self.path.lstrip("/")
        body = self.server.files.get(name)
        self.server.requests.append((name, self.headers.get("Range")))
        if body is None:
            self.send_error(404)
            return
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and self.server.honour_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A local HTTP server in a thread, stopped (and its socket closed) after the test."""
    with serving(_RangeHandler) as httpd:
        httpd.timeout = 5
        httpd.files, httpd.requests, httpd.honour_range = {}, [], True
        yield httpd


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- download_file


def test_download_verifies_md5(server, tmp_path):
    payload = bytes(range(256)) * 1000
    server.files["a.bin"] = payload
    out = download_file(f"{server.url}/a.bin", tmp_path / "a.bin", md5(payload), progress=False)
    assert out.read_bytes() == payload and not (tmp_path / "a.bin.partial").exists()


def test_resume_from_partial_file(server, tmp_path):
    payload = bytes(range(256)) * 1000
    server.files["a.bin"] = payload
    (tmp_path / "a.bin.partial").write_bytes(payload[:100_000])
    download_file(f"{server.url}/a.bin", tmp_path / "a.bin", md5(payload), progress=False)
    assert (tmp_path / "a.bin").read_bytes() == payload
    assert server.requests == [("a.bin", "bytes=100000-")]


def test_complete_partial_file_is_verified_not_refetched(server, tmp_path):
    payload = b"y" * 3000
    server.files["a.bin"] = payload
    (tmp_path / "a.bin.partial").write_bytes(payload)  # interrupted after the last byte
    download_file(f"{server.url}/a.bin", tmp_path / "a.bin", md5(payload), progress=False)
    assert (tmp_path / "a.bin").read_bytes() == payload  # the server answered 416: nothing left to fetch


def test_server_ignoring_range_restarts(server, tmp_path):
    payload = b"x" * 5000
    server.files["a.bin"], server.honour_range = payload, False
    (tmp_path / "a.bin.partial").write_bytes(b"garbage")
    download_file(f"{server.url}/a.bin", tmp_path / "a.bin", md5(payload), progress=False)
    assert (tmp_path / "a.bin").read_bytes() == payload


def test_md5_mismatch_moves_file_aside(server, tmp_path):
    server.files["a.bin"] = b"the wrong content"
    with pytest.raises(DownloadError, match=r"md5 of the downloaded file is [0-9a-f]{32}, expected 0{32}.*moved aside"):
        download_file(f"{server.url}/a.bin", tmp_path / "a.bin", "0" * 32, progress=False)
    assert not (tmp_path / "a.bin").exists()
    assert (tmp_path / "a.bin.md5-mismatch").read_bytes() == b"the wrong content"


def test_offline_is_a_clear_error_and_keeps_partial(tmp_path):
    (tmp_path / "a.bin.partial").write_bytes(b"12345")
    url = f"http://127.0.0.1:{free_port()}/a.bin"
    with pytest.raises(DownloadError, match=r"cannot connect.*5 bytes kept in .*a\.bin\.partial.*place it at"):
        download_file(url, tmp_path / "a.bin", None, progress=False, timeout=5)
    assert (tmp_path / "a.bin.partial").read_bytes() == b"12345" and not (tmp_path / "a.bin").exists()


def test_http_404_named(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server.url}/missing.zip", tmp_path / "missing.zip", None, progress=False)


# ---------------------------------------------------------------- datasets


def test_facades_download_extract_and_marker(server, tmp_path):
    files = {}
    for i in (1, 2, 3):
        files[f"base/cmp_b{i:04d}.png"] = png_bytes(label_map(list(range(1, 13)), seed=i).astype(np.uint8))
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(buffer, format="JPEG")
        files[f"base/cmp_b{i:04d}.jpg"] = buffer.getvalue()
    archive = zip_bytes(files)
    server.files["CMP_facade_DB_base.zip"] = archive
    resources = resources_with_base_url("facades", server.url, {"CMP_facade_DB_base.zip": md5(archive)})
    cfg = data_config("facades")
    marker = download_stage.run(cfg, tmp_path, resources=resources, progress=False)
    folder = tmp_path / "data" / "raw" / "facades"
    assert (folder / "base" / "cmp_b0002.png").is_file()
    assert marker["files"][0]["md5_verified"] and marker["files"][0]["extracted"] == ["base"]
    assert json.loads((folder / "download.json").read_text()) == marker
    # a second run neither downloads nor extracts again
    server.requests.clear()
    download_stage.run(cfg, tmp_path, resources=resources, progress=False)
    assert server.requests == []


def test_failed_checksum_reports_nothing_downloaded(server, tmp_path):
    server.files["ADEChallengeData2016.zip"] = zip_bytes({"ADEChallengeData2016/x.txt": b"x"})
    resources = resources_with_base_url("ade20k", server.url)  # the real md5: cannot match
    with pytest.raises(DownloadError, match="7328b3957e407ddae1d3cbf487f149ef"):
        download_stage.run(data_config("ade20k"), tmp_path, resources=resources, progress=False)
    folder = tmp_path / "data" / "raw" / "ade20k"
    assert not (folder / "download.json").exists() and not (folder / "ADEChallengeData2016").exists()
    assert (folder / "archives" / "ADEChallengeData2016.zip.md5-mismatch").is_file()


def test_real_table_untouched_by_test_tables():
    from gaugan.data.download import RESOURCES

    assert RESOURCES["ade20k"][0].url.startswith("http://data.csail.mit.edu/")
    assert RESOURCES["coco"][0].md5 == "cced6f7f71b7629ddf16f17bbcfab6b2"


def test_corrupt_archive_is_a_clear_error(server, tmp_path):
    server.files["CMP_facade_DB_base.zip"] = b"not a zip"
    resources = resources_with_base_url("facades", server.url)
    with pytest.raises(DownloadError, match="not a valid zip archive"):
        download_dataset("facades", tmp_path / "facades", resources, progress=False)
    assert not (tmp_path / "facades" / "download.json").exists()


def _coco_archives() -> dict[str, bytes]:
    label = np.full((20, 30), 120, np.uint8)  # some stuff class
    label[0:5] = 255  # unlabeled
    annotations = {
        "images": [{"id": 9, "file_name": "000000000009.jpg", "height": 20, "width": 30}],
        "annotations": [
            {"id": 1, "image_id": 9, "iscrowd": 0, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
            {"id": 2, "image_id": 9, "iscrowd": 0, "segmentation": [[8, 8, 18, 8, 18, 18, 8, 18]]},
            # a crowd region as uncompressed RLE (column-major runs): columns 25..29 fully set
            {"id": 3, "image_id": 9, "iscrowd": 1, "segmentation": {"size": [20, 30], "counts": [25 * 20, 5 * 20]}},
        ],
    }
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    val_annotations = dict(annotations)
    return {
        "train2017.zip": zip_bytes({"train2017/000000000009.jpg": jpeg}),
        "val2017.zip": zip_bytes({"val2017/000000000009.jpg": jpeg}),
        "stuffthingmaps_trainval2017.zip": zip_bytes({"train2017/000000000009.png": png_bytes(label),
                                                      "val2017/000000000009.png": png_bytes(label)}),
        "annotations_trainval2017.zip": zip_bytes({
            "annotations/instances_train2017.json": json.dumps(annotations).encode(),
            "annotations/instances_val2017.json": json.dumps(val_annotations).encode(),
        }),
    }


def test_coco_download_builds_instance_maps_and_checks(server, tmp_path):
    archives = _coco_archives()
    server.files.update(archives)
    resources = resources_with_base_url("coco", server.url, {name: md5(data) for name, data in archives.items()})
    cfg = data_config("coco")
    marker = download_stage.run(cfg, tmp_path, resources=resources, progress=False)
    assert marker["built"] == {"train": {"images": 1, "annotations": 3}, "val": {"images": 1, "annotations": 3}}
    folder = tmp_path / "data" / "raw" / "coco"
    instance = np.asarray(Image.open(folder / "instances2017" / "train2017" / "000000000009.png"))
    assert instance.dtype == np.uint16 or instance.max() > 255
    assert instance[5, 5] == 256 and instance[15, 15] == 257 and instance[10, 10] == 257  # painted in order
    assert (instance[:, 25:] == 258).all() and instance[19, 0] == 120 and instance[1, 20] == 255
    # the raw layout is read by the same check as the SPADE layout
    from gaugan.data.check import check_dataset

    report = check_dataset(cfg.data, folder)
    assert report.ok, report.problems
    assert report.instance_maps == {"train": 1, "val": 1}


def test_paint_instances_edges_and_rle():
    mask = decode_uncompressed_rle([3, 2, 5, 2], 4, 3)  # 12 pixels, column-major
    expected = np.zeros(12, bool)
    expected[3:5] = expected[10:12] = True
    np.testing.assert_array_equal(mask, expected.reshape((4, 3), order="F"))
    with pytest.raises(DataError, match="cover 11 pixels"):
        decode_uncompressed_rle([3, 8], 4, 3)
    label = np.zeros((10, 10), np.uint8)
    painted = paint_instances(label, [{"segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]}])
    edges = instance_edges(__import__("torch").from_numpy(painted.astype(np.int64))[None])[0, 0]
    assert edges.sum() > 0 and edges[8, 8] == 0
    with pytest.raises(DataError, match="compressed"):
        paint_instances(label, [{"segmentation": {"size": [10, 10], "counts": "abc"}}])


def test_cityscapes_says_what_is_missing(tmp_path):
    with pytest.raises(DownloadError) as info:
        download_stage.run(data_config("cityscapes"), tmp_path, progress=False)
    message = str(info.value)
    assert "gtFine_trainvaltest.zip" in message and "leftImg8bit_trainvaltest.zip" in message
    assert str(tmp_path / "data" / "raw" / "cityscapes") in message and "cityscapes-dataset.com" in message
    folder = tmp_path / "data" / "raw" / "cityscapes"
    folder.mkdir(parents=True)
    (folder / "gtFine_trainvaltest.zip").write_bytes(zip_bytes({"gtFine/train/x.txt": b""}))
    with pytest.raises(DownloadError) as info:
        download_stage.run(data_config("cityscapes"), tmp_path, progress=False)
    assert "leftImg8bit_trainvaltest.zip" in str(info.value) and "Missing: " + str(folder / "gtFine") not in str(info.value)
    (folder / "leftImg8bit_trainvaltest.zip").write_bytes(zip_bytes({"leftImg8bit/train/x.txt": b""}))
    marker = download_stage.run(data_config("cityscapes"), tmp_path, progress=False)
    assert (folder / "gtFine").is_dir() and (folder / "leftImg8bit").is_dir() and len(marker["files"]) == 2


def test_custom_stage_says_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="dataset folder for 'custom' not found"):
        download_stage.run(data_config("custom"), tmp_path, progress=False)
    folder = tmp_path / "data" / "raw" / "custom"
    make_custom(folder)
    (folder / "val" / "labels").rename(folder / "val" / "masks")
    with pytest.raises(DataError, match=r"val/labels: folder missing"):
        download_stage.run(data_config("custom"), tmp_path, progress=False)
    (folder / "val" / "masks").rename(folder / "val" / "labels")
    marker = download_stage.run(data_config("custom"), tmp_path, progress=False)
    assert marker["pairs"] == {"train": 3, "val": 2}


def test_custom_stage_never_writes_into_the_dataset_folder(tmp_path):
    """A custom dataset may be a read-only shared mount: the record goes to data/download.json."""
    folder = make_custom(tmp_path / "data" / "raw" / "custom")
    before = sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))
    marker = download_stage.run(data_config("custom"), tmp_path, progress=False)
    assert sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*")) == before
    assert json.loads((tmp_path / "data" / "download.json").read_text()) == marker


def test_landscapes_stage_generates_deterministically(tmp_path):
    cfg = data_config("landscapes", builtin={"num_train": 4, "num_val": 2, "size": 32, "seed": 5})
    marker = download_stage.run(cfg, tmp_path, progress=False)
    folder = tmp_path / "data" / "raw" / "landscapes"
    assert marker["generated"]["counts"] == {"train": 4, "val": 2}
    first = {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.png"))}
    assert len(first) == 18
    download_stage.run(cfg, tmp_path, progress=False)
    again = {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.png"))}
    assert first == again
    assert (tmp_path / "data" / "download.json").read_text() == json.dumps(marker, indent=2) + "\n"
    assert not (folder / "download.json").exists()


def test_zip_member_beside_the_extraction_folder_is_refused(tmp_path):
    """A member resolving to a sibling whose name merely starts like the folder ('.extract-a.zipx/...')."""
    from gaugan.data.download import extract

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("data/ok.txt", "fine")
        bundle.writestr("../.extract-a.zipx/evil.txt", "outside")
    with pytest.raises(DownloadError, match=r"unsafe path '\.\./\.extract-a\.zipx/evil\.txt'"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / ".extract-a.zipx").exists()


# ---------------------------------------------------------------- extraction never deletes the user's files


def _tree(folder) -> dict:
    """Every file under ``folder`` with its bytes (the user's files, to compare byte for byte)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_facades_entry_named_like_the_archives_folder_is_refused(tmp_path):
    """A hand-placed Facades zip with an ``archives/readme.txt`` entry used to replace the user's
    archives/ folder (the zip included) with that readme."""
    folder = tmp_path / "data" / "raw" / "facades"
    archive = folder / "archives" / "CMP_facade_DB_base.zip"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(zip_bytes({"base/cmp_b0001.png": png_bytes(label_map([1, 2]).astype(np.uint8)),
                                   "archives/readme.txt": b"from the archive"}))
    (folder / "archives" / "notes.txt").write_text("the user's notes")
    before = _tree(folder)
    with pytest.raises(DownloadError) as info:
        download_stage.run(data_config("facades"), tmp_path, progress=False)  # no checksum: the hand-placed zip is used
    assert str(info.value) == (
        f"{archive}: the entry 'archives/readme.txt' would overwrite {folder / 'archives'}, a folder that this "
        f"project did not extract; refusing to extract the archive. Move {folder / 'archives'} elsewhere (or "
        f"extract the archive yourself)")
    assert _tree(folder) == before  # nothing extracted, nothing removed
    assert sorted(p.name for p in folder.iterdir()) == ["archives"]


def test_a_cityscapes_entry_named_like_the_users_second_archive_is_refused(tmp_path):
    """A gtFine zip holding an entry named ``leftImg8bit_trainvaltest.zip`` used to destroy the user's
    real second archive (11 GB, behind a login)."""
    folder = tmp_path / "data" / "raw" / "cityscapes"
    folder.mkdir(parents=True)
    (folder / "gtFine_trainvaltest.zip").write_bytes(zip_bytes({"gtFine/train/x.txt": b"",
                                                                "leftImg8bit_trainvaltest.zip": b"not the photos"}))
    (folder / "leftImg8bit_trainvaltest.zip").write_bytes(zip_bytes({"leftImg8bit/train/x.txt": b"photos"}))
    before = _tree(folder)
    with pytest.raises(DownloadError, match=(
            r"gtFine_trainvaltest.zip: the entry 'leftImg8bit_trainvaltest.zip' would overwrite "
            r".*cityscapes/leftImg8bit_trainvaltest.zip, a file that this project did not extract")):
        download_stage.run(data_config("cityscapes"), tmp_path, progress=False)
    assert _tree(folder) == before
    assert not (folder / "gtFine").exists() and not (tmp_path / "data" / "download.json").exists()


def test_extraction_replaces_only_what_it_extracted_before(tmp_path):
    from gaugan.data.download import extract

    out = tmp_path / "out"
    first = tmp_path / "first.zip"
    first.write_bytes(zip_bytes({"base/a.txt": b"1", "README": b"first readme"}))
    second = tmp_path / "second.zip"
    second.write_bytes(zip_bytes({"other/b.txt": b"2", "README": b"second readme"}))
    assert extract(first, out) == ["README", "base"]
    assert extract(second, out) == ["README", "other"]  # the first archive's README is ours: replaced
    first.write_bytes(zip_bytes({"base/c.txt": b"3", "README": b"first readme"}))
    extract(first, out)  # a changed archive replaces its own earlier folder
    assert sorted(p.name for p in (out / "base").iterdir() if not p.name.startswith(".")) == ["c.txt"]
    assert (out / "README").read_bytes() == b"first readme" and (out / "other" / "b.txt").read_bytes() == b"2"
    # the user's own folder, file or link at an entry's name is never replaced
    (out / "README").write_text("edited by the user")
    with pytest.raises(DownloadError, match=r"the entry 'README' would overwrite .*out/README, a file that this "
                                            r"project did not extract"):
        extract(second, out)
    (out / "README").unlink()
    (out / "other").rename(tmp_path / "moved")
    (out / "other").symlink_to(tmp_path / "moved")
    with pytest.raises(DownloadError, match=r"the entry 'other/b.txt' would overwrite .*out/other, a link"):
        extract(second, out)
    assert (tmp_path / "moved" / "b.txt").read_bytes() == b"2" and (out / "other").is_symlink()
    assert not any(p.name.startswith(".extract-") for p in out.iterdir())


def test_coco_instance_maps_never_replace_the_users_folder(server, tmp_path):
    archives = _coco_archives()
    server.files.update(archives)
    resources = resources_with_base_url("coco", server.url, {name: md5(data) for name, data in archives.items()})
    mine = tmp_path / "data" / "raw" / "coco" / "instances2017" / "val2017"
    mine.mkdir(parents=True)
    (mine / "000000000009.png").write_bytes(b"the user's own instance map")
    with pytest.raises(DataError, match=r"val2017: data.root names an existing folder that this project did not "
                                        r"write \(it has no .gaugan-instances.json"):
        download_stage.run(data_config("coco"), tmp_path, resources=resources, progress=False)
    assert (mine / "000000000009.png").read_bytes() == b"the user's own instance map"
    (mine / "000000000009.png").unlink()  # an empty folder, and then the maps built before, are replaced
    download_stage.run(data_config("coco"), tmp_path, resources=resources, progress=False)
    (tmp_path / "data" / "raw" / "coco" / "download.json").unlink()
    download_stage.run(data_config("coco"), tmp_path, resources=resources, progress=False)
    assert (mine / "000000000009.png").is_file()
