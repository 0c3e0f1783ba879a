"""uvicorn's knobs against slow and many clients: a connection limit, and a deadline for receiving
a request's head (a client trickling its headers one byte at a time would otherwise hold its
connection forever: each byte resets uvicorn's keep-alive timer). The body's deadline is
Service.read_body's (408)."""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEADER_BYTES = 32 << 10   # h11's bound on an incomplete request head (its default is 16 KiB)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head within
    `head_timeout` seconds of connecting or of its previous response."""

    head_timeout = 30.0

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


def uvicorn_limits(max_connections: int, head_timeout: float) -> dict:
    """uvicorn.Config keyword arguments for the limits above."""
    protocol = type("ServeH11Protocol", (DeadlineH11Protocol,), {"head_timeout": head_timeout})
    return {"http": protocol, "limit_concurrency": max_connections, "timeout_keep_alive": 5,
            "h11_max_incomplete_event_size": MAX_HEADER_BYTES}
