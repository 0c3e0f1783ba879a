"""prometheus-eval's benchmark data files as input: real records from its repository
(tests/data/benchmarks, see the README there), parsed back into fields that re-render to the
original prompt exactly, with the gold taken from the file."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from fake_engine import FakeEngine, Reply
from helpers import invoke
from prom_local.inputs import benchmark_files as bf
from prom_local.runs.score_file import score_file
from prom_local.errors import InputError
from prom_local.judging.judge import Judge
from prom_local.runs.results_reader import read_rows
from prom_local.judging.records import Record
from prom_local.inputs import read_records


def scipy_stats():
    """scipy.stats, imported by the tests that use it: at module level it cost every xdist worker
    a second of collection."""
    from scipy import stats
    return stats


DATA = Path(__file__).parent / "data" / "benchmarks"
FIXTURES = [DATA / "vicuna_eval.sample.json", DATA / "mt_bench_eval.sample.json"]


def originals(path: Path) -> list[dict]:
    return json.loads(path.read_text("utf-8"))


def installed_render(record: Record) -> str:
    """The same fields through prometheus-eval 0.1.20's own templates (a test-only dependency)."""
    from prometheus_eval.prompts import ABSOLUTE_PROMPT, ABSOLUTE_PROMPT_WO_REF, SCORE_RUBRIC_TEMPLATE

    rubric = SCORE_RUBRIC_TEMPLATE.format(**record.rubric.as_dict())
    if record.reference_answer is not None:
        return ABSOLUTE_PROMPT.format(instruction=record.instruction, response=record.response,
                                      reference_answer=record.reference_answer, rubric=rubric)
    return ABSOLUTE_PROMPT_WO_REF.format(instruction=record.instruction, response=record.response, rubric=rubric)


# The benchmark files were rendered with Prometheus 1's wording of item 3; prometheus-eval 0.1.20's
# ABSOLUTE_PROMPT dropped the "Feedback: " there. That is the only difference.
P2_ITEM3 = 'follows: "(write a feedback for criteria)'
P1_ITEM3 = 'follows: "Feedback: (write a feedback for criteria)'


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fields_re_render_to_the_original_prompt(path):
    records = list(read_records(path))
    assert len(records) == len(originals(path)) and all(isinstance(r, Record) for r in records)
    for record, original in zip(records, originals(path)):
        text = original["instruction"]
        assert record.reference_answer and record.response and record.instruction in text
        # Our template copy, through the parsed fields.
        parsed = bf.parse_prompt(text)
        assert bf.render(parsed) == text and parsed.wording == "prometheus-1"
        # prometheus-eval's own template, through the Record the rest of prom-local sees.
        theirs = installed_render(record)
        assert theirs.count(P2_ITEM3) == 1
        assert theirs.replace(P2_ITEM3, P1_ITEM3) == text
        # A prompt in prometheus-eval 0.1.20's wording parses too, and round-trips.
        again = bf.parse_prompt(theirs)
        assert again.wording == "prometheus-2" and bf.render(again) == theirs
        assert (again.instruction, again.response, again.reference_answer, again.rubric) == \
            (record.instruction, record.response, record.reference_answer, record.rubric)


def test_without_reference_answer_round_trips():
    from prometheus_eval.prompts import ABSOLUTE_PROMPT_WO_REF, SCORE_RUBRIC_TEMPLATE

    record = next(iter(read_records(FIXTURES[0])))
    text = ABSOLUTE_PROMPT_WO_REF.format(instruction=record.instruction, response=record.response,
                                         rubric=SCORE_RUBRIC_TEMPLATE.format(**record.rubric.as_dict()))
    parsed = bf.parse_prompt(text)
    assert parsed.reference_answer is None and bf.render(parsed) == text
    # A description over several lines is kept whole (the next "Score N:" line ends it).
    multi = bf.Parsed("q", "r", None, bf.Rubric("c", ("one\ntwo", "2", "3", "4", "5")), "prometheus-2")
    assert bf.parse_prompt(bf.render(multi)) == multi


def test_gold_is_the_files_and_ids_are_unique():
    records = list(read_records(FIXTURES[0])) + list(read_records(FIXTURES[1]))
    expected = [o["gpt4_score"] for f in FIXTURES for o in originals(f)]
    assert [list(r.gold_scores) for r in records] == expected
    ids = [r.id for r in records]
    assert ids[:2] == ["69-vicuna", "69-llama-2-chat"] and len(set(ids)) == len(ids)
    # gold_score is the mean rounded half up: [4, 4, 3] -> 3.67 -> 4, [1, 2, 1] -> 1.33 -> 1.
    by_id = {r.id: r for r in records}
    assert by_id["21-vicuna"].gold_score == 4 and by_id["104-vicuna_13b"].gold_score == 1
    assert bf.gold_from([2, 3]) == ([2, 3], 2.5, 3)     # half up, where round() would give 2
    assert bf.gold_from(4) == ([4], 4.0, 4)             # Feedback Bench: one score


def test_json_lines_and_plain_arrays_are_read_too(tmp_path):
    lines = tmp_path / "vicuna.jsonl"
    lines.write_text("".join(json.dumps(o) + "\n" for o in originals(FIXTURES[0])), "utf-8")
    assert bf.detect(lines)
    assert [r.id for r in read_records(lines)] == [r.id for r in read_records(FIXTURES[0])]
    # A JSON array of ordinary records is read as JSONL's are; plain JSONL is not a benchmark file.
    plain = tmp_path / "plain.json"
    rubric = {"criteria": "ok?", **{f"score{s}_description": str(s) for s in range(1, 6)}}
    plain.write_text(json.dumps([{"id": "x", "instruction": "hi", "response": "hello", "rubric": rubric,
                                  "gold_score": 4}]), "utf-8")
    (record,) = read_records(plain)
    assert record.id == "x" and record.gold_score == 4 and record.gold_scores is None
    jsonl = tmp_path / "plain.jsonl"
    jsonl.write_text(json.dumps({"id": "x", "instruction": "hi", "response": "hello", "rubric": rubric}) + "\n")
    assert not bf.detect(jsonl) and not bf.detect("-")


def test_errors_name_file_record_and_field(tmp_path):
    good = originals(FIXTURES[0])
    broken = [dict(good[0]), dict(good[1]), dict(good[2]), dict(good[3]), {"source": "x", "chosen_instruction": "a",
                                                                            "rejected_instruction": "b"}]
    broken[0]["instruction"] = good[0]["instruction"].replace("###Score Rubrics:", "###Rubric:")
    broken[1]["gpt4_score"] = [5, 6, 5]
    broken[2]["instruction"] = "Rate this answer."
    broken[3]["instruction"] = good[3]["instruction"].replace("Score 3: ", "Score three: ")
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(broken), "utf-8")
    items = list(read_records(path))
    assert all(isinstance(i, InputError) for i in items)
    messages = [str(i) for i in items]
    assert messages[0] == f"{path}: record [0]: field 'instruction': has no '###Score Rubrics:' section"
    assert messages[1].startswith(f"{path}: record [1]: field 'gpt4_score': must be an integer 1-5")
    assert "record [2]: field 'instruction': not a Prometheus absolute-grading prompt" in messages[2]
    assert "record [3]: field 'instruction'" in messages[3] and "'Score 3:'" in messages[3]
    assert "record [4]: field 'chosen_instruction': not a Prometheus absolute-grading prompt" in messages[4]
    assert [i.record_id for i in items[:2]] == ["69-vicuna", "69-llama-2-chat"]

    not_json = tmp_path / "torn.json"
    not_json.write_text('[{"idx": 1, "instruction": "x"', "utf-8")
    with pytest.raises(InputError, match=r"torn\.json: invalid JSON"):
        list(read_records(not_json))
    result = invoke("render", str(not_json))
    assert result.returncode == 2 and "torn.json: invalid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_scored_rows_carry_the_gold_and_report_prints_the_papers_table(tmp_path, smollm2):
    """score_file on the real fixture (a scripted engine: the rows' numbers are data here; the slow
    test below runs the real model), then `report` correlates against the gold means."""
    by_response = {}
    for i, record in enumerate(read_records(FIXTURES[0])):
        by_response[record.response[:60]] = 1 + (i * 2) % 5   # 1, 3, 5, 2, 4

    def script(prompt: str) -> Reply:
        score = next(s for head, s in by_response.items() if head in prompt)
        probs = [0.02] * 5
        probs[score - 1] = 0.92
        return Reply(f"Fine. [RESULT] {score}", tuple(probs))

    judge = Judge.with_engine(FakeEngine(smollm2, script, n_ctx=4096))
    out = tmp_path / "vicuna.prom.jsonl"
    with judge:
        stats = score_file(judge, FIXTURES[0], out)
    assert stats.graded == 5 and stats.errors == 0
    rows = read_rows(out)
    gold = [o["gpt4_score"] for o in originals(FIXTURES[0])]
    assert [r["gold_scores"] for r in rows] == gold
    assert [r["gold_mean"] for r in rows] == [round(statistics.mean(g), 4) for g in gold]
    assert [r["score"] for r in rows] == [1, 3, 5, 2, 4]

    means = [statistics.mean(g) for g in gold]
    sps = scipy_stats()
    want = {"pearson": sps.pearsonr([1, 3, 5, 2, 4], means).statistic,
            "spearman": sps.spearmanr([1, 3, 5, 2, 4], means).statistic,
            "kendall": sps.kendalltau([1, 3, 5, 2, 4], means).statistic}
    data = json.loads(invoke("report", str(out), "--json").stdout)
    corr = data["correlation"]
    assert corr["n"] == 5 and corr["predicted"] == "score" and corr["gold"] == "gold_mean"
    for key, value in want.items():
        assert corr[key] == pytest.approx(value, abs=1e-4)
    text = invoke("report", str(out), columns=100).stdout
    assert "correlation with gold (the Prometheus papers' table)" in text
    line = next(ln for ln in text.splitlines() if ln.split()[:1] == ["5"])
    assert line.split() == ["5", f"{want['pearson']:.3f}", f"{want['spearman']:.3f}", f"{want['kendall']:.3f}"]
    assert "model: score   gold: gold_mean" in text


@pytest.mark.slow
def test_score_and_report_on_the_vicuna_fixture_with_a_real_model(tmp_path, smollm2):
    """`prom-local score` reads the benchmark file as it is, SmolLM2 grades it (6 new tokens hold no
    verdict: scores forced from its own distribution), and `report` correlates with the gold means."""
    # The first three records (gold means 2, 4, 5): enough for a correlation, few enough to be quick.
    src = tmp_path / "vicuna3.json"
    src.write_text(json.dumps(originals(FIXTURES[0])[:3]), "utf-8")
    out = tmp_path / "vicuna3.prom.jsonl"
    result = invoke("score", str(src), "--model", str(smollm2),
                    "--max-tokens", "6", "--ctx", "1024", "--gpu-layers", "0", "--quiet")
    assert result.returncode == 0, result.stderr
    rows = read_rows(out)
    assert [r["gold_scores"] for r in rows] == [o["gpt4_score"] for o in originals(FIXTURES[0])[:3]]
    assert all(r["score"] in (1, 2, 3, 4, 5) and r["error"] is None for r in rows)
    # Whatever SmolLM2 scored, report's figures must be scipy's on the rows' (score, gold_mean) pairs.
    scores = [r["score"] for r in rows]
    means = [r["gold_mean"] for r in rows]
    data = json.loads(invoke("report", str(out), "--json").stdout)
    corr = data["correlation"]
    assert corr["n"] == 3 and corr["gold"] == "gold_mean"
    if len(set(scores)) > 1:
        sps = scipy_stats()
        assert corr["pearson"] == pytest.approx(sps.pearsonr(scores, means).statistic, abs=1e-4)
        assert corr["kendall"] == pytest.approx(sps.kendalltau(scores, means).statistic, abs=1e-4)
    else:   # a constant column has no correlation: reported as n/a, never as a number
        assert corr["pearson"] is None and corr["kendall"] is None
    text = invoke("report", str(out)).stdout
    assert "correlation with gold (the Prometheus papers' table)" in text and "gold: gold_mean" in text


def test_pairwise_files_become_relative_records():
    """HHH Alignment's chosen/rejected prompts and AutoJ's labelled pairs, as relative input records
    (instruction, response_A, response_B, rubric, gold_winner); the chosen side alternates A/B."""
    path = DATA / "hhh_alignment_eval.sample.json"
    fail = lambda message, field=None: InputError(message, source="t", field=field)  # noqa: E731
    mapped = [bf.pairwise_mapping(o, i, fail) for i, o in enumerate(originals(path))]
    assert [m["gold_winner"] for m in mapped] == ["A", "B", "A"]
    for i, (m, original) in enumerate(zip(mapped, originals(path))):
        chosen = bf.parse_prompt(original["chosen_instruction"])
        rejected = bf.parse_prompt(original["rejected_instruction"])
        better, worse = (m["response_A"], m["response_B"]) if i % 2 == 0 else (m["response_B"], m["response_A"])
        assert (better, worse) == (chosen.response, rejected.response)
        assert m["instruction"] == chosen.instruction and m["rubric"] == chosen.rubric.as_dict()
        assert "reference_answer" not in m           # HHH prompts have none
    assert len(list(read_records(path))) == 3        # one item (record or error row) per pair

    autoj = {"scenario": "x", "label": 1, "prompt": "Summarise.", "response 1": " short ", "response 2": " long "}
    assert bf.pairwise_mapping(autoj, 0, fail) | {"rubric": None} == {
        "instruction": "Summarise.", "response_A": "long", "response_B": "short", "rubric": None,
        "gold_winner": "A"}
    assert bf.pairwise_mapping({**autoj, "label": 2}, 1, fail)["gold_winner"] is None    # a tie
    assert bf.pairwise_mapping(autoj, 0, fail)["rubric"]["criteria"].startswith("Is the given response")
    with pytest.raises(InputError, match="field 'label': must be 0, 1 or 2"):
        bf.pairwise_mapping({**autoj, "label": 7}, 0, fail)
    mismatched = dict(originals(path)[0])
    mismatched["rejected_instruction"] = originals(path)[1]["rejected_instruction"]
    with pytest.raises(InputError, match="its instruction differs"):
        bf.pairwise_mapping(mismatched, 0, fail)


def test_correlation_uses_mean_score_and_gold_mean_when_rows_have_them():
    """Rows of --samples runs (mean_score) against benchmark gold (gold_mean): the papers' table
    correlates the means; rows without them fall back to the integers, and the table says which."""
    from prom_local.reports.absolute import correlation, summarise
    from prom_local.reports.views import summary_view

    rows = [{"id": str(i), "score": round(m), "mean_score": m, "scores": [], "gold_score": round(g),
             "gold_mean": g, "error": None}
            for i, (m, g) in enumerate([(1.33, 1.67), (2.67, 2.0), (3.0, 3.67), (4.67, 4.33), (4.0, 5.0)])]
    corr = correlation(rows)
    means, golds = [r["mean_score"] for r in rows], [r["gold_mean"] for r in rows]
    assert (corr.n, corr.predicted, corr.gold) == (5, "mean_score", "gold_mean")
    sps = scipy_stats()
    assert corr.pearson == pytest.approx(sps.pearsonr(means, golds).statistic)
    assert corr.spearman == pytest.approx(sps.spearmanr(means, golds).statistic)
    assert corr.kendall == pytest.approx(sps.kendalltau(means, golds).statistic)

    plain = [{"id": "p", "score": 2, "gold_score": 1, "error": None},
             {"id": "e", "score": None, "gold_score": 3, "error": "prompt too long"}]
    mixed = correlation(rows + plain)
    assert (mixed.n, mixed.predicted, mixed.gold) == (6, "both", "both")
    assert correlation([{"id": "x", "score": 3, "gold_score": 3}]).pearson is None   # one pair: undefined
    assert correlation([{"id": "x", "score": 3}]) is None

    from rich.console import Console
    console = Console(width=60, record=True, color_system=None)
    console.print(summary_view(summarise(rows), compact=True))
    assert "mean_score vs gold_mean (n=5)" in console.export_text()
