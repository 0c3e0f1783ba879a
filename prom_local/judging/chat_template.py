"""Render a chat template (Jinja, as stored in GGUF / tokenizer_config) the way transformers does.

Kept apart from prompts.py: profiles decide *what* the messages say; this decides how a model's own
template turns them into one string. We mirror transformers' environment (sandboxed, trim_blocks,
lstrip_blocks, `raise_exception`) so that templates behave identically in both.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(template: str, messages: list[dict[str, str]], *, bos_token: str = "",
                eos_token: str = "", add_generation_prompt: bool = True) -> str:
    return _compile(template).render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                     add_generation_prompt=add_generation_prompt)
