"""A scripted engine for tests that need a Judge but not real numbers (the CLI's rows, resume,
summary, exit codes): no weights load and nothing is decoded, so a run takes milliseconds.

It keeps the engine's side of the contract Judge relies on, with a real tokenizer: `model` is a
vocabulary-only llama.cpp load of a real GGUF (tokenizing and the chat template are real), and
`generate(requests)` yields the same events as prom_local's Engine, token by token, honouring
max_tokens, cancel, probe_when/probe_ids, on_finish (the forced score) and the context limit.
Only the text and the score probabilities are scripted: `Reply`, chosen per prompt by `script`.

    judge = Judge.with_engine(FakeEngine(smollm2_path, Reply("Good. [RESULT] 4")))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from prom_local.engine import (CONTINUATION_RESERVE, DoneEvent, ErrorEvent, GenOutput, GenRequest,
                               TokenEvent, load_vocab_only)
from prom_local.errors import ContextOverflow
from prom_local.engine.offload import OffloadPlan


@dataclass(frozen=True)
class Reply:
    """What the scripted model writes for one prompt, and its next-token distribution over the
    scores 1..5 wherever the judge probes it (after "[RESULT]", or after a forced marker)."""

    text: str = "The response is correct. [RESULT] 4"
    scores: Sequence[float] = (0.05, 0.05, 0.1, 0.6, 0.2)   # P("1") .. P("5"); the rest of the mass elsewhere
    stop: bool = True          # ends with end-of-turn; False = runs into max_tokens like a rambling model
    labels: Sequence[float] = (0.7, 0.2)   # P("A"), P("B") where a relative verdict is probed


Script = Callable[[str], Reply]


class FakeEngine:
    """`script(prompt_text) -> Reply`; a single Reply answers every prompt."""

    n_parallel = 1

    def __init__(self, model_path: str | Path, script: Script | Reply | None = None, *, n_ctx: int = 1024):
        self.model = load_vocab_only(model_path)
        self.script: Script = script if callable(script) else (lambda _prompt, r=script or Reply(): r)
        self.n_ctx = n_ctx
        self.plan = OffloadPlan(0, 0, self.model.n_layer, "CPU (scripted: nothing is decoded)")
        self.prompts: list[str] = []      # every prompt seen, for tests that check what was asked
        # The digit tokens a score probe reads: llama.cpp's tokenizer decides which ids they are.
        self._digit_ids = [self.model.tokenize(str(s), special=False) for s in range(1, 6)]
        self._label_ids = [self.model.tokenize(label, special=False) for label in ("A", "B")]

    def describe(self) -> dict:
        return {"model": str(self.model.path), "n_ctx": self.n_ctx, "n_parallel": 1, "backend": "fake"}

    def _distribution(self, reply: Reply) -> np.ndarray:
        probs = np.zeros(self.model.n_vocab)
        for ids, p in zip(self._digit_ids, reply.scores):
            probs[ids[0]] = p
        for ids, p in zip(self._label_ids, reply.labels):
            probs[ids[0]] = p
        return probs

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[TokenEvent | DoneEvent | ErrorEvent]:
        for req in requests:
            if len(req.tokens) + CONTINUATION_RESERVE + 1 > self.n_ctx:
                yield ErrorEvent(req.tag, ContextOverflow(len(req.tokens), self.n_ctx, req.params.max_tokens))
                continue
            yield from self._run(req)

    def _run(self, req: GenRequest):
        started = time.perf_counter()
        prompt = self.model.detokenize(req.tokens)
        self.prompts.append(prompt)
        reply = self.script(prompt)
        dist = self._distribution(reply)
        probe = (lambda: dist[np.asarray(req.probe_ids, dtype=np.int64)]) if req.probe_ids else (lambda: None)
        tokens = self.model.tokenize(reply.text, special=False)
        budget = max(0, min(req.params.max_tokens, self.n_ctx - len(req.tokens) - CONTINUATION_RESERVE))
        generated: list[int] = []
        raw = bytearray()
        text, probes, reason = "", [], "stop"
        # The engine's order for every step: cancel, probe the text so far, budget, next token.
        while True:
            if req.cancel is not None and req.cancel.is_set():
                reason = "cancelled"
                break
            if req.probe_ids and req.probe_when is not None and req.probe_when(text):
                probes.append((len(text), probe(), time.perf_counter()))
            if len(generated) >= budget or (not reply.stop and len(generated) == len(tokens)):
                reason = "length"
                break
            if len(generated) == len(tokens):
                break
            token = tokens[len(generated)]
            generated.append(token)
            raw += self.model.token_bytes(token)
            full = raw.decode("utf-8", "ignore")
            delta, text = full[len(text):], full
            if delta:
                yield TokenEvent(req.tag, delta)
        final, appended = None, ""
        if reason != "cancelled" and req.on_finish is not None:
            extra = req.on_finish(text)
            if extra:
                appended, final = self.model.detokenize(extra), probe()
        yield DoneEvent(GenOutput(tag=req.tag, text=text, tokens=generated, finish_reason=reason,
                                  prompt_tokens=len(req.tokens), reused_prompt_tokens=0, probes=probes,
                                  appended=appended, final_probe=final,
                                  seconds=time.perf_counter() - started, first_token_seconds=0.0))

    def close(self) -> None:
        if self.model is not None:
            self.model.close()
            self.model = None

    def __enter__(self) -> "FakeEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
