"""`--server URL` (and its API key) for score, grade and tui: grade on a running `prom-local serve`.

With --server the engine options split in three: sampling options (--temperature, --max-tokens,
--seed, --top-p, --top-k, --repeat-penalty) travel with every record, so rows equal a local run with
the same options; --parallel is how many records are in flight (default: the server's slots);
options about a local model and its engine (--models-dir, --profile, --ctx, --gpu-layers,
--threads, --verbose) are refused, since the server's own apply. --model is checked against the
model the server serves.

`backend_from_flags` turns these flags (and --ray, score only) into what backends/choose.py, the one
place that chooses where records are graded, takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from ..backends.choose import RayChoice, ServerChoice, connect, open_backend
from ..backends.remote import RemoteJudge, check_url, plain_http_warning
from ..errors import UsageError
from ..judging.backend import Backend
from .options import FLAGS, EngineOptions, err_console
from ..settings import ENV_SERVER_API_KEY

ServerOpt = Annotated[Optional[str], typer.Option(
    "--server", metavar="URL", help="Grade on a running `prom-local serve` at this URL (e.g. "
    "http://gpu-box:8000) instead of loading a model here. Sampling options and --parallel (records "
    "in flight; default: the server's slots) apply; local engine options are refused.")]
ApiKeyOpt = Annotated[Optional[str], typer.Option(
    "--api-key", envvar=ENV_SERVER_API_KEY, help="With --server: the key the server requires "
    "(its own variable: PROM_LOCAL_API_KEY is the server's).")]
ApiKeyFileOpt = Annotated[Optional[Path], typer.Option(
    "--api-key-file", help="With --server: read the key from this file (keeps it out of `ps`).")]

# Options about a local model and engine: meaningless against a server, refused rather than ignored.
LOCAL_ONLY = ("models_dir", "profile", "ctx", "gpu_layers", "threads", "verbose")


def check_remote_options(server: str | None, api_key_file: Path | None, opts: EngineOptions) -> None:
    """Option conflicts, before any file or network is touched. (--api-key alone is ignored: it
    may come from PROM_LOCAL_SERVER_API_KEY, set for every --server run.)"""
    if server is None:
        if api_key_file is not None:
            raise UsageError("--api-key-file needs --server")
        return
    check_url(server)
    for name in LOCAL_ONLY:
        flag = FLAGS[name]
        if getattr(opts, name) != flag.cli_default:
            raise UsageError(f"{flag.flags[0]} is an option of a local model; with --server the server's "
                             f"own engine options apply (drop {flag.flags[0]}, or drop --server)")


def read_key(api_key: str | None, api_key_file: Path | None) -> str | None:
    """The client's key: --api-key (or PROM_LOCAL_SERVER_API_KEY), or the one line of --api-key-file."""
    if api_key and api_key_file:
        raise typer.BadParameter("give --api-key or --api-key-file, not both")
    if api_key_file is not None:
        try:
            key = api_key_file.read_text("utf-8").strip()
        except OSError as exc:
            raise typer.BadParameter(f"{api_key_file}: {exc.strerror}", param_hint="--api-key-file") from None
        if not key:
            raise typer.BadParameter(f"{api_key_file} is empty", param_hint="--api-key-file")
        return key
    return api_key or None


def backend_from_flags(opts: EngineOptions, server: str | None, api_key: str | None = None,
                       api_key_file: Path | None = None, *, source: str = "<input>", quiet: bool = False,
                       need_tokens: Callable[[], int | None] | None = None, ray: str | None = None,
                       actors: int | None = None, both_orders: bool = False) -> Backend:
    """The flags as backends.choose.open_backend takes them: the server at --server, the engines of a
    Ray cluster at --ray (`actors` of them; pairs in both orders when `both_orders`, fixed as they
    load), else a local Judge (the model loaded here, its KV cache sized to what `need_tokens()`
    says the records need, asked only then: it tokenizes the input)."""
    remote = server_choice(server, api_key, api_key_file, opts, source=source) if server is not None else None
    cluster = None
    if ray is not None:
        from ..backends.ray.driver import JudgeSpec   # only with --ray: Ray is an optional extra

        spec = JudgeSpec(model=opts.model, profile=opts.profile, engine=opts.engine_config(),
                         sampling=opts.sampling_params(),
                         models_dir=str(opts.models_dir.resolve()) if opts.models_dir else None,
                         both_orders=both_orders)
        cluster = RayChoice(spec, address=ray, actors=actors)
    return open_backend(lambda: opts.judge(quiet=quiet, need_tokens=need_tokens() if need_tokens else None),
                        server=remote, ray=cluster, say=_say(quiet))


def server_from_flags(server: str, api_key: str | None, api_key_file: Path | None, opts: EngineOptions, *,
                      on_status: Callable[[str], None] | None = None) -> RemoteJudge:
    """A RemoteJudge on --server (the TUI's: it needs the server itself, not any backend)."""
    return connect(server_choice(server, api_key, api_key_file, opts), on_status or _say(False))


def server_choice(server: str, api_key: str | None, api_key_file: Path | None, opts: EngineOptions, *,
                  source: str = "<input>") -> ServerChoice:
    """--server with this command's sampling options and key (a warning first when the key would
    cross the network unencrypted)."""
    key = read_key(api_key, api_key_file)
    warning = plain_http_warning(server) if key else None
    if warning:   # shown even with --quiet: the key is about to leave unencrypted
        err_console.print(f"[bold yellow]{warning}[/bold yellow]")
    return ServerChoice(server, api_key=key, sampling=opts.sampling_params(), concurrency=opts.parallel,
                        model=opts.model, source=source)


def _say(quiet: bool) -> Callable[[str], None]:
    return (lambda m: None) if quiet else (lambda m: err_console.print(f"[dim]{m}[/dim]"))
