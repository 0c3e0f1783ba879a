"""The library API: record -> prompt -> tokens -> engine -> Grade.

`Judge` ties a prompt profile to an engine. It is what the CLI, the TUI and Python users call;
`absolute_grade` mirrors prometheus-eval's signature so its users can switch in one line.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from ..engine import (DoneEvent, Engine, EngineConfig, EngineStats, ErrorEvent, GenOutput, GenRequest, SamplingParams,
                     TokenEvent)
from ..engine.model_info import ModelInfo, StoreName, describe_engine
from ..errors import InputError
from .backend import RowStream
from .kinds import AbsoluteGrader, Grader
from .grades import Grade
from .prompt_tokens import render_prompt, tokenize_prompt
from .prometheus_eval_calls import PrometheusEvalCalls
from .prompts import PromptProfile, get_profile
from .records import AnyRecord, Record
from .samples import combine
from .verdict_tokens import VerdictTokens
from .verdicts import SCORE_STYLE, Verdict, VerdictReader
from ..settings import DEFAULT_PROFILE


class Judge(RowStream, PrometheusEvalCalls):
    """A Prometheus-style judge on a local GGUF.

    >>> judge = Judge("models/prometheus-ko/prometheus-ko.Q4_K_M.gguf")
    >>> feedbacks, scores = judge.absolute_grade(instructions=[...], responses=[...], rubric=rubric)

    `sampling=SamplingParams(n=3, temperature=1.0, ...)` grades each record from 3 samples that
    share one prompt computation (see samples.py); the engine then keeps at least 3 sequences.
    """

    def __init__(self, model: str | Path, *, profile: str | PromptProfile = DEFAULT_PROFILE,
                 engine: EngineConfig | None = None, sampling: SamplingParams | None = None,
                 on_status: Callable[[str], None] | None = None):
        profile = get_profile(profile) if isinstance(profile, str) else profile  # before the load
        engine = engine or EngineConfig()
        if sampling is not None and sampling.n > engine.min_parallel:
            engine = replace(engine, min_parallel=sampling.n)   # one sequence per sample
        self._attach(Engine(model, engine, on_status=on_status), profile, sampling)

    @classmethod
    def with_engine(cls, engine, *, profile: str | PromptProfile = DEFAULT_PROFILE,
                    sampling: SamplingParams | None = None) -> "Judge":
        """A Judge around an engine that already exists: anything with `model` (tokenizer and
        template) and `generate(requests)` yielding Token/Done/Error events, e.g. a test's
        scripted engine. The Judge owns it from here (close() closes it)."""
        judge = cls.__new__(cls)
        judge._attach(engine, get_profile(profile) if isinstance(profile, str) else profile, sampling)
        return judge

    def _attach(self, engine, profile: PromptProfile, sampling: SamplingParams | None) -> None:
        self.profile = profile
        self.sampling = sampling or SamplingParams()
        self.engine = engine
        self.model = engine.model
        self.scores = VerdictReader(SCORE_STYLE, self.model, self.profile.score_continuation)
        self._pairs = None   # the relative half (pairwise.PairGrader), made on first use

    def with_sampling(self, sampling: SamplingParams) -> "Judge":
        """This judge with other sampling settings, on the same model and engine (a view for one
        request or call: closing either closes both)."""
        view = copy.copy(self)
        view.sampling = sampling
        view._pairs = None   # the relative half reads its own judge's sampling
        return view

    @property
    def pairs(self):
        """Relative grading on this judge; a UsageError when the profile has no relative prompt."""
        if self._pairs is None:
            from .pairwise import PairGrader
            self._pairs = PairGrader(self)
        return self._pairs

    @property
    def score_tokens(self) -> VerdictTokens:
        """How this model writes the scores 1..5 and the score marker (verdict_tokens.py)."""
        return self.scores.tokens

    # -- record -> prompt -> tokens -------------------------------------------------------------
    def tokenize_prompt(self, record: AnyRecord) -> list[int]:
        """Prompt ids; record text is always plain text, never control tokens (see prompt_tokens)."""
        return tokenize_prompt(record, self.profile, self.model)

    # -- tokens -> engine -> grade --------------------------------------------------------------
    def grader_for(self, record: AnyRecord) -> Grader:
        """The one place a record's kind is asked: its Grader (kinds.py). A UsageError for a pair
        when the profile has no relative prompt."""
        return self.pairs if record.is_relative else AbsoluteGrader(self)

    def record_request(self, record: AnyRecord, cancel: threading.Event | None = None, *,
                       samples: int | None = None) -> GenRequest:
        """The engine request for a record: the Judge's sampling, `samples` outputs of it if given
        (else SamplingParams.n); samples_grade makes its outputs into the record's row. A pair
        (relative record) is graded once per order: samples apply to absolute records."""
        return self.grader_for(record).request(record, cancel=cancel, samples=samples)

    def grading_request(self, tokens: list[int], *, params: SamplingParams | None = None,
                        tag: object = None, cancel: threading.Event | None = None) -> GenRequest:
        """A request for any prompt that asks for a Prometheus verdict (a record's, or an HTTP
        client's own grading prompt): probes at the score, and the forced-score continuation."""
        return self.scores.request(tokens, params=params or self.sampling, tag=tag, cancel=cancel)

    def verdict(self, out: GenOutput) -> Verdict:
        """The score of a finished grading request, and how sure the model was of it."""
        return self.scores.verdict(out)

    def record_requests(self, record: AnyRecord, cancel: threading.Event | None = None, *,
                        both_orders: bool = False) -> list[GenRequest]:
        """The requests one record needs: one, or two for a pair graded in both orders."""
        return self.grader_for(record).requests(record, both_orders=both_orders, cancel=cancel)

    def record_grade(self, record: AnyRecord, results: Sequence[Sequence[GenOutput] | Exception]) -> Grade:
        """The row of a record from what each of its requests (record_requests) ended with: its
        outputs (one per sample), or the exception that stopped it."""
        grade = self._record_grade(record, results)
        warning = self.profile.frame_warning(record)
        if warning:
            grade.extra["warning"] = warning
        return grade

    def _record_grade(self, record: AnyRecord, results: Sequence[Sequence[GenOutput] | Exception]) -> Grade:
        grader = self.grader_for(record)
        for result in results:
            if isinstance(result, Exception):
                return grader.failed(record, result)
        return grader.row(record, results)  # type: ignore[arg-type]

    def to_grade(self, record: AnyRecord, out: GenOutput) -> Grade:
        return self.grader_for(record).to_grade(record, out)

    def samples_grade(self, record: Record, outputs: Sequence[GenOutput]) -> Grade:
        """The row of a record graded from several samples (SamplingParams.n): see samples.combine."""
        outputs = sorted(outputs, key=lambda out: out.index)
        if len(outputs) == 1:
            return self.to_grade(record, outputs[0])
        return combine([self.to_grade(record, out) for out in outputs])

    def finished_rows(self, records: Iterable[AnyRecord | Grade], *,
                      on_token: Callable[[AnyRecord, str], None] | None = None,
                      cancel: threading.Event | None = None,
                      both_orders: bool = False) -> Iterator[tuple[int, Grade]]:
        """(input index, row) for every record, up to the engine's n_parallel at once, in the order
        the engine finishes them (RowStream.grade_stream puts them in input order). With n samples per
        record, each record's row combines its n outputs (samples_grade) and on_token streams the
        first sample's text."""
        order: dict[int, AnyRecord] = {}
        parts: dict[int, list] = {}   # what each of a record's requests ended with, by request
        ready: deque[tuple[int, Grade]] = deque()   # ready-made rows, out at the next event
        outputs: dict[tuple[int, int], list[GenOutput]] = {}   # the samples a request has ended
        expected: dict[tuple[int, int], int] = {}              # how many samples it gives

        def requests():
            for i, item in enumerate(records):
                if isinstance(item, Grade):  # a ready-made row (an input error)
                    ready.append((i, item))
                    continue
                order[i] = item
                reqs = self.record_requests(item, cancel, both_orders=both_orders)
                parts[i] = [None] * len(reqs)
                for k, req in enumerate(reqs):
                    req.tag = (i, k)
                    expected[(i, k)] = max(1, req.params.n)
                    yield req

        for event in self.engine.generate(requests()):
            while ready:
                yield ready.popleft()
            if isinstance(event, TokenEvent):
                if on_token is not None and event.tag[1] == 0 and event.index == 0:
                    on_token(order[event.tag[0]], event.text)   # a pair streams its first order
                continue
            settled = _request_over(event, outputs, expected)
            if settled is None:
                continue
            (i, k), result = settled
            parts[i][k] = result
            if all(part is not None for part in parts[i]):
                yield i, self.record_grade(order.pop(i), parts.pop(i))
        while ready:   # ready-made rows after the last engine event
            yield ready.popleft()
        for (i, _k), outs in outputs.items():  # an engine that gave fewer samples than asked (a test's)
            yield i, self.samples_grade(order[i], outs)

    # -- what the shells ask of the engine (serve, bench, Ray workers), so none reaches through ----
    @property
    def n_parallel(self) -> int:
        """Sequences decoded side by side: the most samples of one record a request may ask for."""
        return self.engine.n_parallel

    def describe_engine(self) -> dict:
        """Engine.describe(): model, n_ctx, --parallel, GPU layers, backend, KV cache, draft."""
        return self.engine.describe()

    def engine_stats(self) -> EngineStats:
        """What the engine counted so far (drafted and accepted tokens...)."""
        return self.engine.stats

    def model_info(self, resolved: StoreName | None = None) -> ModelInfo:
        """What the model panels show: name, quant, size, GPU layers, context (`resolved`, the
        store's entry, names it as the store does)."""
        return describe_engine(self.engine, resolved)

    def snapshot(self) -> dict:
        """Engine.snapshot(): requests busy, waiting and free slots, for monitoring."""
        return self.engine.snapshot()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _request_over(event, outputs: dict[tuple[int, int], list[GenOutput]],
                  expected: dict[tuple[int, int], int]) -> tuple[tuple[int, int], object] | None:
    """((record index, request index), what the request ended with) once an engine event ends a
    request: its outputs when the last of its samples is done, or its error; None otherwise."""
    if isinstance(event, DoneEvent):
        key = event.output.tag
        outputs.setdefault(key, []).append(event.output)
        if len(outputs[key]) < expected[key]:
            return None
        return key, outputs.pop(key)
    if isinstance(event, ErrorEvent):
        outputs.pop(event.tag, None)
        return event.tag, event.error
    return None


__all__ = ["Judge", "Verdict", "render_prompt", "InputError"]
