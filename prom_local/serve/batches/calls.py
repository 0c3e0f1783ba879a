"""One batch line run through its endpoint's core, the same one an HTTP request of that endpoint
reaches (`service.cores`: grade.run, completions.prepare + complete, here or on a `serve --ray`
engine), with its owner as a plain argument: no HTTP
in between. The line's body was parsed and bounded by lines.py as a request body is, so a batch line
is validated, admitted and graded exactly as the same body POSTed by a client: same response body,
same status code. Setting the `gone` event (cancel, shutdown) cancels its sequences at the engine's
next step, as a client hanging up would.
"""

from __future__ import annotations

import asyncio
import logging

from ..errors import ApiError, ClientGone
from ..service import Service

log = logging.getLogger("prom_local.serve")
GONE = 499   # the answer to a client that left: here, a cancelled or stopped batch


async def call(service: Service, path: str, body: object, owner: str, gone: asyncio.Event) -> tuple[int, dict]:
    """(status code, response body) of one line; status GONE when `gone` was set first."""
    try:
        if path == "/v1/grade":
            return 200, await service.cores.grade(service, owner, body, samples=None, gone=gone.wait)
        if isinstance(body, dict) and body.get("stream") is True:
            raise ApiError(400, "stream is not supported in a batch line.", param="stream")
        return 200, await service.cores.chat(service, owner, body, gone=gone.wait, stream=False)
    except ClientGone:
        return GONE, {}
    except ApiError as exc:
        return exc.status, exc.body()
    except Exception as exc:   # a bug: that line's 500, as the HTTP endpoint would answer
        log.exception("unexpected error in a batch line")
        return 500, ApiError(500, f"internal error: {type(exc).__name__}", type="server_error").body()
