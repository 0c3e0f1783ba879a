"""`prom-local serve`: the judge as an OpenAI-compatible HTTP service (library: prom_local.serve)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ExitCode, PromLocalError
from ..store.models import resolve_model
from .options import EngineOptions, err_console, with_engine_options
from ..settings import ENV_API_KEY, serve_data_dir

EXIT_BAD_OPTION = ExitCode.USAGE


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        err_console.print(f"prom-local: error: cannot listen on {host}:{port}: {exc.strerror}")
        raise typer.Exit(EXIT_BAD_OPTION) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _cap_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas for this process (MALLOC_ARENA_MAX, if set, wins). glibc gives
    threads arenas of their own, up to 8 per core, and a server starts threads per request (the
    ASGI worker pool, /v1/grade's readers): measured on 2 cores, RSS rose ~20 MiB over the first
    ~40 soak rounds as arenas filled, then stayed flat; with 2 arenas it is flat after the warm-up,
    and on a 64-core box the uncapped warm-up would be far larger. llama.cpp allocates its buffers
    once, and Python's small objects use its own allocator, so few calls contend for the arenas."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    M_ARENA_MAX = -8
    mallopt(M_ARENA_MAX, arenas)


def _model_here(opts: EngineOptions, ray: str | None) -> tuple[Path, str | None]:
    """The model's path and profile on this machine. With --ray the engines resolve it on their own
    nodes, so this machine need not hold it (the name and profile then come from the engines)."""
    try:
        resolved = resolve_model(opts.model, opts.models_dir)
    except PromLocalError:
        if ray is None:
            raise
        return Path(opts.model or "(the engines' default model)"), None
    return Path(resolved.path), resolved.profile


def _serve(config, host: str, port: int, warning: str | None, server_options: dict,
           cluster: dict | None = None) -> None:
    """Listen, load the model (or start the engines of --ray) in the background, and serve until
    SIGTERM/Ctrl-C."""
    import logging

    import uvicorn

    from ..serve import Service, create_app

    sock = _bind(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"{'https' if server_options.get('ssl_certfile') else 'http'}://{shown_host}:{sock.getsockname()[1]}"

    def say(message: str) -> None:
        err_console.print(f"[dim]{message}[/dim]")

    def ready(service: Service) -> None:
        if service.load_error is not None:
            server.should_exit = True  # the error is raised below, after the server stops
            return
        info = service.describe()
        engines = info.get("engines")
        where = str(config.model_path) if engines is None else f"sha256 {info['sha256'][:12]}…"
        err_console.print(f"ready: {url}/v1  model {config.model_name} ({where})  backend "
                          f"{info['backend']}  parallel {info['parallel']}  ctx {info['n_ctx']}"
                          + ("" if engines is None else "  engines " + ", ".join(
                              f"{e['engine']}@{e['host']}(pid {e['pid']}, {e['backend']}, parallel {e['parallel']})"
                              for e in engines["list"]))
                          + (f"  ({len(config.api_keys)} API key(s) required)" if config.api_keys else "")
                          + (f"  data {config.batches.data_dir}" if config.batches else ""))

    if cluster is None:
        service = Service(config, on_status=say, on_ready=ready)
    else:   # only with --ray: Ray is an optional extra
        from ..serve.cluster.front import ClusterService
        from ..serve.cluster.pool import EnginePool
        pool = EnginePool(config=config, say=say, **cluster)
        pool.connect()   # here, in the main thread: Ray's local processes live as long as it does
        service = ClusterService(config, pool, on_status=say, on_ready=ready)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", access_log=False,
                                          lifespan="on", **server_options))
    if warning:
        err_console.print(f"[bold red]{warning}[/bold red]")
    err_console.print(f"listening on {url} (loading {config.model_path.name}; "
                      "GET /health says 200 when ready)")
    # uvicorn re-raises the signal that stopped it once it has shut down; a handler of ours
    # makes that a clean exit instead of death by SIGTERM.
    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stopped.append(number))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if service.load_error is not None:
        raise service.load_error
    err_console.print("stopped")


def _batch_config(data_dir: Path | None, upload_mib: int, max_lines: int, free_mib: int, retention_days: float,
                  slots: int | None, key_bounds: tuple[int, int, int]):
    from ..serve.batches import BatchConfig

    data_dir = data_dir or serve_data_dir()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(f"{data_dir}: {exc.strerror}", param_hint="--data-dir") from None
    max_active, max_files, max_mib = key_bounds
    return BatchConfig(data_dir=data_dir, max_upload_bytes=upload_mib << 20, max_lines=max_lines,
                       min_free_bytes=free_mib << 20, retention_days=retention_days, batch_slots=slots,
                       max_active=max_active, max_files=max_files, max_key_bytes=max_mib << 20)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    @with_engine_options
    def serve(
        host: Annotated[str, typer.Option(
            "--host", help="Address to listen on. Loopback by default: give 0.0.0.0 (and an API key) "
            "to serve other machines.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0 = any free port).")] = 8000,
        api_key: Annotated[Optional[str], typer.Option(
            "--api-key", envvar=ENV_API_KEY,
            help="Require `Authorization: Bearer KEY` on /v1/* and /metrics (an empty key is an error).")] = None,
        api_key_file: Annotated[Optional[Path], typer.Option(
            "--api-key-file", help="Read the API keys from this file: `name=key` per line (`#` comments); "
            "the name shows in logs and metrics, never the key. A file with one bare key also works.")] = None,
        insecure_no_auth: Annotated[bool, typer.Option(
            "--insecure-no-auth", help="Serve a non-loopback --host WITHOUT any API key (refused otherwise).")] = False,
        allowed_host: Annotated[Optional[list[str]], typer.Option(
            "--allowed-host", help="A host name clients reach this server by (the Host header), beside "
            "the loopback names, the --host address and IP addresses; repeat for more. Others get 421 "
            "(this stops DNS rebinding).")] = None,
        ssl_certfile: Annotated[Optional[Path], typer.Option(
            "--ssl-certfile", help="Serve HTTPS with this certificate (PEM; with --ssl-keyfile).")] = None,
        ssl_keyfile: Annotated[Optional[Path], typer.Option(
            "--ssl-keyfile", help="The private key of --ssl-certfile (PEM).")] = None,
        max_tokens_cap: Annotated[Optional[int], typer.Option(
            "--max-tokens-cap", min=1, help="Most new tokens a client may ask for (400 above). Default: "
            "what the context holds after the prompt.")] = None,
        max_connections: Annotated[Optional[int], typer.Option(
            "--max-connections", min=1, help="Open connections at once; requests past it are answered 503. "
            "Default: 4096, or less if the process's file limit is lower (said at start-up).")] = None,
        request_read_timeout: Annotated[float, typer.Option(
            "--request-read-timeout", min=0.1, help="Seconds a client has to send a request's body; slower "
            "ones are answered 408.")] = 30.0,
        request_head_timeout: Annotated[Optional[float], typer.Option(
            "--request-head-timeout", min=0.1, help="Seconds a client has to send a request's headers "
            "(after connecting, or after its previous response); slower ones are dropped. Default: 10, "
            "or --request-read-timeout if shorter.")] = None,
        served_name: Annotated[Optional[str], typer.Option(
            "--served-name", help="The model name clients send (default: the GGUF file name "
            "without .gguf).")] = None,
        max_queue: Annotated[int, typer.Option(
            "--max-queue", min=0, help="Sequences that may wait beyond the --parallel slots; more "
            "are refused with 503 and Retry-After.")] = 64,
        max_body_bytes: Annotated[int, typer.Option(
            "--max-body-bytes", min=1024, help="Largest request body accepted (413 above).")] = 4 << 20,
        max_prompt_tokens: Annotated[Optional[int], typer.Option(
            "--max-prompt-tokens", min=1, help="Longest prompt accepted (400 above). Default: what "
            "the context (--ctx) holds.")] = None,
        log_requests: Annotated[bool, typer.Option(
            "--log-requests", help="Log request texts (messages, records). Off by default: "
            "graded data stays out of logs.")] = False,
        shutdown_timeout: Annotated[float, typer.Option(
            "--shutdown-timeout", min=0, help="On SIGTERM/Ctrl-C, seconds to let requests in flight "
            "finish before they are cancelled.")] = 30.0,
        data_dir: Annotated[Optional[Path], typer.Option(
            "--data-dir", help="Where the Batch API keeps uploaded files, batches and results (an SQLite "
            "index and the files). Default: prom-local/serve under the user data dir.")] = None,
        batch_max_upload_mib: Annotated[int, typer.Option(
            "--batch-max-upload-mib", min=1, help="Largest batch input file (413 above).")] = 200,
        batch_max_lines: Annotated[int, typer.Option(
            "--batch-max-lines", min=1, help="Most lines in a batch input file (400 above).")] = 50_000,
        batch_min_free_mib: Annotated[int, typer.Option(
            "--batch-min-free-mib", min=0, help="Disk space kept free under --data-dir: uploads that "
            "would go below are refused (507), running batches pause until space is freed.")] = 64,
        batch_retention_days: Annotated[float, typer.Option(
            "--batch-retention-days", min=0, help="Files (inputs and results) are deleted this long after "
            "they were written (inputs of running batches are kept until they end; 0 keeps them).")] = 30.0,
        batch_slots: Annotated[Optional[int], typer.Option(
            "--batch-slots", min=1, help="Most engine sequences batch work holds at once. Default: "
            "--parallel minus one (at least one), leaving a slot to interactive requests.")] = None,
        batch_key_max_active: Annotated[int, typer.Option(
            "--batch-key-max-active", min=1, help="Batches not yet ended per API key; more are refused "
            "(429) until one ends or is cancelled.")] = 100,
        batch_key_max_files: Annotated[int, typer.Option(
            "--batch-key-max-files", min=1, help="Files kept per API key (batch outputs included); uploads "
            "past it are refused (429) until some are deleted.")] = 1000,
        ray: Annotated[Optional[str], typer.Option(
            "--ray", metavar="auto|local|ADDRESS", help="Grade on the engines of a Ray cluster instead of "
            "one here: auto (RAY_ADDRESS, or the cluster started here with `ray start`, else a local "
            "instance), local, or HOST:PORT. This process keeps the HTTP side (keys, bounds, the Batch "
            "API). Needs the ray extra.")] = None,
        actors: Annotated[Optional[int], typer.Option(
            "--actors", min=1, help="With --ray: engines to start (default: one per GPU, or one per "
            "node without GPUs). Each has its own --parallel slots.")] = None,
        batch_key_max_mib: Annotated[int, typer.Option(
            "--batch-key-max-mib", min=1, help="Bytes kept per API key, in MiB (batch outputs included); "
            "uploads past it are refused (429) until some files are deleted.")] = 10240,
        *, opts: EngineOptions,
    ) -> None:
        """Serve the judge over HTTP: OpenAI's /v1/chat/completions and /v1/models, /v1/grade
        (records in, `score` rows out), OpenAI's Batch API (/v1/files, /v1/batches; kept under
        --data-dir across restarts), /health and /metrics. Every request is decoded in the one
        shared engine, together with the others (with --ray: on the engines of a Ray cluster).

        Exit codes: 0 stopped by SIGTERM or Ctrl-C; 2 bad option or port in use; 3 model missing
        or unloadable; 8 with --ray, a cluster problem (no cluster, no room, different files).
        """
        try:
            import uvicorn  # noqa: F401 - the extra's presence, checked before any work

            from ..serve import ServeConfig
            from ..serve.auth import allowed_hosts
            from ..serve.protocol import connection_bound, uvicorn_limits
            from .serve_auth import check_exposure, check_tls, server_keys
        except ImportError as exc:
            raise PromLocalError(f"serve needs its extra ({exc.name} is missing): "
                                 "pip install 'prom-local[serve]'") from None

        keys = server_keys(api_key, api_key_file)
        warning = check_exposure(host, keys, insecure_no_auth)
        check_tls(ssl_certfile, ssl_keyfile)
        batches = _batch_config(data_dir, batch_max_upload_mib, batch_max_lines, batch_min_free_mib,
                                batch_retention_days, batch_slots,
                                (batch_key_max_active, batch_key_max_files, batch_key_max_mib))
        if ray is None and actors is not None:
            raise typer.BadParameter("--actors needs --ray")
        _cap_malloc_arenas()
        path, profile = _model_here(opts, ray)
        name = served_name or (path.name.removesuffix(".gguf") if path.suffix == ".gguf" else "")
        config = ServeConfig(model_path=path, model_name=name,
                             profile=opts.profile or profile, engine=opts.engine_config(),
                             sampling=opts.sampling_params(), api_keys=keys, batches=batches, max_body_bytes=max_body_bytes,
                             max_prompt_tokens=max_prompt_tokens, max_queue=max_queue,
                             log_requests=log_requests, max_tokens_cap=max_tokens_cap,
                             allowed_hosts=allowed_hosts(host, allowed_host or ()),
                             request_read_timeout=request_read_timeout)
        connections, file_limit = connection_bound(max_connections)
        head_timeout = request_head_timeout or min(10.0, request_read_timeout)
        err_console.print(f"[dim]connections: at most {connections} open (file limit {file_limit}); headers "
                          f"within {head_timeout:g} s, bodies within {request_read_timeout:g} s[/dim]")
        cluster = None if ray is None else {"spec": opts.model, "models_dir": opts.models_dir,
                                            "address": ray, "actors": actors}
        _serve(config, host, port, warning, cluster=cluster, server_options={
            **uvicorn_limits(connections, head_timeout), "ssl_certfile": ssl_certfile,
            "ssl_keyfile": ssl_keyfile, "timeout_graceful_shutdown": shutdown_timeout})
