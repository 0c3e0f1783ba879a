"""What goes into the engine and what comes out: token lists in, token deltas and outputs out.

A request with `params.n` > 1 asks for n samples of one prompt: its events carry the sample's
`index`, and it ends with n DoneEvents (or one ErrorEvent).

Scores are not known here. A request carries generic hooks instead: token ids whose probabilities
to report when its text reaches a given state, and a callback that may append tokens when
generation ends (the forced verdict of judging/verdicts.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .config import SamplingParams


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log P(token) for every token of a row of logits, in float64, the peak taken out first so that
    exp cannot overflow. The engine's probes and the server's logprobs (on_sample's logits) both
    read logits through this one."""
    row = np.asarray(logits, dtype=np.float64)
    peak = row.max()
    return row - (peak + np.log(np.exp(row - peak).sum()))


@dataclass
class GenRequest:
    tokens: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    tag: object = None
    # Report P(token) for these ids at every step where probe_when(text so far) is true...
    probe_ids: Sequence[int] = ()
    probe_when: Callable[[str], bool] | None = None
    # ...and when generation ends, on_finish(text) may return tokens to append; the probabilities
    # of probe_ids after them are reported as `final_probe`.
    on_finish: Callable[[str], list[int] | None] | None = None
    cancel: threading.Event | None = None
    # Called in the engine's thread with every sampled token and the logits it was sampled from
    # (valid only during the call): the server's OpenAI logprobs. Must be quick.
    on_sample: Callable[[int, np.ndarray], None] | None = None


@dataclass
class GenOutput:
    tag: object
    text: str
    tokens: list[int]
    finish_reason: str                    # stop | length | cancelled
    prompt_tokens: int
    reused_prompt_tokens: int
    probes: list[tuple[int, np.ndarray, float]]   # (char offset, P(probe_ids), time)
    appended: str = ""                    # text of the tokens on_finish appended
    final_probe: np.ndarray | None = None
    seconds: float = 0.0
    first_token_seconds: float | None = None
    index: int = 0                        # which sample of the request (SamplingParams.n)
    drafted_tokens: int = 0               # tokens drafted from the prompt (--draft), verified
    accepted_tokens: int = 0              # of which the model's own choice (kept, one step each saved)


@dataclass
class TokenEvent:
    tag: object
    text: str
    index: int = 0                        # which sample of the request


@dataclass
class DoneEvent:
    output: GenOutput


@dataclass
class ErrorEvent:
    tag: object
    error: Exception


Event = TokenEvent | DoneEvent | ErrorEvent


@dataclass
class EngineStats:
    steps: int = 0
    batch_tokens: int = 0        # tokens decoded, prompt and generated
    prompt_tokens: int = 0       # prompt tokens of finished requests
    reused_tokens: int = 0       # of which taken from the KV cache instead of computed
    waits: int = 0               # requests that waited for another sequence's prefix
    forked_tokens: int = 0       # of reused_tokens, those copied from a sibling sample's prompt
    recalled_tokens: int = 0     # of reused_tokens, those loaded from the host prompt store
    drafted_tokens: int = 0      # drafts decoded for verification (--draft)
    accepted_tokens: int = 0     # of which accepted
    draft_rows: int = 0          # sequence-steps that carried drafts (verification steps)
