"""The tokens a `score` run needs, measured before the weights load (vocabulary-only SmolLM2)."""

from __future__ import annotations

import json

from helpers import RUBRIC, short_record, write_jsonl
from prom_local.engine import load_vocab_only
from prom_local.judging.records import record_from_mapping
from prom_local.runs.workload import done_ids, measure, pending_work, prompt_tokens


def test_prompt_tokens_are_what_the_judge_tokenizes(smollm2):
    from prom_local.judging.judge import render_prompt
    from prom_local.judging.prompts import get_profile

    records = [record_from_mapping(short_record(i), line=i) for i in (1, 2)]
    model = load_vocab_only(smollm2)
    try:
        expected = [len(model.tokenize(render_prompt(r, get_profile("prometheus-ko"), model), special=True))
                    for r in records]
        assert prompt_tokens(records, model, "prometheus-ko") == expected
    finally:
        model.close()
    work = measure(records, smollm2, "prometheus-ko", max_tokens=100)
    assert work.records == 2 and work.longest_prompt == max(expected) and work.need_tokens == max(expected) + 100
    assert measure([], smollm2, "prometheus-ko", max_tokens=100) is None


def test_a_pair_counts_its_longer_order(smollm2):
    from prom_local.judging.prompt_tokens import tokenize_prompt
    from prom_local.judging.prompts import get_profile

    pair = record_from_mapping({"id": "p", "instruction": "2 + 2?", "response_A": "4",
                                "response_B": "The answer is four, as anyone can see.", "rubric": "Correct?"}, line=1)
    model = load_vocab_only(smollm2)
    try:
        profile = get_profile("prometheus-2")
        orders = [len(tokenize_prompt(r, profile, model)) for r in (pair, pair.swapped())]
        assert prompt_tokens([pair], model, profile) == [max(orders)]
    finally:
        model.close()


def test_pending_work_skips_graded_rows_but_not_error_rows(smollm2, tmp_path):
    long = {"id": "long", "instruction": "자세히 " * 200, "response": "네.", "rubric": RUBRIC}
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(1), long, '{"id": "broken"'])
    out = tmp_path / "out.jsonl"
    everything = pending_work(src, out, smollm2, "prometheus-ko", 64)
    assert everything.records == 2  # the broken line is the run's to report, not measured
    # The long record already graded: only the short one is left, and it needs far less.
    write_jsonl(out, [{"id": "long", "score": 3, "error": None}])
    assert done_ids(out) == {"long"}
    left = pending_work(src, out, smollm2, "prometheus-ko", 64)
    assert left.records == 1 and left.longest_prompt < everything.longest_prompt
    # An error row is graded again by --retry-errors, so it still counts.
    write_jsonl(out, [{"id": "long", "score": None, "error": "too long"}])
    assert pending_work(src, out, smollm2, "prometheus-ko", 64).longest_prompt == everything.longest_prompt
    # A torn last line (a killed run) is not read as a row.
    out.write_text(json.dumps({"id": "long", "error": None}) + "\n" + '{"id": "r1", "sco', "utf-8")
    assert done_ids(out) == {"long"}


def test_unknowable_work_is_none(smollm2, tmp_path):
    assert pending_work("-", "-", smollm2, "prometheus-ko", 64) is None          # stdin: read once only
    assert pending_work(tmp_path / "missing.jsonl", "-", smollm2, "prometheus-ko", 64) is None
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(1)])
    out = write_jsonl(tmp_path / "out.jsonl", [{"id": "r1", "error": None}])
    assert pending_work(src, out, smollm2, "prometheus-ko", 64) is None        # nothing left to grade
