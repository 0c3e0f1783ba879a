"""Fair turns on the engine for batch lines: slots handed out one at a time, each to the waiting
owner (API key name) served least recently.

The runner keeps one batch per owner going (its oldest), so every owner has at most a line or two
waiting here. A key that was not served yet, or longest ago, gets the next slot that frees: its
first line starts within one line-time (the shortest time until a running line ends) of asking,
however many lines other keys have queued.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Callable


class Turns:
    def __init__(self, may_start: Callable[[int], bool]):
        # may_start(running): whether one more batch line may take a slot now (runner's rules).
        self._may_start = may_start
        self._waiting: dict[str, collections.deque[asyncio.Future]] = {}
        self._served: dict[str, int] = {}   # owner -> number of the grant it got last
        self._grants = 0
        self.running = 0                    # lines granted a slot and not yet done

    async def take(self, owner: str, gone: asyncio.Event) -> bool:
        """Wait for this owner's turn; False when `gone` was set first (nothing is held then).
        True: the caller holds a slot until it calls done()."""
        if gone.is_set():
            return False
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, collections.deque()).append(future)
        self.poke()
        waiter = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({future, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not future.done():
                future.cancel()
                self._drop(owner, future)
        if future.cancelled():
            return False
        if gone.is_set():   # granted and cut off at once: give the slot to the next one
            self.done()
            return False
        return True

    def done(self) -> None:
        """A granted line has ended: its slot goes to the next turn."""
        self.running -= 1
        self.poke()

    def poke(self) -> None:
        """Hand out slots while the runner's rules allow: call when one may have freed."""
        while self._may_start(self.running):
            owner = self._next_owner()
            if owner is None:
                return
            future = self._waiting[owner].popleft()
            if not self._waiting[owner]:
                del self._waiting[owner]
            self._served[owner] = self._grants
            self._grants += 1
            self.running += 1
            future.set_result(None)

    def _next_owner(self) -> str | None:
        for owner in list(self._waiting):
            queue = self._waiting[owner]
            while queue and queue[0].done():
                queue.popleft()
            if not queue:
                del self._waiting[owner]
        if not self._waiting:
            return None
        return min(self._waiting, key=lambda owner: self._served.get(owner, -1))

    def _drop(self, owner: str, future: asyncio.Future) -> None:
        queue = self._waiting.get(owner)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiting[owner]

    def forget(self, owner: str) -> None:
        """The owner has no active batch left: its place in the rotation is not kept."""
        if owner not in self._waiting:
            self._served.pop(owner, None)
