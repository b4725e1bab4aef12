"""The studio's request queue: one request at work on a model, a few waiting, the newest of each client kept.

The page sends a generation at every pause in painting and cancels the one before; a
script may send many at once. Each request takes a place in its model's queue before its
body is read: one place at work (decoding its maps, then on the device) and ``depth``
waiting (their uploads read, or being read). A request from a client that already has one
of the same kind waiting takes that one's place: the older is answered 409, its map being
stale. A request that finds every place taken is answered 429 at once. So the uploads held
in memory and the maps being decoded are bounded by the queue, whatever the number of
connections (before, ten concurrent 4096x4096 uploads took 4.7 GB).

A client is the id the page sends in the ``X-Studio-Client`` header, else the connection
(address and port), so that a script's concurrent requests never replace each other.
Places are taken and released by request handlers on any event loop (a test client runs
one per request); a lock guards them and each waiter is woken on its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gaugan.errors import UserError

QUEUE_DEPTH = 2  # requests waiting behind the one at work
RETRY_AFTER_SECONDS = 1


class QueueRefusal(UserError):
    """A request the queue did not serve: 409 (replaced by a newer one of its client) or 429 (queue full)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(eq=False)
class Place:
    """One request's place in the queue."""

    client: str
    kind: str
    loop: asyncio.AbstractEventLoop
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    replaced: bool = False
    at_work: bool = False

    def wake(self) -> None:
        self.loop.call_soon_threadsafe(self.woken.set)


class RequestQueue:
    """The queue of one model: one place at work and ``depth`` waiting."""

    def __init__(self, depth: int = QUEUE_DEPTH) -> None:
        self.depth = depth
        self._lock = threading.Lock()
        self._places: list[Place] = []  # every admitted request, at work or waiting
        self._ready: list[Place] = []  # waiting for their turn, in the order they asked for it

    @property
    def waiting(self) -> int:
        """Requests admitted and not at work."""
        with self._lock:
            return sum(not place.at_work for place in self._places)

    @contextlib.asynccontextmanager
    async def place(self, client: str, kind: str) -> AsyncIterator[Place]:
        """A place for a request of ``kind`` ("generate", "segment", ...) from ``client``, held until
        the request is answered; raises :class:`QueueRefusal` (429) when every place is taken."""
        place = Place(client, kind, asyncio.get_running_loop())
        with self._lock:
            for older in [p for p in self._places if (p.client, p.kind) == (client, kind) and not p.at_work]:
                older.replaced = True
                self._remove(older)
                older.wake()
            if len(self._places) > self.depth:
                raise QueueRefusal(
                    f"the studio is busy: one request at work and {self.depth} waiting for this model; "
                    f"try again in a moment", 429)
            self._places.append(place)
        try:
            yield place
        finally:
            with self._lock:
                self._remove(place)

    def check(self, place: Place) -> None:
        """Raise :class:`QueueRefusal` (409) if a newer request of the same client took the place."""
        if place.replaced:
            raise QueueRefusal(
                f"replaced by a newer request from the same client ({place.kind}): only the latest one "
                f"waiting is served", 409)

    @contextlib.asynccontextmanager
    async def turn(self, place: Place) -> AsyncIterator[None]:
        """Wait until ``place`` is at work; the turn passes on when its place is released."""
        with self._lock:
            self.check(place)
            if any(other.at_work for other in self._places):
                self._ready.append(place)
            else:
                place.at_work = True
        while not place.at_work:
            await place.woken.wait()
            place.woken.clear()
            with self._lock:
                self.check(place)
        yield

    def _remove(self, place: Place) -> None:
        """Take ``place`` out (the lock held); the turn passes to the first one ready."""
        if place in self._places:
            self._places.remove(place)
        if place in self._ready:
            self._ready.remove(place)
        if place.at_work and self._ready:
            following = self._ready.pop(0)
            following.at_work = True
            following.wake()
