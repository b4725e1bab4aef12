"""Pretrained files are read only after their size and SHA-256 match a pin.

Evaluation and training use networks trained by others (docs/SPADE.md section 4): a file
that was altered on the way or on disk would change every number without a word, and
unpickling one could run code. So every reader checks the file against a :class:`Pin`
(size and full SHA-256) before it reads a byte of it:

- VGG19 and pytorch-fid's Inception: the publisher's file name carries the first 8 hex
  digits of its SHA-256 (torch hub's convention); the full value and the size are pinned
  in the code next to the URL (:data:`gaugan.losses.VGG19_PIN`,
  :data:`gaugan.metrics.fid.FID_WEIGHTS_PIN`).
- The published segmenters have no published checksum: the size and SHA-256 are recorded
  in ``<file>.pin.json`` beside the file when the weights stage first fetches it (or first
  finds it, for a file placed by hand) and has checked that it reads as a state dict of
  tensors; every later load compares with that record (:func:`write_pin`,
  :func:`read_pin`).

Hashing is the cost: 548 MiB of VGG19 take seconds on a loaded CPU, at every training
start. :func:`file_sha256` therefore caches each file's hash in
``<torch hub dir>/gaugan-sha256.json`` (``$TORCH_HOME/hub``, the per-user cache torch keeps
the published files in), keyed by the file's resolved path, size, modification time,
status-change time (ctime), inode and device. Any rewrite, replacement or rename onto the
path changes the ctime, which no process can set back (``touch`` sets mtime only), so a
cached hash is never used for other bytes. As git does with its index, a file changed
within :data:`RACY_WINDOW_NS` of the hashing is not cached (timestamps are coarse: a second
write in the same clock tick could keep the same ctime); it is hashed again next time. A
cache that cannot be read or written only costs the hashing.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from gaugan.data.io import atomic_write_json, file_digest

HASH_CACHE_FILE = "gaugan-sha256.json"
RACY_WINDOW_NS = 2_000_000_000  # files changed this recently before hashing are not cached
PIN_SUFFIX = ".pin.json"


@dataclass(frozen=True)
class Pin:
    """What a file must be: its size in bytes and its full SHA-256 (64 hex digits)."""

    num_bytes: int
    sha256: str

    def describe(self) -> str:
        return f"{self.num_bytes:,} bytes, sha256 {self.sha256}"


@dataclass(frozen=True)
class WeightFile:
    """A pretrained file a run reads: what it is for, where it comes from, where it lives and
    what vouches for it (fetched and pinned by :mod:`gaugan.weights`; the published segmenters
    list theirs with :meth:`gaugan.segmenters.published.PublishedSegmenter.weight_files`)."""

    what: str  # what it is for, in words
    filename: str  # the publisher's file name (a mirror serves it under this name)
    url: str | None  # None: no public URL, the user supplies it
    destination: Path
    pin: Pin | None = None  # the published size and SHA-256; None: pinned at the first verified fetch
    first_fetch_check: Callable[[Path], object] | None = None  # raises a UserError when the file is unusable
    own_file_setting: str | None = None  # the setting naming ``destination``: another file there is the user's choice
    where_to_get: str = ""  # for files without a URL

    @property
    def checksum(self) -> str:
        if self.pin is not None:
            return f"published: {self.pin.describe()}"
        return (f"none published: size and sha256 pinned at the first verified fetch "
                f"({pin_path(self.destination).name})")


def hash_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / HASH_CACHE_FILE


def _stat_key(status: os.stat_result) -> list[int]:
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino, status.st_dev]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of ``path``, from the cache when the file is unchanged since it was hashed."""
    path = Path(path).resolve()
    key = _stat_key(path.stat())
    cache_path = hash_cache_path()
    entries = _read_cache(cache_path)
    entry = entries.get(str(path))
    if isinstance(entry, dict) and entry.get("stat") == key and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    started_ns = time.time_ns()
    digest = file_digest(path)
    settled = key[2] < started_ns - RACY_WINDOW_NS  # ctime well before the read: a later change shows
    if settled and _stat_key(path.stat()) == key:
        entries = {name: value for name, value in entries.items() if Path(name).is_file()}
        entries[str(path)] = {"stat": key, "sha256": digest}
        with contextlib.suppress(OSError):  # a read-only cache folder: the next reader hashes again
            atomic_write_json(cache_path, entries)
    return digest


def pin_problem(path: str | os.PathLike, pin: Pin) -> str:
    """'' when ``path`` has exactly the pinned size and SHA-256, else what differs (one phrase)."""
    size = Path(path).stat().st_size
    if size != pin.num_bytes:  # no hashing needed to tell
        return f"{size:,} bytes, expected {pin.num_bytes:,}"
    digest = file_sha256(path)
    if digest != pin.sha256:
        return f"sha256 {digest} differs from the expected {pin.sha256}"
    return ""


def pin_path(path: str | os.PathLike) -> Path:
    """Where the pin of a file without a published checksum lives: ``<file>.pin.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + PIN_SUFFIX)


class PinFileError(ValueError):
    """A ``.pin.json`` that cannot be read; its message names the file."""


def read_pin(path: str | os.PathLike) -> Pin | None:
    """The pin recorded for ``path``, or None when none was recorded yet."""
    record_path = pin_path(path)
    if not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
        return Pin(int(record["bytes"]), str(record["sha256"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PinFileError(f"{record_path}: unreadable pin ({type(err).__name__}: {err})") from err


def write_pin(path: str | os.PathLike, source: str) -> Pin:
    """Record the size and SHA-256 of ``path`` as it is now, with where it came from."""
    pin = Pin(Path(path).stat().st_size, file_sha256(path))
    atomic_write_json(pin_path(path), {"file": Path(path).name, "bytes": pin.num_bytes, "sha256": pin.sha256,
                                       "source": source,
                                       "pinned_at": datetime.now(UTC).isoformat(timespec="seconds")})
    return pin
