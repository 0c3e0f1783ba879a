"""The one door every HTTP request of the API passes: what each needs once, done here once.

In order: the caller's key (401), the body read within --max-body-bytes and --request-read-timeout
(413, 408) and parsed as bounded JSON (400), then the endpoint's core with (caller, parsed body,
request). What the core returns becomes the response (a dict or list as JSON; a Response as it is).
The API's errors keep OpenAI's shape; a client that hung up (ClientDisconnect while reading,
ClientGone from a core) is a 499 log line, not an error; anything else is a bug: logged with its
traceback and answered 500 in the same shape, and the server goes on. Every answer is counted in
/metrics here, and only here.

Cores know no HTTP beyond the request they may read query parameters from: a batch line calls the
same cores (batches/calls.py) with its owner and its parsed body.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from .errors import ApiError, ClientGone
from .limits import parse_json
from .service import Service

log = logging.getLogger("prom_local.serve")
GONE = 499   # nginx's code for "the client closed the connection": no one reads this answer
Core = Callable[[str, object, Request], Awaitable[object]]


def door(service: Service, name: str, core: Core, *, body: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint for `core`; `body`: read and parse a JSON body first."""

    async def run(request: Request) -> Response:
        try:
            caller = service.authenticate(request)
            data = await parse_json(await service.read_body(request)) if body else None
            result = await core(caller, data, request)
            response = result if isinstance(result, Response) else JSONResponse(result)
        except (ClientGone, ClientDisconnect):
            log.info("%s %s: the client hung up (%d)", request.method, request.url.path[:200], GONE)
            service.metrics.request(name, GONE, "client_gone")
            return Response(status_code=GONE)
        except ApiError as exc:
            service.metrics.request(name, exc.status, exc.code)
            return exc.response()
        except Exception as exc:  # a bug: still OpenAI's shape, and the server goes on
            log.exception("unexpected error in %s", name)
            service.metrics.request(name, 500, "internal_error")
            return ApiError(500, f"internal error: {type(exc).__name__}", type="server_error").response()
        service.metrics.request(name, response.status_code)
        return response

    return run
