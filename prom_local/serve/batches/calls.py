"""One batch line run through the very handlers an HTTP request of that endpoint reaches.

The line's body becomes a Starlette Request built here (never received from the network), so a
batch line is validated, bounded, admitted and graded exactly as the same body POSTed by a client:
same parsing functions, same limits, same response body, same status code. The request carries its
owner in the ASGI scope (OWNER_SCOPE), which no network client can set: `Service.authenticate`
returns it, since its key was checked when the batch was created. "Disconnecting" it (the `gone`
event) cancels its sequences at the engine's next step, as a client hanging up would.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.requests import Request

from .. import completions, grade
from ..errors import ApiError
from ..service import OWNER_SCOPE, Service

log = logging.getLogger("prom_local.serve")
GONE = 499   # the handlers' answer to a client that left: here, a cancelled or stopped batch


async def call(service: Service, path: str, body: bytes, owner: str, gone: asyncio.Event) -> tuple[int, dict]:
    """(status code, response body) of one line; status GONE when `gone` was set first."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("batch", 0), "scheme": "http", "http_version": "1.1", OWNER_SCOPE: owner}
    request = Request(scope, receive)
    try:
        if path == "/v1/grade":
            response = await grade.grade(service, request)
        else:
            if _streams(body):
                raise ApiError(400, "stream is not supported in a batch line.", param="stream")
            chat = await completions.prepare(service, request)
            response = await completions.complete(chat, request)
    except ApiError as exc:
        return exc.status, exc.body()
    except Exception as exc:   # a bug: that line's 500, as the HTTP endpoint would answer
        log.exception("unexpected error in a batch line")
        return 500, ApiError(500, f"internal error: {type(exc).__name__}", type="server_error").body()
    if response.status_code == GONE:
        return GONE, {}
    return response.status_code, json.loads(response.body)


def _streams(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return False   # parse_chat names the error
    return isinstance(data, dict) and data.get("stream") is True
