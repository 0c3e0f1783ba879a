"""Bounds on what a client sends, checked before any real work, and the JSON parsing that keeps
a malformed body a 400 (never a 500, never a stalled event loop).

Every number and string a client gives is bounded: by the constants here, by the server's
options (--max-body-bytes, --max-tokens-cap, --max-queue), or by what the loaded model can do
(the context left after the prompt). docs/security.md lists them.
"""

from __future__ import annotations

import json
import math
import unicodedata

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
MAX_ITEMS = 100_000            # entries in one list or object (a /v1/grade list is --parallel + --max-queue)
THREAD_PARSE_BYTES = 64 << 10  # bodies larger than this are parsed off the event loop
# The chat request (schema.py)
MAX_TOKENS = 2 ** 31 - 1       # llama.cpp counts in int32; the context left after the prompt cuts it further
MAX_PARTS = 256                # content parts of one message
MAX_CHOICES = 8                # n
MAX_STOP = 4                   # stop sequences
# /v1/grade (grade.py)
MAX_ID_CHARS = 256             # a bad record's id, as its error row repeats it
# The Batch API (batches/)
MAX_METADATA, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512   # OpenAI's own bounds on a batch's metadata
MAX_FORM_FIELD_BYTES = 1024    # an upload's form field other than the file (purpose), or one of its headers
MAX_FORM_PARTS = 8             # fields in an upload's form
MULTIPART_OVERHEAD = 64 << 10  # headers and boundaries around an upload's file part
# Connections (protocol.py)
MAX_HEADER_BYTES = 32 << 10    # h11's bound on an incomplete request head (its default is 16 KiB)


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
    """Refuse what JSON allows but nothing here can use: nesting past MAX_DEPTH, lists and objects
    of more than MAX_ITEMS entries, integers past 2^63 (Python would turn them into text slowly, or
    not at all), infinite floats (`1e999`), and strings with lone surrogates (`"\\ud800"`, valid JSON
    that is not text) in keys or values. One iterator per open container: the walk holds memory in
    proportion to the nesting depth, never to a list's length."""
    keys: list = []                  # the key of each open container below the top one
    frames: list = []                # one iterator per open container
    _enter(data, keys, frames) if isinstance(data, (dict, list)) else _check_leaf(data, keys)
    while frames:
        item = next(frames[-1], None)
        if item is None:             # this container is done
            frames.pop()
            if keys:
                keys.pop()
            continue
        key, value = item
        if isinstance(key, str) and not key.isascii():
            _check_text(key, tuple(keys))
        if isinstance(value, (dict, list)):
            keys.append(key)
            _enter(value, keys, frames)
        elif isinstance(value, (str, int, float)):
            _check_leaf(value, keys, key)


def _enter(value: dict | list, keys: list, frames: list) -> None:
    if len(keys) >= MAX_DEPTH:
        raise bad_request(f"The request body is nested more than {MAX_DEPTH} levels deep.",
                          param=_where(tuple(keys[:3])), code="invalid_json")
    if len(value) > MAX_ITEMS:
        where = _where(tuple(keys))
        raise bad_request(f"Invalid value for '{where}': at most {MAX_ITEMS} entries in a list or object.",
                          param=where, code="too_many_items")
    frames.append(iter(value.items()) if isinstance(value, dict) else enumerate(value))


_NO_KEY = object()


def _check_leaf(value: object, keys: list, key: object = _NO_KEY) -> None:
    # The path is built only for a message: a long list of fine numbers costs no tuples.
    def where() -> str:
        return _where(tuple(keys) + (() if key is _NO_KEY else (key,)))

    if isinstance(value, str):
        if not value.isascii():
            _check_text(value, None, where)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
        raise bad_request(f"Invalid value for '{where()}': integers must lie within ±2^63.", param=where())
    elif isinstance(value, float) and not math.isfinite(value):
        raise bad_request(f"Invalid value for '{where()}': numbers must be finite.", param=where())


def _check_text(text: str, path: tuple | None, where=None) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = where() if where is not None else _where(path)
        raise bad_request(f"Invalid value for '{shown}': the text holds a lone surrogate "
                          "(\\ud800-\\udfff), which is not a character.", param=shown) from None


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


MAX_QUERY_DIGITS = 9           # a query number longer than this is out of every range here
MAX_SHOWN_ID_CHARS = 64        # an id echoed in an error message is cut to this
MAX_FILENAME_CHARS = 255


def query_int(params, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter: ASCII digits only (Python's int() also reads `²`'s
    neighbours such as `１` and `٣`, and str.isdigit() lets `²` through to fail in int()), else a 400
    naming it."""
    raw = params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_QUERY_DIGITS and low <= int(raw) <= high):
        raise bad_request(f"{name} must be a whole number from {low} to {high}.", param=name)
    return int(raw)


def shown_id(ident: object) -> str:
    """A client-given id as an error message may echo it: printable, and cut to a sane length."""
    text = clean_text(str(ident))
    return text if len(text) <= MAX_SHOWN_ID_CHARS else text[:MAX_SHOWN_ID_CHARS] + "..."


def clean_text(text: str) -> str:
    """The text without control, format (bidi overrides such as U+202E, zero-width marks), line
    separator or unpaired surrogate characters: what a name shown to people must not hold."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c for c in text if c == " " or unicodedata.category(c) not in
                   ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))


def clean_filename(name: str) -> str:
    """An uploaded file's name as it is kept: its last path part, cleaned, bounded."""
    name = clean_text(name.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return name[:MAX_FILENAME_CHARS] or "input.jsonl"
