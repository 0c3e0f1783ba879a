"""Requests from any thread into one decode loop, and who runs that loop.

Two ways in, one loop (the engine's `step`), run by one thread at a time:
- `submit(request) -> RequestHandle`, from any thread: the request waits in an inbox the loop
  reads without blocking, and a background thread (started on the first submit) runs steps while
  submitted requests are in flight. Each handle has its own event stream and cancel.
- `generate(requests)`: the consuming thread runs steps itself as it asks for events, so, as a
  generator always did, nothing advances while its caller does something else (unless submitted
  requests keep the background thread busy), and its iterator is read only when a sequence is
  free, at the same points of the loop as before, which keeps its scheduling deterministic.
Every step serves every request in flight, whoever runs it.
"""

from __future__ import annotations

import collections
import queue
import threading
from typing import Callable, Iterator

from .requests import DoneEvent, ErrorEvent, Event, GenOutput, GenRequest
from .scheduler import RequestState


class EngineClosed(RuntimeError):
    """The engine was closed: no more requests."""


class Raised:
    """An exception travelling to the consumer of a request (a failing callback, a dead engine)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class RequestHandle:
    """One submitted request: its events, in order, and its cancel. Safe to use from any thread."""

    def __init__(self, intake: "Intake", request: GenRequest):
        self.request = request
        self._intake = intake
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.job = RequestState(request, sink=self)

    @property
    def tag(self) -> object:
        return self.request.tag

    def events(self) -> Iterator[Event]:
        """TokenEvents, then one DoneEvent per sample (SamplingParams.n, each with its `index`) or
        one ErrorEvent; raises what broke the request, if anything did (a request callback that
        raised, an engine failure). Iterate it once."""
        left = max(1, self.request.params.n)
        while True:
            item = self._queue.get()
            if isinstance(item, Raised):
                raise item.error
            yield item
            if isinstance(item, DoneEvent):
                left -= 1
            if isinstance(item, ErrorEvent) or left == 0:
                return

    def results(self) -> list[GenOutput]:
        """Wait for every sample's output, in sample order (an ErrorEvent's error is raised)."""
        outputs = []
        for event in self.events():
            if isinstance(event, DoneEvent):
                outputs.append(event.output)
            elif isinstance(event, ErrorEvent):
                raise event.error
        return sorted(outputs, key=lambda out: out.index)

    def result(self) -> GenOutput:
        """Wait for the output (the first sample's, when there are several)."""
        outputs = self.results()
        if not outputs:  # pragma: no cover
            raise RuntimeError("the event stream ended without a result")
        return outputs[0]

    def cancel(self) -> None:
        """Stop the request; its sequence is freed at the next step and its events end with a
        DoneEvent whose finish_reason is "cancelled"."""
        self.job.cancel()
        self._intake.note_cancel()

    # -- sink, called by the loop ----------------------------------------------------------------
    def put(self, item) -> None:
        self._queue.put(item)

    def finish(self) -> None:
        self._intake.submitted_done()


class _Feed:
    """The requests of one `generate` call, read lazily from its iterator."""

    def __init__(self, requests: Iterator[GenRequest]):
        self._requests = requests
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False     # the consumer left: its requests are cancelled, none read
        self.exhausted = False
        self.in_flight = 0

    @property
    def complete(self) -> bool:
        return self.exhausted and self.in_flight == 0

    def pull(self) -> RequestState | None:
        if self.exhausted or self.cancelled:
            return None
        try:
            req = next(self._requests)
        except StopIteration:
            self.exhausted = True
            return None
        except BaseException as exc:  # the caller's iterator failed: raise it in the caller
            self.put(Raised(exc))
            self.exhausted = self.cancelled = True
            return None
        self.in_flight += 1
        return RequestState(req, sink=self)

    def put(self, item) -> None:
        self.queue.put(item)

    def finish(self) -> None:
        self.in_flight -= 1

    def close(self) -> None:
        self.cancelled = self.exhausted = True


class Intake:
    """Where requests wait to enter the loop, and the rule that one thread steps at a time."""

    def __init__(self, step: Callable[[], None], on_fault: Callable[[BaseException], None],
                 on_close: Callable[[], None]):
        self._step = step
        self._on_fault = on_fault
        self._on_close = on_close
        self._cond = threading.Condition()
        self._pumping = False
        self._closed = False
        self._inbox: collections.deque[RequestState] = collections.deque()
        self._feeds: list[_Feed] = []
        self._submitted = 0          # submitted requests not yet finished
        self._sweep = False          # a handle was cancelled: look for it in the inbox
        self._thread: threading.Thread | None = None

    # -- the loop's side --------------------------------------------------------------------------
    def next_job(self) -> RequestState | None:
        """The next request to read, without blocking on the inbox: submitted ones first, then
        each generate call's iterator (which may block, as a generator source always could)."""
        try:
            return self._inbox.popleft()
        except IndexError:
            pass
        for feed in list(self._feeds):
            job = feed.pull()
            if job is not None:
                return job
        return None

    def take_cancelled(self) -> list[RequestState]:
        """Cancelled requests still in the inbox (they never held a sequence)."""
        if not self._sweep:
            return []
        self._sweep = False
        gone = [job for job in list(self._inbox) if job.cancelled]
        for job in gone:
            self._inbox.remove(job)
        return gone

    def drain(self) -> list[RequestState]:
        """Everything not yet read (on close): inbox requests, and no more from any feed."""
        jobs = list(self._inbox)
        self._inbox.clear()
        for feed in self._feeds:
            feed.close()
        return jobs

    def note_cancel(self) -> None:
        self._sweep = True

    def submitted_done(self) -> None:
        with self._cond:
            self._submitted -= 1

    # -- running steps ----------------------------------------------------------------------------
    def _pump(self) -> bool:
        """Run one step unless another thread is running one (or the engine is closed)."""
        with self._cond:
            if self._pumping or self._closed:
                return False
            self._pumping = True
        try:
            self._step()
        except BaseException as exc:  # the engine itself failed, not one request: tell everyone
            self._on_fault(exc)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and the like go on up in this thread too
        finally:
            with self._cond:
                self._pumping = False
                self._cond.notify_all()
        return True

    def _wait(self, ready: Callable[[], bool]) -> None:
        with self._cond:
            self._cond.wait_for(lambda: ready() or not self._pumping or self._closed)

    def _serve(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or (self._submitted > 0 and not self._pumping))
                if self._closed:
                    return
            self._pump()

    # -- the callers' side ------------------------------------------------------------------------
    def submit(self, handle: RequestHandle) -> RequestHandle:
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine is closed")
            self._inbox.append(handle.job)
            self._submitted += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="prom-local-engine", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return handle

    def generate(self, requests: Iterator[GenRequest]) -> Iterator[Event]:
        feed = _Feed(requests)
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine is closed")
            self._feeds.append(feed)
        try:
            while True:
                complete = feed.complete   # read first: all it implies is queued by now
                got = False
                while True:
                    try:
                        item = feed.queue.get_nowait()
                    except queue.Empty:
                        break
                    got = True
                    if isinstance(item, Raised):
                        raise item.error
                    yield item
                if complete:
                    return
                if got or self._pump():
                    continue
                if self._closed:
                    raise EngineClosed("the engine was closed during generate()")
                self._wait(lambda: not feed.queue.empty())
        finally:
            # Abandoned (the caller stopped early, or an exception): the requests leave their
            # sequences before this returns, so the engine is free for the next call; the KV
            # cache stays and is reused.
            feed.close()
            while not feed.complete and not self._closed:
                if not self._pump():
                    self._wait(lambda: feed.complete)
            with self._cond:
                self._feeds.remove(feed)

    def close(self) -> None:
        """Cancel everything in flight (each request ends with a cancelled DoneEvent) and stop
        the background thread; returns once no step runs."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._cond:
            self._cond.wait_for(lambda: not self._pumping)
            self._pumping = True
        try:
            self._on_close()
        finally:
            with self._cond:
                self._pumping = False
                self._cond.notify_all()
