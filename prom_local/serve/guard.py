"""The checks every request passes before any route sees it: the browser's way in, closed.

A web page can make the browser send requests to 127.0.0.1 and, with DNS rebinding, read the
answers: its own host name resolves to 127.0.0.1, and the browser then sends `Host: evil.example`.
So a request is refused unless
- its `Host` is one the server answers to (loopback names, the --host address, --allowed-host
  names, and any IP literal: a rebinding page always has a name, never an IP) -> 421;
- it carries no `Origin`, or one whose host is such a name -> 403 (a page on another site);
- a POST says `Content-Type: application/json`: a page can POST `text/plain` without the browser
  asking first (a CORS "simple" request), but never `application/json` to another origin -> 415.
  The one exception is the Batch API's upload (`POST /v1/files`), multipart as OpenAI's SDK sends
  it: a page could send that without asking too, so there the Host and Origin checks above are
  what keeps pages out.
Errors are in OpenAI's shape, like every other one.
"""

from __future__ import annotations

import ipaddress

from .auth import split_host
from .errors import ApiError

JSON_TYPES = ("application/json",)
UPLOAD_PATHS = {"/v1/files": ("multipart/form-data",)}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class Guard:
    """ASGI middleware over the app; `hosts` empty means any Host (an app built without a
    listening address: the in-process tests')."""

    def __init__(self, app, hosts: frozenset[str], on_refused=None):
        self.app = app
        self.hosts = hosts
        self._on_refused = on_refused or (lambda error: None)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            error = self.refusal(scope)
            if error is not None:
                self._on_refused(error)
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def answers_to(self, host: str) -> bool:
        return not self.hosts or "*" in self.hosts or host in self.hosts or _is_ip(host)

    def refusal(self, scope) -> ApiError | None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        host = split_host(headers.get("host", ""))
        if not self.answers_to(host):
            return ApiError(421, f"This server does not answer to the host name {host[:100]!r} "
                            "(start it with --allowed-host NAME to add one).", code="host_not_allowed")
        origin = headers.get("origin")
        if origin is not None:
            scheme, _, rest = origin.partition("://")
            if not rest or not self.answers_to(split_host(rest.split("/")[0])):
                return ApiError(403, "Requests from web pages of another origin are refused.",
                                code="origin_not_allowed")
        if scope["method"] == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind not in JSON_TYPES + UPLOAD_PATHS.get(scope.get("path", ""), ()):
                return ApiError(415, "Send the body as JSON with `Content-Type: application/json`.",
                                param="Content-Type", code="unsupported_media_type")
        return None
