"""The ASGI app: routes, the error shape for every failure, the guard in front (Host, Origin,
Content-Type), and the model loading in the background."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import completions, grade
from .cores import LocalCores
from .door import Core, door
from .errors import ApiError, model_not_found
from .limits import shown_id
from .guard import Guard
from .metrics import CONTENT_TYPE
from .service import Service

log = logging.getLogger("prom_local.serve")


def create_app(service: Service, *, load: bool = True) -> Starlette:
    """The app around a Service. With `load`, the model loads in a background thread when the
    server starts (GET /health says 503 until then) and is freed when it stops."""

    if service.cores is None:   # `serve --ray` brings its own (serve/cluster/front.py)
        service.cores = LocalCores()
    batch_api = None
    if service.config.batches is not None:   # the Batch API (serve/batches/), with its data dir
        from .batches import BatchApi
        batch_api = BatchApi(service, service.config.batches)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if load:
            threading.Thread(target=service.load, name="prom-local-load", daemon=True).start()
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

    def refused(error: ApiError) -> None:
        service.metrics.request("guard", error.status, error.code)

    def route(path: str, name: str, core: Core, method: str = "GET") -> Route:
        return Route(path, door(service, name, functools.partial(core, service), body=method == "POST"),
                     methods=[method])

    routes = [
        route("/v1/chat/completions", "chat", completions.endpoint, "POST"),
        route("/v1/grade", "grade", grade.endpoint, "POST"),
        route("/v1/models", "models", _models),
        route("/v1/models/{name:path}", "models", _model),
        Route("/health", functools.partial(_health, service), methods=["GET"]),
        route("/metrics", "metrics", _metrics),
    ]
    if batch_api is not None:
        routes += batch_api.routes(functools.partial(door, service))
    middleware = [Middleware(Guard, hosts=service.config.allowed_hosts, on_refused=refused)]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers={HTTPException: _not_found})
    app.state.batch_api = batch_api
    return app


# -- the endpoints' cores: (service, caller, parsed body, request) -> response or JSON ------------------

async def _models(service: Service, caller: str, body: None, request: Request) -> dict:
    return {"object": "list", "data": [_model_card(service)]}


async def _model(service: Service, caller: str, body: None, request: Request) -> dict:
    name = request.path_params["name"]
    if name != service.config.model_name:
        raise model_not_found(shown_id(name), service.config.model_name)
    return _model_card(service)


async def _health(service: Service, request: Request) -> Response:
    # No key needed (load balancers, `--server` clients before they authenticate): nothing here
    # says where the model lies on disk, nor echoes a load error's paths.
    if service.load_error is not None:
        where = service.config.model_path
        error = str(service.load_error).replace(str(where.parent), "").replace(str(where), where.name)
        return JSONResponse({"status": "error", "error": error}, status_code=500)
    if not service.ready:   # loading, or (`serve --ray`) loaded but no engine is alive now
        body = {"status": "unavailable", **service.describe(public=True)} if service.loaded else {"status": "loading"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ok", **service.describe(public=True)})


async def _metrics(service: Service, caller: str, body: None, request: Request) -> Response:
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)


async def _not_found(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    return ApiError(status, f"{request.method} {request.url.path[:200]}: " + (
        "no such endpoint" if status == 404 else exc.detail), code="not_found" if status == 404 else None
    ).response()


def _model_card(service: Service) -> dict:
    return {"id": service.config.model_name, "object": "model", "created": int(time.time()),
            "owned_by": "prom-local", "prom_local": service.describe()}
