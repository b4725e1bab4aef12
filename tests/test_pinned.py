"""gaugan.pinned: a pretrained file's size and full SHA-256 against its pin, the hash cache
keyed by (path, size, mtime, ctime, inode, device), and the pins recorded beside files that
have no published checksum."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from gaugan import pinned
from gaugan.pinned import Pin, file_sha256, pin_problem, read_pin, write_pin


@pytest.fixture
def no_racy_window(monkeypatch):
    """Files written by the test count as settled at once (the window guards against writes
    in the same clock tick as the hashing; tests below wait for the ctime to move instead)."""
    monkeypatch.setattr(pinned, "RACY_WINDOW_NS", -10**18)


def test_a_hash_is_computed_once_and_reused_while_the_file_is_unchanged(tmp_path, monkeypatch, no_racy_window):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"a" * 1000)
    expected = hashlib.sha256(b"a" * 1000).hexdigest()
    assert file_sha256(path) == expected
    entry = json.loads(pinned.hash_cache_path().read_text())[str(path.resolve())]
    assert entry["sha256"] == expected and entry["stat"][0] == 1000
    monkeypatch.setattr(pinned, "file_digest", lambda path: pytest.fail("hashed again"))
    assert file_sha256(path) == expected and pin_problem(path, Pin(1000, expected)) == ""


def test_other_bytes_under_the_same_size_and_mtime_are_hashed_again(tmp_path, no_racy_window):
    """Rewriting a file and setting its mtime back (touch -d) cannot reuse the cached hash:
    the ctime changes with every write, and no process can set it back."""
    path = tmp_path / "weights.pth"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path)
    status = path.stat()
    deadline = time.monotonic() + 10
    while path.stat().st_ctime_ns == status.st_ctime_ns:  # the next clock tick (coarse timestamps)
        assert time.monotonic() < deadline
        path.write_bytes(b"b" * 1000)
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert path.stat().st_mtime_ns == status.st_mtime_ns and path.stat().st_size == status.st_size
    assert file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest() != first
    assert "differs from the expected" in pin_problem(path, Pin(1000, first))


def test_a_file_changed_just_before_it_is_hashed_is_not_cached(tmp_path, monkeypatch):
    """A write in the same clock tick as the hashing could keep size, mtime and ctime: such a
    fresh file is hashed again next time rather than trusted from the cache."""
    path = tmp_path / "weights.pth"
    path.write_bytes(b"a" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert not pinned.hash_cache_path().exists()


def test_an_unusable_cache_costs_only_the_hashing(tmp_path, monkeypatch, no_racy_window):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"a" * 10)
    monkeypatch.setattr(pinned, "hash_cache_path", lambda: tmp_path / "not_a_folder" / "cache.json")
    (tmp_path / "not_a_folder").write_text("a file where the folder should be")
    assert file_sha256(path) == hashlib.sha256(b"a" * 10).hexdigest()
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    monkeypatch.setattr(pinned, "hash_cache_path", lambda: garbage)
    assert file_sha256(path) == hashlib.sha256(b"a" * 10).hexdigest()


def test_the_size_is_compared_before_any_hashing(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"a" * 10)
    monkeypatch.setattr(pinned, "file_digest", lambda path: pytest.fail("hashed"))
    assert pin_problem(path, Pin(574_673_361, "0" * 64)) == "10 bytes, expected 574,673,361"


def test_pins_recorded_beside_a_file(tmp_path):
    path = tmp_path / "segmenter.pth"
    path.write_bytes(b"weights")
    assert read_pin(path) is None
    pin = write_pin(path, "https://example.org/segmenter.pth")
    assert pin == Pin(7, hashlib.sha256(b"weights").hexdigest()) == read_pin(path)
    record = json.loads((tmp_path / "segmenter.pth.pin.json").read_text())
    assert record["source"] == "https://example.org/segmenter.pth" and record["pinned_at"]
    (tmp_path / "segmenter.pth.pin.json").write_text("{")
    with pytest.raises(pinned.PinFileError, match=r"segmenter.pth.pin.json: unreadable pin"):
        read_pin(path)
