"""Chat messages -> prompt tokens, and what a chat request asks of the engine.

Messages are rendered with the GGUF's own chat template, and their content is tokenized as plain
text (prompt_tokens' mechanism): a client's text that contains `<|eot_id|>` cannot close a turn.
A request is treated as grading when it is recognisably a Prometheus prompt (the Korean card's
system prompt, or prometheus-eval's absolute-grading markers): it then carries the judge's probes
and forced-score continuation, so its text always ends in a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..engine import GenRequest, SamplingParams, log_softmax
from ..judging.judge import Judge
from ..judging.prompt_tokens import render_message_pieces, tokenize_pieces
from ..judging.prompts import PROMETHEUS_KO_SYSTEM
from .schema import ChatRequest

# prometheus-eval's ABSOLUTE_PROMPT (and its no-reference variant) put the whole task in the
# user turn between these markers.
PROMETHEUS_EVAL_MARKERS = ("###Task Description:", "###Feedback:")


def chat_messages(request: ChatRequest):
    """A `messages(wrap)` builder for render_message_pieces: every content is client text."""
    rows = [{"role": "system" if m.role == "developer" else m.role, "text": m.text} for m in request.messages]
    return lambda wrap: [{"role": r["role"], "content": wrap(r["text"])} for r in rows]


def prompt_tokens(judge: Judge, request: ChatRequest) -> list[int]:
    pieces = render_message_pieces(chat_messages(request), judge.model,
                                   fallback_template=judge.profile.chat_template,
                                   fallback_bos=judge.profile.bos_token)
    return tokenize_pieces(judge.model, pieces)


def is_grading(request: ChatRequest) -> bool:
    texts = [m.text for m in request.messages]
    if any(m.role in ("system", "developer") and m.text.strip() == PROMETHEUS_KO_SYSTEM
           for m in request.messages):
        return True
    return any(all(marker in text for marker in PROMETHEUS_EVAL_MARKERS) for text in texts)


def sampling(request: ChatRequest, default: SamplingParams, choice: int) -> SamplingParams:
    """The client's sampling where it gives one, else the server's. With n > 1 each choice gets
    its own seed, so sampled choices differ (greedy ones are equal, as they must be)."""
    seed = request.seed if request.seed is not None else default.seed
    return SamplingParams(
        temperature=default.temperature if request.temperature is None else request.temperature,
        top_p=default.top_p if request.top_p is None else request.top_p,
        top_k=default.top_k, repeat_penalty=default.repeat_penalty,
        seed=(seed + choice) & 0xFFFFFFFF,
        max_tokens=request.new_tokens or default.max_tokens)


@dataclass
class TokenLogprobs:
    """Logprobs of the sampled tokens, filled by the engine thread as it samples them."""

    top: int
    entries: list[dict] = field(default_factory=list)

    def record(self, judge: Judge, token: int, logits: np.ndarray) -> None:
        if judge.model.is_eog(token):  # the end-of-turn token is not part of the content
            return
        row = log_softmax(logits)
        entry = _entry(judge, token, float(row[token]))
        if self.top:
            best = np.argpartition(-row, self.top)[:self.top]
            best = best[np.argsort(-row[best])]
            entry["top_logprobs"] = [_entry(judge, int(t), float(row[t])) for t in best]
        else:
            entry["top_logprobs"] = []
        self.entries.append(entry)


def _entry(judge: Judge, token: int, logprob: float) -> dict:
    raw = judge.model.token_bytes(token)
    return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}


def engine_request(judge: Judge, request: ChatRequest, tokens: list[int], default: SamplingParams,
                   choice: int, grading: bool) -> tuple[GenRequest, TokenLogprobs | None]:
    params = sampling(request, default, choice)
    req = (judge.grading_request(tokens, params=params, tag=choice) if grading
           else GenRequest(tokens=tokens, params=params, tag=choice))
    logprobs = None
    if request.logprobs:
        logprobs = TokenLogprobs(request.top_logprobs or 0)
        req.on_sample = lambda token, logits: logprobs.record(judge, token, logits)
    return req, logprobs


class StopScanner:
    """Finds the client's stop strings in streamed text, holding back only what could still
    become one (so nothing after a stop string is ever sent)."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Text that is safe to send now."""
        if self.stopped:
            return ""
        self.text += delta
        if self.stops:
            cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
            if cut >= 0:
                self.stopped = True
                self.text = self.text[:cut]
                out, self.sent = self.text[self.sent:], len(self.text)
                return out
        safe = len(self.text) - self.hold if self.stops else len(self.text)
        out = self.text[self.sent:max(self.sent, safe)]
        self.sent += len(out)
        return out

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out
