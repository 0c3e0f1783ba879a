"""The ASGI app: routes, the error shape for every failure, and the model loading in the background."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import completions, grade
from .errors import ApiError
from .metrics import CONTENT_TYPE
from .service import Service

log = logging.getLogger("prom_local.serve")


def create_app(service: Service, *, load: bool = True) -> Starlette:
    """The app around a Service. With `load`, the model loads in a background thread when the
    server starts (GET /health says 503 until then) and is freed when it stops."""

    def endpoint(name: str, handler: Callable[[Request], Awaitable[Response]]):
        async def run(request: Request) -> Response:
            try:
                response = await handler(request)
            except ApiError as exc:
                response = exc.response()
                service.metrics.request(name, exc.status, exc.code)
                return response
            except Exception as exc:  # a bug: still OpenAI's shape, and the server goes on
                log.exception("unexpected error in %s", name)
                error = ApiError(500, f"internal error: {type(exc).__name__}", type="server_error")
                service.metrics.request(name, 500, "internal_error")
                return error.response()
            service.metrics.request(name, response.status_code)
            return response
        return run

    async def chat(request: Request) -> Response:
        call = await completions.prepare(service, request)
        if call.request.stream:
            return completions.stream(call)
        return await completions.complete(call, request)

    async def grade_endpoint(request: Request) -> Response:
        return await grade.grade(service, request)

    async def models(request: Request) -> Response:
        service.check_key(request)
        return JSONResponse({"object": "list", "data": [_model_card(service)]})

    async def model(request: Request) -> Response:
        service.check_key(request)
        name = request.path_params["name"]
        if name != service.config.model_name:
            from .errors import model_not_found
            raise model_not_found(name, service.config.model_name)
        return JSONResponse(_model_card(service))

    async def health(request: Request) -> Response:
        if service.load_error is not None:
            return JSONResponse({"status": "error", "error": str(service.load_error)}, status_code=500)
        if not service.ready:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok", **service.describe()})

    async def metrics(request: Request) -> Response:
        service.check_key(request)
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    batch_api = None
    if service.config.batches is not None:   # the Batch API (serve/batches/), with its data dir
        from .batches import BatchApi
        batch_api = BatchApi(service, service.config.batches)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        loader = threading.Thread(target=service.load, name="prom-local-load", daemon=True)
        if load:
            loader.start()
        if batch_api is not None:
            batch_api.start()
        try:
            yield
        finally:
            if batch_api is not None:   # lines in flight are cut off: they run again on restart
                await batch_api.stop()
            # Graceful shutdown has already let in-flight responses finish (or cancelled them
            # after the timeout); anything still in the engine ends as cancelled here.
            service.close()

    async def not_found(request: Request, exc: HTTPException) -> Response:
        status = exc.status_code
        return ApiError(status, f"{request.method} {request.url.path}: " + (
            "no such endpoint" if status == 404 else exc.detail), code="not_found" if status == 404 else None
        ).response()

    routes = [
        Route("/v1/chat/completions", endpoint("chat", chat), methods=["POST"]),
        Route("/v1/grade", endpoint("grade", grade_endpoint), methods=["POST"]),
        Route("/v1/models", endpoint("models", models), methods=["GET"]),
        Route("/v1/models/{name:path}", endpoint("models", model), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", endpoint("metrics", metrics), methods=["GET"]),
    ]
    if batch_api is not None:
        routes += batch_api.routes(endpoint)
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})
    app.state.batch_api = batch_api
    return app


def _model_card(service: Service) -> dict:
    return {"id": service.config.model_name, "object": "model", "created": int(time.time()),
            "owned_by": "prom-local", "prom_local": service.describe()}
