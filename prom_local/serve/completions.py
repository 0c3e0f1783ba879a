"""POST /v1/chat/completions: OpenAI's chat API on the shared engine, whole or streamed (SSE)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable

import anyio
from sse_starlette.sse import EventSourceResponse

from ..engine import DoneEvent, ErrorEvent, GenOutput, TokenEvent
from ..errors import ContextOverflow, PromLocalError
from ..judging.judge import Judge, Verdict
from ..judging.rubrics import SCORES
from .bridge import Flight, disconnected, finish_unless_gone
from .chat import StopScanner, TokenLogprobs, engine_request, is_grading, prompt_tokens
from .errors import ApiError, ClientGone, bad_request, model_not_found
from .schema import ChatRequest, parse_chat
from .service import Service

log = logging.getLogger("prom_local.serve")


@dataclass
class Choice:
    """One choice as it is produced: text passed through the stop scanner, then the verdict."""

    index: int
    scanner: StopScanner
    logprobs: TokenLogprobs | None
    sent_logprobs: int = 0
    output: GenOutput | None = None
    verdict: Verdict | None = None
    suffix: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.scanner.text + self.suffix

    @property
    def finish_reason(self) -> str:
        if self.scanner.stopped or self.output is None:
            return "stop"
        return "length" if self.output.finish_reason == "length" else "stop"

    def logprobs_since(self) -> dict | None:
        if self.logprobs is None:
            return None
        new = self.logprobs.entries[self.sent_logprobs:]
        self.sent_logprobs += len(new)
        return {"content": new}


class ChatCall:
    """One HTTP chat request: its validated body, prompt, engine requests and choices."""

    def __init__(self, service: Service, judge: Judge, request: ChatRequest, tokens: list[int]):
        self.service, self.judge, self.request, self.tokens = service, judge, request, tokens
        self.grading = is_grading(request)
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        reqs, self.choices = [], []
        for i in range(request.n):
            req, logprobs = engine_request(judge, request, tokens, service.config.sampling, i, self.grading)
            reqs.append(req)
            self.choices.append(Choice(i, StopScanner(request.stops), logprobs))
        self.flight: Flight = service.submit(reqs)

    def on_token(self, choice: Choice, event: TokenEvent) -> str:
        delta = choice.scanner.feed(event.text)
        if choice.scanner.stopped:
            self.flight.handles[choice.index].cancel()  # free the sequence now
        return delta

    def on_done(self, choice: Choice, out: GenOutput) -> str:
        choice.output = out
        tail = choice.scanner.flush()
        if self.grading and not choice.scanner.stopped:
            choice.verdict = self.judge.verdict(out)
            choice.suffix = choice.verdict.suffix
            choice.extra = _verdict_fields(choice.verdict, out)
        else:
            choice.extra = {"reused_prompt_tokens": out.reused_prompt_tokens}
        return tail + choice.suffix

    def usage(self) -> dict:
        completion = sum(len(c.output.tokens) for c in self.choices if c.output is not None)
        # The forced continuation and the score are tokens the model was made to read/write too.
        completion += sum(len(self.judge.score_tokens.continuation) + 1
                          for c in self.choices if c.verdict is not None and c.verdict.forced)
        return {"prompt_tokens": len(self.tokens), "completion_tokens": completion,
                "total_tokens": len(self.tokens) + completion}

    def chunk(self, choices: list[dict], **extra) -> str:
        return json.dumps({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                           "model": self.service.config.model_name, "system_fingerprint": "prom-local",
                           "choices": choices, **extra}, ensure_ascii=False)

    def response(self) -> dict:
        body = {
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.service.config.model_name, "system_fingerprint": "prom-local",
            "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                         "logprobs": c.logprobs_since(), "finish_reason": c.finish_reason,
                         "prom_local": c.extra} for c in self.choices],
            "usage": self.usage(),
        }
        body["prom_local"] = {"grading": self.grading, **self.choices[0].extra}
        return body


def _verdict_fields(verdict: Verdict, out: GenOutput) -> dict:
    return {"score": verdict.score, "forced": verdict.forced,
            "probabilities": ({str(s): round(p, 6) for s, p in zip(SCORES, verdict.probabilities)}
                              if verdict.probabilities is not None else None),
            "score_mass": None if verdict.score_mass is None else round(verdict.score_mass, 6),
            "reused_prompt_tokens": out.reused_prompt_tokens}


async def endpoint(service: Service, caller: str, body: object, request) -> dict | EventSourceResponse:
    """POST /v1/chat/completions behind the door (door.py): streamed, or whole unless the client
    hangs up first."""
    return await service.cores.chat(service, caller, body, gone=lambda: disconnected(request), stream=True)


async def prepare(service: Service, caller: str, data: object) -> ChatCall:
    """The core's first half, for HTTP requests and batch lines alike: a parsed, bounded body from
    `caller` -> a chat call admitted to the engine (or the ApiError saying why not)."""
    body = parse_chat(data)
    judge = service.require_judge()
    if body.model != service.config.model_name:
        raise model_not_found(body.model, service.config.model_name)
    cap = service.config.max_tokens_cap
    if cap and (body.new_tokens or 0) > cap:
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise bad_request(f"{field} must be at most {cap} (the server's --max-tokens-cap).", param=field)
    if service.config.log_requests:
        log.info("chat request from %s: %s", caller,
                 json.dumps([m.model_dump() for m in body.messages], ensure_ascii=False))
    limit = service.max_prompt_tokens
    # Before rendering or tokenizing: text longer than the longest prompt could be, whatever its tokens.
    if sum(len(m.text.encode("utf-8")) for m in body.messages) > service.max_prompt_bytes:
        raise bad_request(f"This model's maximum prompt length is {limit} tokens; your messages are "
                          "longer than that many tokens can be.", param="messages", code="context_length_exceeded")
    try:
        tokens = await anyio.to_thread.run_sync(prompt_tokens, judge, body)
    except PromLocalError as exc:
        raise bad_request(str(exc), param="messages") from None
    if len(tokens) > limit:
        raise bad_request(f"This model's maximum prompt length is {limit} tokens; your messages "
                          f"resulted in {len(tokens)} tokens.", param="messages",
                          code="context_length_exceeded")
    return ChatCall(service, judge, body, tokens)


def _raise_for(event: ErrorEvent) -> None:
    error = event.error
    if isinstance(error, ContextOverflow):
        raise bad_request(str(error), param="messages", code="context_length_exceeded")
    raise ApiError(500, f"generation failed: {error}", type="server_error")


async def complete(call: ChatCall, gone: Awaitable[None]) -> dict:
    """The core's second half: the whole answer. ClientGone when `gone` ends first (the client
    went away, the batch was cancelled): the sequences are cancelled then."""

    async def collect() -> None:
        async for index, event in call.flight.events():
            choice = call.choices[index]
            if isinstance(event, TokenEvent):
                call.on_token(choice, event)
            elif isinstance(event, DoneEvent):
                call.on_done(choice, event.output)
            elif isinstance(event, ErrorEvent):
                _raise_for(event)

    if not await finish_unless_gone(gone, collect(), call.flight):   # raises the engine's ApiError
        raise ClientGone()
    return call.response()


def stream(call: ChatCall) -> EventSourceResponse:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""

    async def events():
        async for data in chunks(call):
            yield {"data": data}

    return EventSourceResponse(events(), ping=15, sep="\n")


async def chunks(call: ChatCall):
    """The `data` of each server-sent event of a streamed answer (what stream() sends, and what an
    engine of `serve --ray` sends back to the front, serve/cluster/engine_actor.py)."""
    try:
        yield call.chunk([{"index": c.index, "delta": {"role": "assistant", "content": ""},
                           "logprobs": None, "finish_reason": None} for c in call.choices])
        async for index, event in call.flight.events():
            choice = call.choices[index]
            if isinstance(event, (TokenEvent, DoneEvent)):
                text = (call.on_token(choice, event) if isinstance(event, TokenEvent)
                        else call.on_done(choice, event.output))
                if text:
                    yield call.chunk([{"index": index, "delta": {"content": text},
                                       "logprobs": choice.logprobs_since(), "finish_reason": None}])
                if isinstance(event, DoneEvent):
                    yield call.chunk([{"index": index, "delta": {}, "logprobs": None,
                                       "finish_reason": choice.finish_reason, "prom_local": choice.extra}])
            elif isinstance(event, ErrorEvent):
                try:
                    _raise_for(event)
                except ApiError as exc:
                    yield json.dumps(exc.body())
                    return
        options = call.request.stream_options
        if options is not None and options.include_usage:
            yield call.chunk([], usage=call.usage())
        yield "[DONE]"
    finally:
        # Normal end: nothing left to cancel. Client gone (the task is cancelled): the
        # sequences leave the engine at its next step.
        call.flight.cancel()
