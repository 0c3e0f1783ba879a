"""From the engine's thread-safe handles to asyncio, without ever blocking the event loop.

`engine.submit()` returns at once; each handle's blocking `events()` is read by a small thread that
hands events to the loop (call_soon_threadsafe). The decode loop itself runs in the engine's own
thread, so no HTTP work ever waits on decoding and decoding never waits on a slow client.
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Awaitable, Callable

from ..engine import DoneEvent, ErrorEvent, GenOutput, GenRequest, TokenEvent

_END = object()


class Flight:
    """Requests submitted together (one HTTP request's choices or records): their events, tagged
    with the request's index, in one asyncio queue. `cancel()` frees their sequences at the
    engine's next step."""

    def __init__(self, engine, requests: list[GenRequest],
                 on_end: Callable[[GenOutput | None], None] | None = None):
        self._on_end = on_end or (lambda output: None)
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self.handles = [engine.submit(req) for req in requests]
        self._open = len(self.handles)
        for index, handle in enumerate(self.handles):
            threading.Thread(target=self._pump, args=(index, handle), daemon=True,
                             name="prom-local-serve-events").start()

    def _pump(self, index: int, handle) -> None:
        # Runs until the engine ends the request, even when the HTTP side has gone: only then is
        # its sequence free, and its admission given back.
        output = None
        try:
            for event in handle.events():
                if isinstance(event, DoneEvent):
                    output = event.output
                self._post((index, event))
        except BaseException as exc:  # a request callback or the engine failed: tell the caller
            self._post((index, exc))
        finally:
            self._on_end(output)
            self._post((index, _END))

    def _post(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down): nobody to tell
            pass

    async def events(self) -> AsyncIterator[tuple[int, TokenEvent | DoneEvent | ErrorEvent]]:
        """(index, event) until every request has ended; an exception from the engine is raised."""
        while self._open:
            index, item = await self._queue.get()
            if item is _END:
                self._open -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            yield index, item

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()


async def finish_unless_gone(gone: Awaitable[None], work: Awaitable[None], flight: Flight) -> bool:
    """Await `work` (reading a flight's events) unless `gone` (the client disconnecting, a batch
    being cancelled) ends first; then its sequences are cancelled at once. True when the work
    finished (its errors are raised)."""
    task = asyncio.ensure_future(work)
    left = asyncio.ensure_future(gone)
    try:
        await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        if not task.done():
            task.cancel()
            flight.cancel()
    if not task.done() or task.cancelled():
        return False
    task.result()
    return True


async def disconnected(request) -> None:
    """Returns once the HTTP client of `request` has gone."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class Admission:
    """The bounded queue: at most `limit` engine requests admitted (running or waiting) at once;
    past that a request is refused with 503 and Retry-After instead of queueing without end."""

    def __init__(self, limit: int):
        self.limit = limit
        self.admitted = 0
        self._lock = threading.Lock()

    def try_take(self, n: int) -> bool:
        with self._lock:
            if self.admitted + n > self.limit:
                return False
            self.admitted += n
            return True

    def give_back(self, n: int) -> None:
        with self._lock:
            self.admitted -= n
