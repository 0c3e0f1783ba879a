"""The OpenAI chat request as this server accepts it, validated with pydantic.

Only what changes the output is modelled; other OpenAI fields (user, metadata, store...) are
accepted and ignored, as OpenAI-compatible servers commonly do, so that clients which always
send them keep working. Anything modelled with a wrong type or out of range is a 400 that names
the field (`param`), which the `openai` SDK raises as BadRequestError.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

from .errors import ApiError, bad_request
from .limits import (MAX_CHOICES, MAX_MESSAGES, MAX_NAME_CHARS, MAX_PARTS, MAX_REPEAT_PENALTY, MAX_SEED, MAX_STOP,
                     MAX_STOP_CHARS, MAX_TOKENS, MAX_TOP_K, loads)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)

    @field_validator("content")
    @classmethod
    def _parts(cls, value):
        if isinstance(value, list) and len(value) > MAX_PARTS:
            raise ValueError(f"at most {MAX_PARTS} content parts")
        return value

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    seed: StrictInt | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: Union[str, list[str], None] = None
    n: StrictInt = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop sequences are at most {MAX_STOP_CHARS} characters")
        return stops

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])

    @property
    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def parse_chat(data: object) -> ChatRequest:
    """A parsed body (limits.parse_json; raw bytes are parsed here) as a ChatRequest, or a 400
    naming the field."""
    if isinstance(data, (bytes, bytearray)):
        data = loads(bytes(data))
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    try:
        request = ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise _from_validation(exc) from None
    if request.top_logprobs is not None and not request.logprobs:
        raise bad_request("top_logprobs needs logprobs: true.", param="top_logprobs")
    return request


def _from_validation(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    param = ""
    for part in first["loc"]:
        # pydantic names the union member it tried ("str", "list[TextPart]", "function-after[...]"):
        # not a field of the request.
        if isinstance(part, int):
            param += f"[{part}]"
        elif not any(c in part for c in "[]()-") and part not in ("str", "float", "int", "bool"):
            param += ("." if param else "") + part
    message = first["msg"]
    return bad_request(f"Invalid value for '{param}': {message}" if param else message, param=param or None)


class GradeSampling(BaseModel):
    """POST /v1/grade's optional "sampling": the SamplingParams of `score`'s options (a `--server`
    client sends its own); fields left out keep the server's."""

    model_config = ConfigDict(extra="forbid")
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    top_k: StrictInt | None = Field(default=None, ge=0, le=MAX_TOP_K)
    repeat_penalty: float | None = Field(default=None, gt=0, le=MAX_REPEAT_PENALTY, allow_inf_nan=False)
    seed: StrictInt | None = Field(default=None, ge=0, le=MAX_SEED)
    max_tokens: StrictInt | None = Field(default=None, ge=0, le=MAX_TOKENS)
    n: StrictInt | None = Field(default=None, ge=1)   # samples per record (score --samples)


ENVELOPE_KEYS = ("records", "sampling", "both_orders")


def parse_grade(data: object) -> tuple[object, dict, bool]:
    """POST /v1/grade's body -> (the record or list of records, sampling fields given, both_orders).
    The body is a record, a list of records, or {"records": record-or-list, "sampling": {...},
    "both_orders": bool} (both_orders: relative records graded A/B and B/A, as `score --both-orders`)."""
    if not (isinstance(data, dict) and "records" in data):
        return data, {}, False
    unknown = [k for k in data if k not in ENVELOPE_KEYS]
    if unknown:
        raise bad_request(f"Unknown field '{unknown[0]}' beside 'records' (expected: "
                          f"{', '.join(ENVELOPE_KEYS)}).", param=unknown[0])
    sampling = data.get("sampling") or {}
    if not isinstance(sampling, dict):
        raise bad_request("'sampling' must be an object.", param="sampling")
    try:
        given = GradeSampling.model_validate(sampling).model_dump(exclude_none=True)
    except ValidationError as exc:
        error = _from_validation(exc)
        error.param = f"sampling.{error.param}" if error.param else "sampling"
        error.message = error.message.replace("Invalid value for '", "Invalid value for 'sampling.")
        raise error from None
    both_orders = data.get("both_orders", False)
    if not isinstance(both_orders, bool):
        raise bad_request("'both_orders' must be true or false.", param="both_orders")
    return data["records"], given, both_orders
