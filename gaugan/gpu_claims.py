"""GPU claims: which GPUs of this machine one experiment uses, held as OS file locks.

Experiments that run side by side on one node (``gaugan sweep``, several DVC queue workers)
would all compute on ``cuda:0``: ``train.device: auto`` picks the first visible GPU. Instead,
each computing stage first claims the GPUs it needs (``train.gpus`` for training, one for the
others) among those visible to it and not claimed by another experiment, and runs with
``CUDA_VISIBLE_DEVICES`` set to them (pipeline/launch.py).

A claim is an exclusive lock on one file per GPU in a folder of the node
(``GAUGAN_GPU_CLAIMS_DIR``, by default ``/tmp/gaugan-gpu-claims``): ``flock`` on POSIX,
``msvcrt.locking`` on Windows. The kernel drops a lock when the process holding it ends,
however it ends (``kill -9`` included), so no claim outlives its process and nothing has to
be cleaned up. The folder must be local to the node: on a network file system the locks of
different nodes would exclude each other.

A claim of k GPUs is all or nothing: it takes k free GPUs at once or holds none and tries
again, so two claims never each hold a part of what the other waits for (no deadlock).

No torch here: the caller passes the GPUs it sees (``torch.cuda.device_count()``, named
through ``CUDA_VISIBLE_DEVICES`` by :func:`visible_gpus`), so any count can be tested on a
CPU.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gaugan.errors import UserError

CLAIMS_DIR_VARIABLE = "GAUGAN_GPU_CLAIMS_DIR"
# Set by pipeline/launch.py for the command it starts: the GPUs claimed for it ("" for none).
CLAIMED_VARIABLE = "GAUGAN_CLAIMED_GPUS"
POLL_INTERVAL_S = 1.0
WAIT_REPORT_EVERY_S = 600.0  # while waiting, say so again every 10 minutes

try:  # POSIX
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt


class GpuClaimError(UserError, ValueError):
    """More GPUs asked for than are visible, or a GPU list that names no visible GPU."""


def default_claims_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``GAUGAN_GPU_CLAIMS_DIR``, else ``/tmp/gaugan-gpu-claims`` (Windows: the temp folder).

    Not ``$TMPDIR``: job schedulers often give each job its own, and claims must be seen by
    every experiment on the node.
    """
    environ = os.environ if environ is None else environ
    if environ.get(CLAIMS_DIR_VARIABLE):
        return Path(environ[CLAIMS_DIR_VARIABLE])
    base = Path("/tmp") if os.name == "posix" else Path(tempfile.gettempdir())
    return base / "gaugan-gpu-claims"


def visible_gpus(device_count: int, cuda_visible_devices: str | None) -> tuple[str, ...]:
    """The names of the GPUs a process sees, in CUDA's order: the first ``device_count``
    entries of ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs), or ``0 .. device_count - 1``
    when it is unset.

    A claim locks these names, so two processes that see the same GPU under different
    local indices (``CUDA_VISIBLE_DEVICES=2,3`` against all GPUs) claim the same lock.
    """
    if cuda_visible_devices is None:
        return tuple(str(index) for index in range(device_count))
    entries = [entry.strip() for entry in cuda_visible_devices.split(",") if entry.strip()]
    return tuple(entries[:device_count])


def parse_gpu_indices(text: str, option: str = "--gpus") -> list[int]:
    """``"0-3,6"`` -> ``[0, 1, 2, 3, 6]``: GPU indices as ranges and single numbers, in order."""
    indices: list[int] = []
    for part in (item.strip() for item in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise GpuClaimError(f"{option}: got {text!r}, expected GPU indices such as 0-3 or 0,2,5")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise GpuClaimError(f"{option}: the range {part!r} runs backwards; write {last}-{first}")
        indices += [index for index in range(first, last + 1) if index not in indices]
    return indices


def check_enough(num_gpus: int, gpus: Sequence[str], setting: str, where: str = "") -> None:
    """A :class:`GpuClaimError` naming ``setting`` when ``num_gpus`` is more than ``gpus`` holds."""
    if num_gpus < 1:
        raise GpuClaimError(f"{setting}: got {num_gpus}, expected an integer >= 1")
    if num_gpus > len(gpus):
        seen = f" ({', '.join(gpus)})" if gpus else ""
        raise GpuClaimError(
            f"{setting}: asks for {num_gpus} GPU(s) but {len(gpus)} {'is' if len(gpus) == 1 else 'are'} visible"
            f"{seen}{where}; lower {setting} or make more GPUs visible")


def _lock_path(claims_dir: Path, gpu: str) -> Path:
    # UUIDs of MIG instances contain slashes.
    return claims_dir / f"gpu-{re.sub(r'[^A-Za-z0-9._-]', '_', gpu)}.lock"


def _prepare_dir(claims_dir: Path) -> None:
    """The shared folder, writable by every user of the node (sticky, like /tmp)."""
    if claims_dir.is_dir():
        return
    try:
        claims_dir.mkdir(parents=True, exist_ok=True)
        if os.name == "posix":
            os.chmod(claims_dir, 0o1777)
    except OSError as err:
        raise GpuClaimError(
            f"{CLAIMS_DIR_VARIABLE}: cannot create the GPU claims folder {claims_dir} ({err.strerror}); point "
            f"{CLAIMS_DIR_VARIABLE} at a writable folder on this machine's own disk") from err


def _open_lock_file(path: Path) -> int:
    follow = getattr(os, "O_NOFOLLOW", 0)  # a symlink planted in a shared folder is not followed
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | follow, 0o666)
        except PermissionError:
            # Another user's lock file: a read-only descriptor can be locked as well.
            return os.open(path, os.O_RDONLY | follow)
    except OSError as err:
        what = "a symbolic link" if path.is_symlink() else f"cannot be opened ({err.strerror})"
        raise GpuClaimError(f"{path}: {what} where a GPU lock file belongs; remove it, or point "
                            f"{CLAIMS_DIR_VARIABLE} at another folder") from err


def _try_lock(descriptor: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            os.lseek(descriptor, 0, os.SEEK_SET)
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
    except OSError:  # held by another process (EWOULDBLOCK, EACCES)
        return False
    return True


def _unlock_and_close(descriptor: int) -> None:
    if fcntl is None:
        try:
            os.lseek(descriptor, 0, os.SEEK_SET)
            msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
    os.close(descriptor)  # flock: closing the last descriptor drops the lock


@dataclass
class GpuClaim:
    """GPUs held by this process until :meth:`release` (or its end)."""

    gpus: tuple[str, ...]
    claims_dir: Path
    _descriptors: list[int] = field(default_factory=list, repr=False)

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.gpus)

    def keep_across_exec(self) -> None:
        """Let a program that replaces this process (``os.exec*``) keep holding the locks."""
        for descriptor in self._descriptors:
            os.set_inheritable(descriptor, True)

    def release(self) -> None:
        while self._descriptors:
            _unlock_and_close(self._descriptors.pop())

    def __enter__(self) -> GpuClaim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def try_claim(num_gpus: int, gpus: Sequence[str], claims_dir: Path) -> GpuClaim | None:
    """``num_gpus`` of ``gpus`` locked now, first free first; None (holding nothing) when fewer are free."""
    _prepare_dir(claims_dir)
    taken: list[tuple[str, int]] = []
    for gpu in gpus:
        descriptor = _open_lock_file(_lock_path(claims_dir, gpu))
        if _try_lock(descriptor):
            taken.append((gpu, descriptor))
            if len(taken) == num_gpus:
                return GpuClaim(tuple(name for name, _ in taken), claims_dir, [d for _, d in taken])
        else:
            os.close(descriptor)
    for _, descriptor in taken:  # all or nothing: never hold a part while waiting for the rest
        _unlock_and_close(descriptor)
    return None


def claim_gpus(num_gpus: int, gpus: Sequence[str], claims_dir: Path | None = None, *, setting: str = "train.gpus",
               on_wait: Callable[[str], None] | None = None, poll_interval_s: float = POLL_INTERVAL_S,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> GpuClaim:
    """``num_gpus`` of the visible ``gpus``, waiting as long as other experiments hold too many.

    ``on_wait(message)`` is told when the wait starts and every 10 minutes of it. More GPUs
    than ``gpus`` holds is a :class:`GpuClaimError` naming ``setting``.
    """
    check_enough(num_gpus, gpus, setting)
    claims_dir = default_claims_dir() if claims_dir is None else claims_dir
    started = clock()
    next_report = started
    while (claim := try_claim(num_gpus, gpus, claims_dir)) is None:
        now = clock()
        if on_wait is not None and now >= next_report:
            waited = f" (waiting for {(now - started) / 60:.0f} min)" if next_report > started else ""
            on_wait(f"waiting for {num_gpus} free GPU(s) of {len(gpus)} visible ({', '.join(gpus)}): the others are "
                    f"claimed by other experiments on this machine (lock files in {claims_dir}); it starts as soon as "
                    f"enough are released{waited}")
            next_report = now + WAIT_REPORT_EVERY_S
        sleep(poll_interval_s)
    return claim


def claimed_from_environment(environ: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    """The GPUs pipeline/launch.py claimed for this process: None when it was not started
    through it, an empty tuple when it claimed none (a CPU run)."""
    environ = os.environ if environ is None else environ
    value = environ.get(CLAIMED_VARIABLE)
    if value is None:
        return None
    return tuple(entry for entry in value.split(",") if entry)
