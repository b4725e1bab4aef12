"""The MLflow store when it misbehaves: a quick check before a run, retries, a background writer.

What went wrong without this (measured with mlflow 3.17):

- an unreachable tracking server: MLflow retries each request 7 times with exponential
  backoff, so a stage sat silent for 259 s and then printed a traceback;
- a read-only or missing sqlite location: ``unable to open database file`` without the
  path, after MLflow's own ten retries;
- a sqlite file locked by another process (``mlflow ui`` running a long query, another
  experiment writing): MLflow waits 20 s (its ``busy_timeout``) and raises, which crashed
  training mid-run and lost the steps since the last checkpoint; before raising it logs a
  60-line SQLAlchemy traceback, once per attempt.

So: :func:`check_store` looks at the store once, with a short timeout, and says what is
wrong with which URI (a :class:`TrackingError`, i.e. a user error). During a run every
write goes through a :class:`BackgroundWriter`: one thread, in order, retrying transient
failures with backoff, so training neither waits for the store nor dies of it; a write
that keeps failing is reported and dropped, and training goes on. While our retries talk to
the store, MLflow's and SQLAlchemy's warnings and errors of that thread are silenced
(:func:`store_logs_silenced`): what failed is reported by our own line, once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from gaugan.errors import UserError

STORE_CHECK_TIMEOUT_S = 10.0
# Waits between the attempts of one write (seconds): about a minute, on top of MLflow's own
# 20 s sqlite busy wait per attempt. After that the write is reported and dropped.
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
# MLflow's defaults for HTTP stores (7 retries, 120 s timeout) made one failing call take
# minutes; the writer retries on its own. Set these environment variables to override.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# MLflow error codes worth another attempt; anything else (a refused value, a deleted
# experiment) fails the same way again.
TRANSIENT_ERROR_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED",
                                   "DEADLINE_EXCEEDED", "ABORTED"})
HOW_TO_AVOID = ("fix tracking.tracking_uri (or MLFLOW_TRACKING_URI), or set tracking.enabled: false "
                "to run without MLflow")

Result = TypeVar("Result")


class TrackingError(UserError):
    """The MLflow store cannot be used: unreachable, unwritable, or refusing the run."""


def short_error(err: BaseException) -> str:
    """The first line of an error: MLflow's sqlite errors go on with the whole SQL statement
    (and start with SQLAlchemy's ``(sqlite3.OperationalError)``, left out)."""
    text = str(getattr(err, "message", None) or err).strip()
    first = re.sub(r"^\([\w.]+\) ", "", text.splitlines()[0]) if text else ""
    return first or type(err).__name__


def is_transient(err: BaseException) -> bool:
    """A failure that the same call may not meet again: a lock, a timeout, a connection."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.error_code in TRANSIENT_ERROR_CODES
    return isinstance(err, (OSError, TimeoutError, sqlite3.OperationalError))


def limit_http_retries() -> None:
    """Lower MLflow's HTTP retries and timeout for this process, unless the user set them."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def sqlite_path(uri: str) -> Path | None:
    """``sqlite:///relative.db`` / ``sqlite:////absolute.db`` -> the file; None for in-memory."""
    location = uri[len("sqlite://"):].split("?", 1)[0]
    return Path(location[1:]) if location.startswith("/") and len(location) > 1 else None


def check_store(uri: str, timeout_s: float = STORE_CHECK_TIMEOUT_S) -> None:
    """Raise :class:`TrackingError` naming ``uri`` when the store clearly cannot take a run.

    HTTP(S): the server must answer within ``timeout_s``. sqlite: the database's folder must
    exist (or be creatable) and be writable, and the file must be an SQLite database. Other
    stores are judged by their first call (see :func:`call_with_retries`).
    """
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("http", "https"):
        _check_server(uri, timeout_s)
    elif scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None:
            _check_sqlite(uri, path, timeout_s)


def _check_server(uri: str, timeout_s: float) -> None:
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # it answered (an auth layer or a proxy may refuse /health); MLflow's calls say more
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"MLflow tracking server {uri} does not answer ({reason}, waited up to {timeout_s:.0f} s); start it "
            f"(e.g. `mlflow server`), or {HOW_TO_AVOID}") from err


def _check_sqlite(uri: str, path: Path, timeout_s: float) -> None:
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)  # MLflow creates it too
    except OSError as err:
        raise TrackingError(f"MLflow store {uri}: cannot create the folder {folder} ({err.strerror}); "
                            f"{HOW_TO_AVOID}") from err
    unwritable = None
    if not os.access(folder, os.W_OK):
        unwritable = folder
    elif path.exists() and not os.access(path, os.W_OK):
        unwritable = path
    if unwritable is not None:
        raise TrackingError(
            f"MLflow store {uri}: {unwritable} is read-only (sqlite writes the database and a journal beside it); "
            f"{HOW_TO_AVOID}")
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=timeout_s)) as connection:
            connection.execute("PRAGMA schema_version").fetchone()  # reads the header
    except sqlite3.OperationalError as err:
        if "locked" in str(err):
            return  # busy, not broken: the run's calls wait and retry
        raise TrackingError(f"MLflow store {uri}: cannot open {path} ({err}); {HOW_TO_AVOID}") from err
    except sqlite3.DatabaseError as err:
        raise TrackingError(f"MLflow store {uri}: {path} is not an SQLite database ({err}); {HOW_TO_AVOID}") from err


class _SilencedThreads(logging.Filter):
    """Drops warnings and errors logged by the threads inside :func:`store_logs_silenced`."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING or record.thread not in self.threads


_SILENCED = _SilencedThreads()


@contextlib.contextmanager
def store_logs_silenced() -> Iterator[None]:
    """MLflow's and SQLAlchemy's warnings and errors of this thread stay off the terminal.

    MLflow logs a store failure (a locked sqlite file: the SQLAlchemy error, the SQL and two
    tracebacks) and then raises it; the caller reports the raised error in one line. Other
    threads (and this one outside the block) log as before.
    """
    for name in ("mlflow", "sqlalchemy"):
        for handler in logging.getLogger(name).handlers:  # MLflow's handler serves both
            if _SILENCED not in handler.filters:
                handler.addFilter(_SILENCED)
    thread = threading.get_ident()
    _SILENCED.threads.add(thread)
    try:
        yield
    finally:
        _SILENCED.threads.discard(thread)


def call_with_retries(call: Callable[[], Result], what: str, uri: str,
                      delays: tuple[float, ...] = RETRY_DELAYS_S) -> Result:
    """``call()``, retried after transient failures; a :class:`TrackingError` naming ``uri`` at the end.

    For the calls a run cannot start or end without (create the run, read its history).
    """
    from mlflow.exceptions import MlflowException

    for delay in (*delays, None):
        try:
            with store_logs_silenced():
                return call()
        except (MlflowException, OSError, sqlite3.Error) as err:
            if delay is None or not is_transient(err):
                raise TrackingError(f"MLflow store {uri}: cannot {what} ({short_error(err)}); {HOW_TO_AVOID}") from err
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def warn(message: str) -> None:
    print(f"mlflow: {message}", file=sys.stderr, flush=True)


class BackgroundWriter:
    """Writes to the store on one thread, in submission order, with retries.

    A write that fails transiently is retried after each of ``delays``; one that still fails
    (or fails for a reason another attempt cannot change) is reported on stderr and dropped.
    After a dropped write the store is taken as down: later writes get one attempt each
    until one succeeds, so a dead store costs one attempt per write, not a minute.
    """

    def __init__(self, uri: str, delays: tuple[float, ...] = RETRY_DELAYS_S) -> None:
        self.uri = uri
        self.delays = delays
        self.dropped: list[str] = []  # what could not be written
        self._queue: queue.Queue[tuple[str, Callable[..., Any], tuple[Any, ...]] | None] = queue.Queue()
        self._store_down = False
        self._warned = False
        self._deadline: float | None = None  # set by close(): after it, queued writes are dropped untried
        self._thread = threading.Thread(target=self._run, name="mlflow-writer", daemon=True)
        self._thread.start()

    def submit(self, what: str, function: Callable[..., Any], *args: Any) -> None:
        self._queue.put((what, function, args))

    def close(self, timeout_s: float) -> list[str]:
        """Finish the queued writes; returns what was dropped.

        No write or retry starts after ``timeout_s``; one in progress then is let finish
        (an artifact cut off mid-copy would be worse than a late exit).
        """
        self._deadline = time.monotonic() + timeout_s
        self._queue.put(None)
        self._thread.join()
        return self.dropped

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._write(*item)

    def _past_deadline(self, delay: float = 0.0) -> bool:
        return self._deadline is not None and time.monotonic() + delay > self._deadline

    def _write(self, what: str, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        delays = () if self._store_down else self.delays
        for delay in (*delays, None):
            if self._past_deadline():
                self.dropped.append(what)
                return
            try:
                with store_logs_silenced():
                    function(*args)
            except Exception as err:  # noqa: BLE001 - the store's failure must never stop training
                if delay is None or not is_transient(err) or self._past_deadline(delay):
                    self._drop(what, err)
                    return
                if not self._warned:
                    warn(f"{self.uri} did not take a write ({short_error(err)}); retrying in the background, "
                         "the run goes on")
                    self._warned = True
                time.sleep(delay)
            else:
                if self._store_down or self._warned:
                    warn(f"{self.uri} takes writes again")
                self._store_down = self._warned = False
                return

    def _drop(self, what: str, err: BaseException) -> None:
        self.dropped.append(what)
        if not is_transient(err):  # this write's own problem: the store is fine
            warn(f"could not write {what} to {self.uri} ({short_error(err)}); dropped, the run goes on")
            return
        if not self._store_down:  # once: a store that is down would otherwise be reported at every write
            warn(f"could not write {what} to {self.uri} ({short_error(err)}); dropped, the run goes on "
                 "(further failures are counted at the end)")
        self._store_down = True
