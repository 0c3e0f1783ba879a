"""uvicorn's h11 protocol with this server's knobs against slow and many clients: a bound on open
connections (refused in the API's error shape), and a short deadline for receiving a request's head
(a client trickling its headers one byte at a time would otherwise hold its connection forever:
each byte resets uvicorn's keep-alive timer). The body's deadline is the longer
--request-read-timeout (Service.read_body, upload.py: 408).

Idle and half-sent connections cost little (a socket and a small buffer each), so the bound sits in
the thousands, within the process's file limit: one client holding hundreds open does not lock
others out, and the head deadline drops them soon.
"""

from __future__ import annotations

import json
import resource

from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import MAX_HEADER_BYTES

DEFAULT_CONNECTIONS = 4096
FILES_KEPT = 512              # file descriptors left for the model, the data dir, logs, threads
REFUSAL = json.dumps({"error": {
    "message": "The server has too many open connections; retry shortly (--max-connections).",
    "type": "server_error", "param": None, "code": "too_many_connections"}}).encode()


def connection_bound(asked: int | None) -> tuple[int, int]:
    """(connections allowed, the process's file limit), raising the soft file limit to the hard
    one first. `asked` (--max-connections) is kept within the file limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):   # not allowed here: the soft limit it is
            pass
    room = max(1, soft - FILES_KEPT) if soft != resource.RLIM_INFINITY else DEFAULT_CONNECTIONS
    return min(asked or DEFAULT_CONNECTIONS, room), soft


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head within
    `head_timeout` seconds of connecting or of its previous response, and answering a request that
    arrives while more than `max_connections` are open with a 503 in the API's error shape."""

    head_timeout = 10.0
    max_connections = DEFAULT_CONNECTIONS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.app = _Bounded(self.app, self)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _arm(self) -> None:
        old = getattr(self, "_head_deadline", None)
        if old is not None:
            old.cancel()
        cycle = self.cycle
        self._head_deadline = self.loop.call_later(self.head_timeout, self._expire, cycle)

    def _expire(self, cycle_at_arm) -> None:
        # A new request head arrived since: its body (if any) is read_body's to time.
        if self.cycle is not cycle_at_arm or self.transport is None or self.transport.is_closing():
            return
        self.transport.close()

    def connection_lost(self, exc) -> None:
        old = getattr(self, "_head_deadline", None)
        if old is not None:
            old.cancel()
        super().connection_lost(exc)


class _Bounded:
    """The app, unless too many connections (or requests in progress) are open right now."""

    def __init__(self, app, protocol: DeadlineH11Protocol):
        self.app, self.protocol = app, protocol

    async def __call__(self, scope, receive, send):
        most = self.protocol.max_connections
        if scope["type"] == "http" and (len(self.protocol.connections) > most or len(self.protocol.tasks) > most):
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(REFUSAL)).encode()),
                (b"retry-after", b"1"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": REFUSAL})
            return
        await self.app(scope, receive, send)


def uvicorn_limits(max_connections: int, head_timeout: float) -> dict:
    """uvicorn.Config keyword arguments for the limits above."""
    protocol = type("ServeH11Protocol", (DeadlineH11Protocol,),
                    {"head_timeout": head_timeout, "max_connections": max_connections})
    return {"http": protocol, "timeout_keep_alive": 5, "h11_max_incomplete_event_size": MAX_HEADER_BYTES}
