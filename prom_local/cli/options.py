"""The engine's command-line options, declared once, and the one place that builds a Judge.

Each `Flag` below is one option: its flags, help, CLI type and which `EngineConfig` or
`SamplingParams` field it sets. Its default is that field's default (those dataclasses stay the one
source of defaults), except where a Flag says otherwise and why. From this table come the typer
options of every command that runs the model (`with_engine_options`), the `EngineOptions` holder
they fill, and the library's `EngineConfig` and `SamplingParams`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console

from ..engine import EngineConfig, SamplingParams
from ..judging.judge import Judge
from ..store.models import resolve_model
from ..engine.offload import CACHE_TYPE_CHOICES, parse_cache_type, parse_gpu_layers
from ..judging.samples import PROTOCOLS, apply_protocol
from ..settings import DEFAULT_MODEL, ENV_MODEL

# soft_wrap: long paths in messages stay on one line (greppable), tables still fit the terminal.
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

_FIELD = object()  # "the default of the dataclass field this flag sets"


@dataclasses.dataclass(frozen=True)
class Flag:
    name: str                                   # parameter name and EngineOptions attribute
    flags: tuple[str, ...]
    help: str
    type: Any                                   # what the command line parses
    into: tuple[type, str] | None = None        # (EngineConfig | SamplingParams, field) it sets
    default: Any = _FIELD
    parse: Callable[[Any], Any] | None = None   # command-line value -> field value (ValueError = bad)
    option: dict = dataclasses.field(default_factory=dict)   # more typer.Option settings

    @property
    def cli_default(self) -> Any:
        if self.default is not _FIELD:
            return self.default
        cls, name = self.into  # type: ignore[misc]
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)

    def annotated(self, *aliases: str) -> Any:
        """The typer annotation of this option (`aliases`: more spellings, for one command)."""
        return Annotated[self.type, typer.Option(*self.flags, *aliases, help=self.help, **self.option)]

    def value_for_field(self, value: Any) -> Any:
        try:
            return self.parse(value) if self.parse else value
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=self.flags[0]) from None


def _gpu_layers(value: str | int | None) -> int | None:
    return None if value is None else parse_gpu_layers(value)


def _cache_type(value: str) -> str:
    return parse_cache_type(value) or "auto"


FLASH_ATTN_CHOICES = {"auto": None, "on": True, "off": False}


def _flash_attn(value: str | None) -> bool | None:
    if value is None:   # the field's default: auto
        return None
    try:
        return FLASH_ATTN_CHOICES[value.strip().lower()]
    except KeyError:
        raise ValueError(f"must be one of {', '.join(FLASH_ATTN_CHOICES)}, not {value!r}") from None


ENGINE_FLAGS: tuple[Flag, ...] = (  # in --help order
    Flag("model", ("--model", "-m"), "GGUF path, or a store name like prometheus-ko or prometheus-ko:Q8_0.",
         Optional[str], default=None, option=dict(envvar=ENV_MODEL, show_default=DEFAULT_MODEL)),
    Flag("models_dir", ("--models-dir",), "Model store folder (default ./models in a checkout, else "
         "$PROM_LOCAL_MODELS or the user data dir).", Optional[Path], default=None),
    Flag("profile", ("--profile",), "Prompt profile (default: the model's, else prometheus-ko).",
         Optional[str], default=None),
    Flag("ctx", ("--ctx",), "Context per record in tokens, and its cap (default: score, bench and doctor "
         "size it to the longest record + --max-tokens; otherwise min(8192, the model's trained context)).",
         Optional[int], into=(EngineConfig, "n_ctx")),
    Flag("gpu_layers", ("--gpu-layers", "-ngl"), "auto (fit free GPU memory), all, 0 for CPU, or a number "
         "of layers.", Optional[str], into=(EngineConfig, "gpu_layers"), parse=_gpu_layers,
         option=dict(show_default="auto")),
    Flag("threads", ("--threads", "-t"), "CPU threads (default: all).", Optional[int],
         into=(EngineConfig, "n_threads")),
    # The library's default is one sequence (what a caller of Engine expects); the CLI sizes it
    # from free memory instead, and says what it chose.
    Flag("parallel", ("--parallel", "-p"), "Records in flight at once, decoded together in one llama.cpp "
         "context (shared prefixes are computed once). Default: as many as the KV cache fits in free "
         "memory, at most 4 on CPU and 16 on GPU; the choice is printed.", Optional[int],
         into=(EngineConfig, "n_parallel"), default=None, option=dict(min=1, show_default="auto")),
    Flag("seed", ("--seed",), "Sampling seed (used when --temperature > 0).", int,
         into=(SamplingParams, "seed")),
    Flag("temperature", ("--temperature",), "0 = greedy, deterministic.", float,
         into=(SamplingParams, "temperature")),
    Flag("top_p", ("--top-p",), "Sample only from the most likely tokens whose probabilities add up to "
         "this (1.0 = off).", float, into=(SamplingParams, "top_p")),
    Flag("top_k", ("--top-k",), "Sample only from this many most likely tokens (0 = off).", int,
         into=(SamplingParams, "top_k")),
    Flag("repeat_penalty", ("--repeat-penalty",), "Divide the logits of tokens already in the prompt or the "
         "output by this (multiply negative ones), as vLLM and transformers do; 1.0 = off.", float,
         into=(SamplingParams, "repeat_penalty")),
    Flag("samples", ("--samples",), "Sampled judgments per record, from one prompt computation (its KV "
         "copied to each); the row gets the mean score, the scores and their spread. Sample i is seeded "
         "--seed + i; use with --temperature > 0. Each sample takes one of the --parallel sequences "
         "(raised to N if fewer).", int,
         into=(SamplingParams, "n"), option=dict(min=1)),
    Flag("protocol", ("--protocol",), "paper: the Prometheus papers' sampling, as prometheus-eval's "
         "evaluation runs it: --temperature 1.0 --top-p 0.9 --repeat-penalty 1.03 --samples 3 (their "
         "mean is the score). Flags given explicitly override the protocol's values.", Optional[str],
         default=None, option=dict(metavar="|".join(PROTOCOLS))),
    Flag("max_tokens", ("--max-tokens",), "Most new tokens per feedback.", int,
         into=(SamplingParams, "max_tokens")),
    Flag("host_cache_mib", ("--host-cache-mib",), "Host memory (MiB) for the KV of earlier prompts the "
         "sequences no longer hold, loaded back when a prompt shares more with one of them than with any "
         "sequence (a client that grades several instructions in turn); 0 = off. Used only as prompts "
         "are replaced.", int, into=(EngineConfig, "host_cache_mib"), option=dict(min=0)),
    Flag("cache_type_k", ("--cache-type-k", "-ctk"), "Type of the KV cache's keys, as llama.cpp names them: "
         "f16, q8_0 (about half the memory) or q4_0; auto keeps f16 unless q8_0 fits more GPU layers or "
         "sequences (its effect on scores was measured small); the choice is printed.", str,
         into=(EngineConfig, "cache_type_k"), parse=_cache_type,
         option=dict(metavar="|".join(CACHE_TYPE_CHOICES))),
    Flag("cache_type_v", ("--cache-type-v", "-ctv"), "Type of the KV cache's values (as --cache-type-k); "
         "a quantized V turns flash attention on.", str, into=(EngineConfig, "cache_type_v"), parse=_cache_type,
         option=dict(metavar="|".join(CACHE_TYPE_CHOICES))),
    Flag("flash_attn", ("--flash-attn", "-fa"), "llama.cpp's flash attention, as llama-server names it: auto "
         "(llama.cpp's choice: on wherever the device runs it, the CPU included), on or off. Either way a record "
         "gets the same bits at any --parallel and from a cached prefix; on and off differ slightly "
         "(docs/exactness.md). The choice is printed.", Optional[str],
         into=(EngineConfig, "flash_attn"), parse=_flash_attn,
         option=dict(metavar="|".join(FLASH_ATTN_CHOICES), show_default="auto")),
    Flag("draft", ("--draft",), "Drafts from the prompt (speculative decoding by prompt lookup): at most N "
         "tokens per step copied from where the sequence's last words occurred in its prompt or output, "
         "verified in the same batch; the output is the model's own. 0 = off. Default: 8 with GPU layers, "
         "off on CPU, where it was measured to cost more than it saves (benchmarks/drafts.py).", Optional[int], into=(EngineConfig, "draft"),
         option=dict(min=0, show_default="8 on GPU, 0 on CPU")),
    Flag("verbose", ("--verbose",), "Show llama.cpp's own log.", bool, into=(EngineConfig, "verbose")),
)
FLAGS = {flag.name: flag for flag in ENGINE_FLAGS}

# For commands that take only some of these options. The model store's option is shared by every
# command that reads or writes the store; convert and pull also spell it --out.
ModelOpt = FLAGS["model"].annotated()
ModelsDirOpt = FLAGS["models_dir"].annotated()
StoreOutOpt = FLAGS["models_dir"].annotated("--out")
ProfileOpt = FLAGS["profile"].annotated()
# For commands (doctor, bench) that take a few engine options with defaults of their own.
CtxOpt = FLAGS["ctx"].annotated()
GpuLayersOpt = FLAGS["gpu_layers"].annotated()
ThreadsOpt = FLAGS["threads"].annotated()
ParallelOpt = FLAGS["parallel"].annotated()
MaxTokensOpt = FLAGS["max_tokens"].annotated()
DraftOpt = FLAGS["draft"].annotated()
VerboseOpt = FLAGS["verbose"].annotated()
CacheTypeKOpt = FLAGS["cache_type_k"].annotated()
CacheTypeVOpt = FLAGS["cache_type_v"].annotated()
FlashAttnOpt = FLAGS["flash_attn"].annotated()


class _EngineOptionsBase:
    def _build(self, cls: type) -> Any:
        return cls(**{flag.into[1]: flag.value_for_field(getattr(self, flag.name))
                      for flag in ENGINE_FLAGS if flag.into and flag.into[0] is cls})

    def engine_config(self) -> EngineConfig:
        config = self._build(EngineConfig)
        config.min_parallel = self.sampling_params().n   # a record's samples decode side by side
        return config

    def sampling_params(self) -> SamplingParams:
        """The flags' SamplingParams; --protocol's values for the fields not given explicitly."""
        explicit = {f.into[1] for f in ENGINE_FLAGS
                    if f.name in self.given and f.into and f.into[0] is SamplingParams}  # type: ignore[attr-defined]
        try:
            return apply_protocol(self._build(SamplingParams), self.protocol, keep=explicit)  # type: ignore[attr-defined]
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--protocol") from None

    def judge(self, *, quiet: bool = False, on_status: Callable[[str], None] | None = None,
              need_tokens: int | None = None) -> Judge:
        resolved = resolve_model(self.model, self.models_dir)  # type: ignore[attr-defined]
        engine = self.engine_config()
        engine.need_tokens = need_tokens  # the longest record's prompt + max tokens, when known
        say = on_status or ((lambda m: None) if quiet else (lambda m: err_console.print(f"[dim]{m}[/dim]")))
        say(f"model: {resolved.path}")
        return Judge(resolved.path, profile=self.profile or resolved.profile,  # type: ignore[attr-defined]
                     engine=engine, sampling=self.sampling_params(), on_status=say)


# The values of every engine option, as given on the command line (one attribute per Flag, with
# its default); engine_config() / sampling_params() turn them into the library's objects.
# `given`: the flags set on the command line or by environment (not defaults), which a --protocol
# does not override.
EngineOptions = dataclasses.make_dataclass(
    "EngineOptions", [(f.name, f.type, dataclasses.field(default=f.cli_default)) for f in ENGINE_FLAGS]
    + [("given", frozenset, dataclasses.field(default=frozenset()))],
    bases=(_EngineOptionsBase,))
EngineOptions.__module__ = __name__


def with_engine_options(func: Callable) -> Callable:
    """Give a command every engine option without repeating them. typer builds a command's options
    from its function's signature, so the wrapper's signature is the command's own parameters plus
    one per Flag; the wrapper collects those into `opts: EngineOptions`. (typer has no public way
    to add options to a command other than its signature.)"""
    hints = typing.get_type_hints(func, include_extras=True)  # resolves postponed annotations
    own = [p.replace(annotation=hints.get(name, p.annotation))
           for name, p in inspect.signature(func).parameters.items() if name != "opts"]
    extra = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.cli_default,
                               annotation=f.annotated()) for f in ENGINE_FLAGS]

    # typer hands a parameter annotated typer.Context the running command's context, which says
    # where each value came from (a --protocol must not override a flag given explicitly).
    context = inspect.Parameter(_CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = kwargs.pop(_CTX, None)
        opts = EngineOptions(**{name: kwargs.pop(name) for name in FLAGS}, given=_given(ctx, FLAGS))
        return func(*args, opts=opts, **kwargs)

    wrapper.__signature__ = inspect.Signature(own + extra + [context])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + extra + [context]}
    del wrapper.__wrapped__  # typer must read the new signature, not the wrapped function's
    return wrapper


_CTX = "engine_options_context"


def _given(ctx: typer.Context | None, names) -> frozenset:
    """Which of these parameters the command line (or the environment) set."""
    if ctx is None:
        return frozenset()
    sources = {name: ctx.get_parameter_source(name) for name in names}
    return frozenset(name for name, source in sources.items()
                     if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"))
