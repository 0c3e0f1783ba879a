"""Errors in OpenAI's shape, so that clients raise their own exception types for them.

The `openai` SDK maps the status code to a class (400 BadRequestError, 401 AuthenticationError,
404 NotFoundError, 413/422 APIStatusError, 503 InternalServerError...) and reads
`{"error": {"message", "type", "param", "code"}}` for the text.
"""

from __future__ import annotations

from starlette.responses import JSONResponse


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ClientGone(Exception):
    """The caller left (an HTTP client hung up, a batch was cancelled or the server stops) before
    the answer was ready: its sequences were cancelled, and nobody is told anything."""


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unauthorized() -> ApiError:
    return ApiError(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                    code="invalid_api_key")


def model_not_found(name: str, served: str) -> ApiError:
    return ApiError(404, f"The model `{name}` does not exist; this server serves `{served}`.",
                    param="model", code="model_not_found")


def not_ready() -> ApiError:
    return ApiError(503, "The model is still loading; retry when GET /health answers 200.",
                    type="server_error", code="model_loading", headers={"Retry-After": "2"})


def overloaded(retry_after: int) -> ApiError:
    return ApiError(503, "The request queue is full; retry later.", type="server_error",
                    code="queue_full", headers={"Retry-After": str(retry_after)})
