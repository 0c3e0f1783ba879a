"""prometheus-eval's calls on a Judge: `absolute_grade` and `relative_grade`, same arguments and
return shapes as `PrometheusEval`, so a script moves to prom-local by changing its model line.

`params` is prometheus-eval's sampling dict (vLLM's names: temperature, top_p, top_k, max_tokens,
repetition_penalty, seed); it is applied for that call. Unlike prometheus-eval there is no
resampling: a missing verdict is forced from the model's own distribution.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

from ..engine import SamplingParams
from .records import Record, RelativeRecord
from .rubrics import Rubric

# prometheus-eval's params keys (vLLM's SamplingParams names) -> prom-local's SamplingParams fields.
PARAM_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                "max_tokens": "max_tokens", "repetition_penalty": "repeat_penalty", "seed": "seed"}
# Keys prometheus-eval sends that change nothing here (best_of 1 is vLLM's default: one sample).
NEUTRAL_PARAMS = {"best_of": 1}


def sampling_from_params(base: SamplingParams, params: Mapping | None) -> SamplingParams:
    """`base` with prometheus-eval's `params` applied; a key that would silently mean something
    else here (best_of 3, presence_penalty...) is a ValueError naming it."""
    if not params:
        return base
    changes = {}
    for key, value in params.items():
        if key in PARAM_FIELDS:
            if key == "top_k" and value == -1:   # vLLM's "off"; prom-local's is 0
                value = 0
            changes[PARAM_FIELDS[key]] = value
        elif NEUTRAL_PARAMS.get(key, object()) != value:
            raise ValueError(f"params[{key!r}] = {value!r} is not supported by prom-local "
                             f"(supported: {', '.join(PARAM_FIELDS)}; best_of 1)")
    return replace(base, **changes)


class PrometheusEvalCalls:
    """Mixed into Judge: prometheus-eval's PrometheusEval methods over `grade_stream`."""

    def absolute_grade(self, *, instructions: Sequence[str], responses: Sequence[str],
                       rubric: str | Mapping[str, str] | Rubric | Sequence,
                       reference_answers: Sequence[str | None] | None = None,
                       params: Mapping | None = None) -> tuple[list[str], list[int | None]]:
        """Same call as prometheus-eval's `PrometheusEval.absolute_grade` -> (feedbacks, scores).
        Every score is an int unless a record errored (too long for the context)."""
        if len(instructions) != len(responses):
            raise ValueError("instructions and responses must have the same length")
        refs = list(reference_answers) if reference_answers is not None else [None] * len(responses)
        if len(refs) != len(responses):
            raise ValueError("reference_answers must have the same length as responses")
        rubrics = list(rubric) if isinstance(rubric, (list, tuple)) else [rubric] * len(responses)
        records = [Record(id=str(i), instruction=ins, response=res, rubric=_as_rubric(rb),
                          reference_answer=ref or None)
                   for i, (ins, res, ref, rb) in enumerate(zip(instructions, responses, refs, rubrics))]
        judge = self.with_sampling(sampling_from_params(self.sampling, params))
        grades = list(judge.grade_stream(records))
        return [g.feedback for g in grades], [g.score for g in grades]

    def relative_grade(self, *, instructions: Sequence[str], responses_A: Sequence[str],
                       responses_B: Sequence[str], rubric: str | Sequence[str],
                       reference_answers: Sequence[str | None] | None = None,
                       params: Mapping | None = None) -> tuple[list[str], list[str | None]]:
        """Same call as prometheus-eval's `PrometheusEval.relative_grade` -> (feedbacks, ["A"|"B"]).

        `rubric` is the criteria string (or one per pair), passed to the template verbatim as
        prometheus-eval does. A missing verdict is forced from the model's own P(A), P(B); None
        only for a pair that errored (e.g. too long for the context).
        """
        n = len(instructions)
        if not (len(responses_A) == len(responses_B) == n):
            raise ValueError("instructions, responses_A and responses_B must have the same length")
        refs = list(reference_answers) if reference_answers is not None else [None] * n
        rubrics = [rubric] * n if isinstance(rubric, str) else list(rubric)
        if len(refs) != n or len(rubrics) != n:
            raise ValueError("rubric and reference_answers must be one string or one per pair")
        records = [RelativeRecord(id=str(i), instruction=ins, response_A=a, response_B=b, rubric=rb,
                                  reference_answer=ref or None)
                   for i, (ins, a, b, rb, ref) in enumerate(zip(instructions, responses_A, responses_B,
                                                                rubrics, refs))]
        judge = self.with_sampling(sampling_from_params(self.sampling, params))
        judge.pairs  # noqa: B018  (a profile without a relative prompt fails here, before any work)
        grades = list(judge.grade_stream(records))
        return [g.feedback for g in grades], [getattr(g, "winner", None) for g in grades]


def _as_rubric(rubric: str | Mapping[str, str] | Rubric) -> Rubric:
    if isinstance(rubric, Rubric):
        return rubric
    if isinstance(rubric, str):
        return Rubric.parse(rubric)
    return Rubric.from_mapping(rubric)
