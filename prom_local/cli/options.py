"""Options shared by several commands, defined once, and the one place that builds a Judge."""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console

from ..engine import EngineConfig, SamplingParams
from ..judge import Judge
from ..models import resolve_model
from ..offload import parse_gpu_layers

# soft_wrap: long paths in messages stay on one line (greppable), tables still fit the terminal.
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="GGUF path, or a store name like prometheus-ko or prometheus-ko:Q8_0.",
    envvar="PROM_LOCAL_MODEL", show_default="prometheus-ko")]
ModelsDirOpt = Annotated[Optional[Path], typer.Option(
    "--models-dir", help="Model store folder (default ./models in a checkout, else $PROM_LOCAL_MODELS "
    "or the user data dir).")]
ProfileOpt = Annotated[Optional[str], typer.Option(
    "--profile", help="Prompt profile (default: the model's, else prometheus-ko).")]
CtxOpt = Annotated[Optional[int], typer.Option(
    "--ctx", help="Context per record in tokens, and its cap (default: score, bench and doctor size it to "
    "the longest record + --max-tokens; otherwise min(8192, the model's trained context)).")]
GpuLayersOpt = Annotated[str, typer.Option(
    "--gpu-layers", "-ngl", help="auto (fit free GPU memory), all, 0 for CPU, or a number of layers.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads (default: all).")]
ParallelOpt = Annotated[Optional[int], typer.Option(
    "--parallel", "-p", min=1, show_default="auto",
    help="Records in flight at once, decoded together in one llama.cpp context (shared prefixes "
         "are computed once). Default: as many as the KV cache fits in free memory, at most 4 on "
         "CPU and 16 on GPU; the choice is printed.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Sampling seed (used when --temperature > 0).")]
TempOpt = Annotated[float, typer.Option("--temperature", help="0 = greedy, deterministic.")]
TopPOpt = Annotated[float, typer.Option("--top-p")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="0 = off.")]
RepeatOpt = Annotated[float, typer.Option("--repeat-penalty", help="1.0 = off.")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", help="Most new tokens per feedback.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's own log.")]


ENGINE_OPTIONS: dict[str, tuple[object, object]] = {
    # name: (annotation, default) -- added to every command that runs the model
    "model": (ModelOpt, None),
    "models_dir": (ModelsDirOpt, None),
    "profile": (ProfileOpt, None),
    "ctx": (CtxOpt, None),
    "gpu_layers": (GpuLayersOpt, "auto"),
    "threads": (ThreadsOpt, None),
    "parallel": (ParallelOpt, None),
    "seed": (SeedOpt, 0),
    "temperature": (TempOpt, 0.0),
    "top_p": (TopPOpt, 1.0),
    "top_k": (TopKOpt, 0),
    "repeat_penalty": (RepeatOpt, 1.0),
    "max_tokens": (MaxTokensOpt, 512),
    "verbose": (VerboseOpt, False),
}


@dataclass
class EngineOptions:
    model: str | None = None
    models_dir: Path | None = None
    profile: str | None = None
    ctx: int | None = None
    gpu_layers: str = "auto"
    threads: int | None = None
    parallel: int | None = None          # None = auto (Engine chooses and says why)
    seed: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repeat_penalty: float = 1.0
    max_tokens: int = 512
    verbose: bool = False

    def engine_config(self) -> EngineConfig:
        try:
            layers = parse_gpu_layers(self.gpu_layers)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        return EngineConfig(n_ctx=self.ctx, gpu_layers=layers, n_threads=self.threads,
                            n_parallel=self.parallel, verbose=self.verbose)

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              repeat_penalty=self.repeat_penalty, seed=self.seed, max_tokens=self.max_tokens)

    def judge(self, *, quiet: bool = False, on_status: Callable[[str], None] | None = None,
              need_tokens: int | None = None) -> Judge:
        resolved = resolve_model(self.model, self.models_dir)
        engine = self.engine_config()
        engine.need_tokens = need_tokens  # the longest record's prompt + max tokens, when known
        say = on_status or ((lambda m: None) if quiet else (lambda m: err_console.print(f"[dim]{m}[/dim]")))
        say(f"model: {resolved.path}")
        return Judge(resolved.path, profile=self.profile or resolved.profile, engine=engine,
                     sampling=self.sampling_params(), on_status=say)


def with_engine_options(func: Callable) -> Callable:
    """Give a command every engine option without repeating them: the wrapper's signature (which
    typer reads) is the command's own parameters plus ENGINE_OPTIONS, collected into `opts`."""
    hints = typing.get_type_hints(func, include_extras=True)  # resolves postponed annotations
    own = [p.replace(annotation=hints.get(name, p.annotation))
           for name, p in inspect.signature(func).parameters.items() if name != "opts"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann)
             for name, (ann, default) in ENGINE_OPTIONS.items()]

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        opts = EngineOptions(**{name: kwargs.pop(name) for name in ENGINE_OPTIONS})
        return func(*args, opts=opts, **kwargs)

    wrapper.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
    del wrapper.__wrapped__  # typer must read the new signature, not the wrapped function's
    return wrapper
