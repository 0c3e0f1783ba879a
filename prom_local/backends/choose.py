"""The one place that chooses where records are graded: a server (`--server`), the engines of a
Ray cluster (`--ray`), else the local Judge (the model loaded in this process).

The shells say what was asked (cli/remote_opts.py turns the flags into a ServerChoice or a
RayChoice) and get a judging.backend.Backend; nothing else tests which one it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..engine import SamplingParams
from ..errors import UsageError
from ..judging.backend import Backend
from .remote import RemoteJudge, ServerInfo

if TYPE_CHECKING:
    from .ray.driver import JudgeSpec


@dataclass(frozen=True)
class ServerChoice:
    """Grade on the `prom-local serve` at `url`, with this client's sampling, `concurrency` records in
    flight (None: the server's slots); `model`, when given, must name the model the server serves."""

    url: str
    api_key: str | None = None
    sampling: SamplingParams | None = None
    concurrency: int | None = None
    model: str | None = None
    source: str = "<input>"     # the input's name, for error rows


@dataclass(frozen=True)
class RayChoice:
    """Grade on the engines of the Ray cluster at `address` (`actors` of them; None: as many as fit),
    each built from `spec` (pairs in both orders when spec.both_orders, fixed as they load)."""

    spec: "JudgeSpec"
    address: str = "auto"
    actors: int | None = None


def open_backend(local: Callable[[], Backend], *, server: ServerChoice | None = None,
                 ray: RayChoice | None = None, say: Callable[[str], None] = lambda message: None) -> Backend:
    """The backend asked for: the server, else the Ray engines (started and loaded), else `local()`
    (a Judge, made only when chosen: it loads the model)."""
    if server is not None and ray is not None:
        raise UsageError("give --server or --ray, not both")
    if server is not None:
        return connect(server, say)
    if ray is not None:
        return open_ray(ray, say)
    return local()


def open_ray(choice: RayChoice, say: Callable[[str], None]) -> Backend:
    """A RayScorer with its engines loaded (Ray is imported only here: an optional extra)."""
    from .ray.driver import RayScorer

    scorer = RayScorer(choice.spec, address=choice.address, actors=choice.actors, on_status=say)
    try:
        return scorer.start()
    except BaseException:
        scorer.close()
        raise


def connect(choice: ServerChoice, say: Callable[[str], None]) -> RemoteJudge:
    """A RemoteJudge on the server; refuses a `model` that names another model than the server's."""
    judge = RemoteJudge(choice.url, api_key=choice.api_key, sampling=choice.sampling,
                        concurrency=choice.concurrency, source=choice.source, on_status=say)
    info = judge.info
    if choice.model is not None and not model_matches(choice.model, info):
        judge.close()
        raise UsageError(f"--model {choice.model} (or PROM_LOCAL_MODEL) does not match the server at "
                         f"{info.url}, which serves {info.model}" + (f" ({info.path})" if info.path else "")
                         + ": drop --model to grade with it")
    say(f"server: {info.url}  model {info.model}  backend {info.backend}  parallel {info.parallel}"
        + (f"  (sending {judge.concurrency} at once)" if judge.concurrency != info.parallel else ""))
    return judge


def model_matches(spec: str, info: ServerInfo) -> bool:
    """Whether --model names the model the server serves: its served name, its file (path or name,
    with or without .gguf), or a store name like prometheus-ko or prometheus-ko:Q4_K_M."""
    wanted = Path(spec.replace(":", ".")).name.removesuffix(".gguf").lower()
    names = {info.model.lower()}
    if info.path:
        names.add(Path(info.path).name.removesuffix(".gguf").lower())
    return any(wanted == name or name.startswith(wanted + ".") for name in names)
