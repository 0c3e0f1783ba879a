"""Where an endpoint's core runs: here, on this process's engine (LocalCores), or on an engine of a
Ray cluster (serve/cluster/front.py's ClusterCores, with `serve --ray`).

The door (door.py) and a batch line (batches/calls.py) both call `service.cores`, so an HTTP request
and a batch line take the same path whichever engine grades them; an engine of `serve --ray` runs
these same LocalCores on a Service of its own (serve/cluster/engine_actor.py).
"""

from __future__ import annotations

from typing import Awaitable, Callable

from . import completions, grade
from .service import Service

Gone = Callable[[], Awaitable[None]]


class LocalCores:
    """grade.run and completions.prepare + complete/stream on this process's engine."""

    async def grade(self, service: Service, caller: str, body: object, *, samples: int | None,
                    gone: Gone) -> dict | list:
        return await grade.run(service, caller, body, samples=samples, gone=gone)

    async def chat(self, service: Service, caller: str, body: object, *, gone: Gone, stream: bool):
        """The whole answer (a dict), or with `stream` and a body asking for it, the SSE response."""
        call = await completions.prepare(service, caller, body)
        if stream and call.request.stream:
            return completions.stream(call)
        return await completions.complete(call, gone())
