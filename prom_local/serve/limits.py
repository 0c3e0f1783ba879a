"""Bounds on what a client sends, checked before any real work, and the JSON parsing that keeps
a malformed body a 400 (never a 500, never a stalled event loop).

Every number and string a client gives is bounded: by the constants here, by the server's
options (--max-body-bytes, --max-tokens-cap, --max-queue), or by what the loaded model can do
(the context left after the prompt). docs/security.md lists them.
"""

from __future__ import annotations

import json
import math

import anyio

from .errors import bad_request

MAX_DEPTH = 32                 # nesting of objects and lists in a body (a record is 2-3 deep)
MAX_INT = 2 ** 63              # larger integers are refused wherever they appear
MAX_SEED = 2 ** 32 - 2         # llama.cpp takes 2^32-1 as "pick a random seed"
MAX_TOP_K = 1 << 20            # more than any vocabulary
MAX_REPEAT_PENALTY = 10.0
MAX_STOP_CHARS = 256
MAX_NAME_CHARS = 256
MAX_MESSAGES = 256
THREAD_PARSE_BYTES = 64 << 10  # bodies larger than this are parsed off the event loop


def _constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def loads(raw: bytes) -> object:
    try:
        data = json.loads(raw, parse_constant=_constant)
    except RecursionError:
        raise bad_request(f"The request body is nested more than {MAX_DEPTH} levels deep.",
                          code="invalid_json") from None
    except ValueError as exc:   # JSONDecodeError, bad UTF-8, NaN/Infinity, an integer of >4300 digits
        raise bad_request(f"The request body is not valid JSON: {str(exc)[:200]}", code="invalid_json") from None
    check_tree(data)
    return data


async def parse_json(raw: bytes) -> object:
    """The body as JSON, checked by check_tree; large bodies are parsed in a worker thread so
    other clients' requests and streams go on meanwhile."""
    if len(raw) <= THREAD_PARSE_BYTES:
        return loads(raw)
    return await anyio.to_thread.run_sync(loads, raw)


def _where(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
                   for i, p in enumerate(path)) or "body"


def check_tree(data: object) -> None:
    """Refuse what JSON allows but nothing here can use: nesting past MAX_DEPTH, integers past
    2^63 (Python would turn them into text slowly, or not at all), infinite floats (`1e999`),
    and strings with lone surrogates (`"\\ud800"`, valid JSON that is not text) in keys or values."""
    stack: list[tuple[object, tuple]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, (dict, list)):
            if len(path) >= MAX_DEPTH:
                raise bad_request(f"The request body is nested more than {MAX_DEPTH} levels deep.",
                                  param=_where(path[:3]), code="invalid_json")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key, path)
                stack.append((item, path + (key,)))
        elif isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
            raise bad_request(f"Invalid value for '{_where(path)}': integers must lie within ±2^63.",
                              param=_where(path))
        elif isinstance(value, float) and not math.isfinite(value):
            raise bad_request(f"Invalid value for '{_where(path)}': numbers must be finite.",
                              param=_where(path))


def _check_text(text: str, path: tuple) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"Invalid value for '{_where(path)}': the text holds a lone surrogate "
                          "(\\ud800-\\udfff), which is not a character.", param=_where(path)) from None


def text_bytes(value: object) -> int:
    """UTF-8 bytes of every string in a parsed body (keys included): an upper bound on what
    tokenizing it can cost, known without tokenizing."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item.encode("utf-8")) if not item.isascii() else len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total
