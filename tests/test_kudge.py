"""KUDGE's CSV files as input (kudge_files.py), KUDGE's own figures in `report` (reports/kudge.py)
and `pull kudge` (kudge_pull.py). The false-information file is KUDGE's own, all 54 rows
(tests/data/kudge, MIT, see LICENSE there); the full-format file is a synthetic stand-in in the
full file's columns (make_full_sample.py), since the 2,506-row file is not stored here."""

from __future__ import annotations

import csv
import http.server
import json
import math
import threading
from pathlib import Path

import pytest

from fake_engine import FakeEngine, Reply
from helpers import invoke
from prom_local.inputs import kudge_files as kf
from prom_local.runs.score_file import score_file
from prom_local.errors import InputError
from prom_local.judging.judge import Judge
from prom_local.runs.results_reader import read_rows
from prom_local.judging.prompts import get_profile
from prom_local.inputs import read_records
from prom_local.judging.records import Record, RelativeRecord

DATA = Path(__file__).parent / "data" / "kudge"
FALSEINFO = DATA / "k2-eval-pointwise-falseinfo.csv"
FULL = DATA / "k2-eval-pointwise.sample.csv"
PAIRWISE = DATA / "k2-eval-pairwise-falseinfo.sample.csv"


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("path, gold_column, n", [(FALSEINFO, "original_human_score", 54), (FULL, "final_score", 5)],
                         ids=["falseinfo", "full-format"])
def test_every_row_parses_and_re_renders_exactly(path, gold_column, n):
    originals = csv_rows(path)
    records = list(read_records(path))
    assert len(records) == len(originals) == n and all(isinstance(r, Record) for r in records)
    kudge, card = get_profile("prometheus-ko-kudge"), get_profile("prometheus-ko")
    # Absolute grading differs from the card's profile only in the user message: same system
    # message, chat frame and marker.
    assert (kudge.system, kudge.chat_template, kudge.score_continuation) == \
        (card.system, card.chat_template, card.score_continuation)
    for i, (record, row) in enumerate(zip(records, originals)):
        query = kf.parse_query(row["judge_query"])
        assert kf.render_query(query) == row["judge_query"]
        # What the model sees under prometheus-ko-kudge is KUDGE's prompt, byte for byte.
        assert kudge.user_message(record) == row["judge_query"]
        assert (record.instruction, record.response) == (row["instruction"], row["response"])
        assert record.id == str(i) and record.reference_answer is not None
        gold = float(row[gold_column])
        assert record.row_fields["gold_mean"] == gold and record.row_fields["kudge"]["human_score"] == gold
        assert record.gold_score == math.floor(gold + 0.5)   # half up: 4.5 -> 5, 3.5 -> 4
    # The synthetic file's prompts share KUDGE's real header (not only our own rendering of it).
    real_head = csv_rows(FALSEINFO)[0]["judge_query"].split("###The instruction to evaluate:")[0]
    assert all(r["judge_query"].startswith(real_head) for r in originals)
    assert "5. Reply in Korean.\n\n" in real_head


def test_falseinfo_rows_keep_their_corruption_type_and_default_profile_is_the_cards():
    records = list(read_records(FALSEINFO))
    types = {r.row_fields["kudge"]["type"] for r in records}
    assert types <= {"word", "sentence", "general"} and "\x08" not in "".join(types)
    assert {r.row_fields["kudge"]["subset"] for r in records} == {"falseinfo"}
    # The card's prompt (the default profile) holds the same fields, in its own wording.
    card = get_profile("prometheus-ko").user_message(records[0])
    assert records[0].response in card and "Reply in Korean" not in card
    assert not card.startswith("###Task Description")


def test_pairwise_rows_become_relative_records():
    originals = csv_rows(PAIRWISE)
    records = list(read_records(PAIRWISE))
    assert len(records) == len(originals) == 3 and all(isinstance(r, RelativeRecord) for r in records)
    kudge = get_profile("prometheus-ko-kudge")
    assert kudge.has_relative and kudge.verdict_style == "mt-bench"
    for record, row in zip(records, originals):
        assert kf.render_pairwise(record.instruction, record.response_A, record.response_B) == row["judge_query"]
        assert kudge.relative_message(record) == row["judge_query"]   # what the model sees, byte for byte
        assert record.gold_winner == row["winner"].strip().upper()
        assert record.instruction == row["instruction"]


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_bad_rows_are_errors_naming_file_line_and_column(tmp_path):
    good = csv_rows(FULL)
    header = ["instruction", "response", "final_score", "judge_query"]
    rows = [[r[h] for h in header] for r in good[:4]]
    rows[0][3] = rows[0][3].replace("###Score Rubrics:", "###Rubric:")
    rows[1][2] = "6"
    rows[2][3] = "Rate this."
    rows[3].append("extra")
    path = _write(tmp_path / "bad.csv", header, rows)
    items = list(read_records(path))
    assert all(isinstance(i, InputError) for i in items), items
    messages = [str(i) for i in items]
    lines = [i.line for i in items]
    assert lines[0] == 2 and lines == sorted(lines)   # a row's first line; prompts span many lines
    assert messages[0] == f"{path}:2: field 'judge_query': has no '###Score Rubrics:' section"
    assert messages[1] == f"{path}:{lines[1]}: field 'final_score': must be a number from 1 to 5, got '6'"
    assert "field 'judge_query': not a KUDGE pointwise prompt" in messages[2]
    assert "5 cells, the header names 4" in messages[3]
    assert [i.record_id for i in items] == ["0", "1", "2", "3"]
    # A falseinfo row whose instruction column disagrees with its prompt: a hand-edited file.
    fi = csv_rows(FALSEINFO)[0]
    fi["instruction"] = "다른 질문"
    edited = _write(tmp_path / "edited.csv", list(fi), [list(fi.values())])
    (error,) = read_records(edited)
    assert isinstance(error, InputError) and "field 'instruction': differs from the instruction" in str(error)
    # render writes the same error rows, exit 2, no traceback.
    result = invoke("render", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    first = json.loads(result.stdout.splitlines()[0])
    assert first["id"] == "0" and first["error"] == messages[0]


def test_render_and_doctor_read_the_csv(smollm2):
    """render shows KUDGE's own prompt under prometheus-ko-kudge; doctor --input sizes the context
    from the file's 54 prompts (KUDGE's wording is longer than the card's: the task description)."""
    result = invoke("render", str(FALSEINFO), "--model", str(smollm2), "--profile", "prometheus-ko-kudge")
    assert result.returncode == 0, result.stderr
    assert csv_rows(FALSEINFO)[0]["judge_query"] in json.loads(result.stdout.splitlines()[0])["prompt"]
    sized = {}
    for profile in ("prometheus-ko", "prometheus-ko-kudge"):
        doctor = invoke("doctor", "-m", str(smollm2), "--profile", profile, "--input", str(FALSEINFO), "--json")
        assert doctor.returncode == 0, doctor.stderr
        sized[profile] = json.loads(doctor.stdout)["context"]
        assert sized[profile]["sized_from"] == "the given records"
    assert sized["prometheus-ko-kudge"]["longest_prompt"] > sized["prometheus-ko"]["longest_prompt"]


def pointwise_eval(final_score: list[float], decision: list[float | None]) -> dict:
    """src/pointwise_eval.py's process_pointwise_data, written again in plain Python: the data
    frame joined by position, NaN decisions counted and dropped, then the three figures."""
    failure_count = sum(1 for d in decision if d is None)
    pairs = [(d, h) for d, h in zip(decision, final_score) if d is not None]
    n = len(pairs)
    average_error = sum(d - h for d, h in pairs) / n
    off_by_05 = sum(1 for d, h in pairs if abs(d - h) < 1) / n
    mh, md = sum(h for _, h in pairs) / n, sum(d for d, _ in pairs) / n
    cov = sum((h - mh) * (d - md) for d, h in pairs)
    pearson = cov / math.sqrt(sum((h - mh) ** 2 for _, h in pairs) * sum((d - md) ** 2 for d, _ in pairs))
    return {"average_error": average_error, "off_by_05": off_by_05, "pearson_corr": pearson,
            "failure_count": failure_count, "total_entries": len(decision)}


def test_report_figures_equal_pointwise_evals_arithmetic(tmp_path, smollm2):
    """The 54 falseinfo rows graded by a scripted engine (scores are data here), the longest prompts
    too long for the context (error rows: KUDGE's NaN decisions), then `report --json`'s figures
    against pointwise_eval.py's arithmetic on the same decisions, joined by position as KUDGE does."""
    def script(prompt: str) -> Reply:
        score = 1 + len(prompt) % 5
        probs = [0.02] * 5
        probs[score - 1] = 0.92
        return Reply(f"좋습니다. [RESULT] {score}", tuple(probs))

    judge = Judge.with_engine(FakeEngine(smollm2, script, n_ctx=7168))
    out = tmp_path / "falseinfo.prom.jsonl"
    with judge:
        stats = score_file(judge, FALSEINFO, out)
    rows = sorted(read_rows(out), key=lambda r: int(r["id"]))
    assert len(rows) == 54 and 0 < stats.errors < 54
    gold = [float(r["original_human_score"]) for r in csv_rows(FALSEINFO)]
    decisions = [None if r["error"] else float(r["score"]) for r in rows]
    want = pointwise_eval(gold, decisions)
    data = json.loads(invoke("report", str(out), "--json").stdout)
    got = data["kudge"]["figures"]
    for key in ("average_error", "off_by_05", "pearson_corr"):
        assert abs(got[key] - want[key]) < 1e-9, key
    assert (got["failure_count"], got["total_entries"]) == (want["failure_count"], 54)
    # How often, and by how much, the judge's score falls below the uncorrupted response's.
    fi = data["kudge"]["falseinfo"]
    below = [h - d for d, h in zip(decisions, gold) if d is not None and d < h]
    assert (fi["n"], fi["below"]) == (54 - want["failure_count"], len(below))
    assert abs(fi["mean_drop"] - sum(below) / len(below)) < 1e-9
    assert sum(g["n"] for g in fi["by_type"].values()) == fi["n"]
    assert [j["source"] for j in data["kudge"]["reference"]["judges"]][0] == "report/gpt-4o/pointwise_results.csv"

    text = invoke("report", str(out), columns=200).stdout
    assert "KUDGE figures (src/pointwise_eval.py)" in text and "does the judge mark the corrupted" in text
    for name in ("GPT-4o", "Claude", "prometheus-7b-v2.0", "prometheus-8x7b-v2.0", "Meta-Llama-3-8B-Instruct"):
        assert name in text
    assert "report/prometheus-eval--prometheus-7b-v2.0/pointwise_results.csv" in text
    assert f"{want['pearson_corr']:.3f}" in text


def test_figures_are_undefined_not_nan_on_degenerate_input():
    from prom_local.reports.kudge import kudge_figures

    f = kudge_figures([None, None], [3.0, 4.0])
    assert (f.average_error, f.pearson_corr, f.failure_count, f.total_entries) == (None, None, 2, 2)
    f = kudge_figures([3.0, 3.0, None], [2.5, 4.5, 1.0])   # a constant side: scipy's NaN, here None
    assert f.pearson_corr is None and f.off_by_05 == 0.5 and f.average_error == pytest.approx(-0.5)


def test_reference_data_names_its_source():
    from prom_local.reports.kudge import reference

    ref = reference()
    assert ref["repository"] == "https://github.com/guijinSON/kudge" and len(ref["commit"]) == 40
    names = [j["name"] for j in ref["judges"]]
    assert names[0] == "GPT-4o" and len(names) == 5
    gpt4o = ref["judges"][0]["runs"]
    assert [r["failure_count"] for r in gpt4o] == [214, 32, 7]
    assert all(r["total_entries"] == 2506 for j in ref["judges"] for r in j["runs"])


# -- pull kudge ----------------------------------------------------------------------------------

@pytest.fixture
def mirror(tmp_path):
    """A real HTTP server on 127.0.0.1 laid out as the repository (data/<file>)."""
    root = tmp_path / "mirror"
    (root / "data").mkdir(parents=True)
    (root / "data" / FALSEINFO.name).write_bytes(FALSEINFO.read_bytes())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_pull_kudge_downloads_checks_and_then_works_offline(mirror, tmp_path, monkeypatch):
    root, url = mirror
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    result = invoke("pull", "kudge", "pointwise-falseinfo", "--from", url, "--json")
    assert result.returncode == 0, result.stderr
    (pulled,) = json.loads(result.stdout)
    path = Path(pulled["path"])
    assert pulled["how"] == "downloaded" and path.read_bytes() == FALSEINFO.read_bytes()
    assert pulled["git_blob"] == "13b94a3bedf783bfe3d6b65bdac265d714ce4f82"
    # Offline: the cache alone serves it, checked again.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = invoke("pull", "kudge", "pointwise-falseinfo", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)[0]["how"] == "cached"
    # Offline and not cached: exit 6, one line that says what to do, nothing written.
    missing = invoke("pull", "kudge", "pairwise-falseinfo")
    assert missing.returncode == 6 and "offline mode is on (HF_HUB_OFFLINE=1)" in missing.stderr
    assert "Traceback" not in missing.stderr and not (path.parent / "k2-eval-pairwise-falseinfo.csv").exists()
    # A file that is not KUDGE's: exit 7, and the damaged cache entry is replaced by nothing.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    (root / "data" / FALSEINFO.name).write_bytes(FALSEINFO.read_bytes()[:-10] + b"0123456789")
    path.write_bytes(b"damaged")
    bad = invoke("pull", "kudge", "pointwise-falseinfo", "--from", url)
    assert bad.returncode == 7 and "git blob id" in bad.stderr and "Nothing was kept" in bad.stderr
    assert path.read_bytes() == b"damaged" and not list(path.parent.glob("*.partial"))
    # A server that answers 404, and an unknown file name.
    gone = invoke("pull", "kudge", "pairwise-falseinfo", "--from", url)
    assert gone.returncode == 6 and "404" in gone.stderr
    unknown = invoke("pull", "kudge", "nope")
    assert unknown.returncode == 2 and "no KUDGE file 'nope'" in unknown.stderr


@pytest.mark.slow
def test_real_model_scores_the_fixture_and_report_shows_kudges_table(tmp_path, smollm2):
    """`prom-local score` on the full-format fixture with SmolLM2 and KUDGE's own prompt, then
    `report`: the figures mean nothing for a 135M model; the pipeline is what is shown."""
    out = tmp_path / "kudge.prom.jsonl"
    result = invoke("score", str(FULL), "--model", str(smollm2), "--profile", "prometheus-ko-kudge",
                    "--max-tokens", "8", "--ctx", "2048", "--gpu-layers", "0", "--quiet", "--output", str(out))
    assert result.returncode == 0, result.stderr
    rows = sorted(read_rows(out), key=lambda r: int(r["id"]))
    assert [r["kudge"]["human_score"] for r in rows] == [float(r["final_score"]) for r in csv_rows(FULL)]
    assert all(r["score"] in (1, 2, 3, 4, 5) and r["error"] is None for r in rows)
    text = invoke("report", str(out), columns=200).stdout
    assert "KUDGE figures" in text and "GPT-4o" in text and "this run (pointwise)" in text


def test_records_travel_to_a_server_and_open_in_the_tui(tmp_path):
    """`score --server` sends Record.raw, which the server reads with record_from_mapping: the same
    record must come out (pointwise and pairwise); the TUI's batch screen reads the CSV as `score` does."""
    from prom_local.runs.score_file import default_output
    from prom_local.judging.records import record_from_mapping
    from prom_local.backends.remote import record_body
    from prom_local.tui.screens.batch import load_batch

    for path in (FULL, PAIRWISE):
        for record in read_records(path):
            back = record_from_mapping(record_body(record), line=record.line)
            assert back == record
    items, rows, note = load_batch(FALSEINFO, tmp_path / "out.jsonl")
    assert len(items) == 54 and all(isinstance(i, Record) for i in items) and rows == [] and note is None
    assert default_output(FALSEINFO) == str(DATA / "k2-eval-pointwise-falseinfo.prom.jsonl")


def test_mt_bench_verdicts_are_read_as_kudge_reads_them():
    from prom_local.judging.verdict_text import find_bracket_winner, split_relative_feedback

    def winner(text):
        match = find_bracket_winner(text)
        return match.group("label").upper() if match else None

    assert winner("A가 더 정확합니다.\n\n[[A]]") == "A" and winner("[[a]] ... 다시 보니 [[B]]") == "B"   # the last
    assert winner('형식은 "[[A]]" 입니다.') is None and winner("[[C]]") is None and winner("[RESULT] A") is None
    assert split_relative_feedback("B가 낫다. [[B]]", find_bracket_winner) == "B가 낫다."


def test_pairwise_file_graded_with_kudges_prompt_and_verdicts(tmp_path, smollm2):
    """The pairwise rows through prometheus-ko-kudge's relative prompt (a scripted engine): written
    [[A]]/[[B]] verdicts are read, an output without one gets the model's own choice after '[['
    (forced), and `report` gives the accuracy against KUDGE's winner column."""
    replies = {0: Reply("A가 더 정확합니다. [[A]]"), 1: Reply('형식은 "[[B]]" 입니다', labels=(0.1, 0.8)),
               2: Reply("B가 낫습니다.\n\n[[B]]")}
    originals = csv_rows(PAIRWISE)

    def script(prompt: str) -> Reply:
        return next(replies[i] for i, row in enumerate(originals) if row["judge_query"] in prompt)

    engine = FakeEngine(smollm2, script, n_ctx=32768)
    judge = Judge.with_engine(engine, profile="prometheus-ko-kudge")
    out = tmp_path / "pairwise.prom.jsonl"
    with judge:
        stats = score_file(judge, PAIRWISE, out)
    assert stats.errors == 0 and len(engine.prompts) == 3
    rows = sorted(read_rows(out), key=lambda r: int(r["id"]))
    assert [(r["winner"], r["forced"]) for r in rows] == [("A", False), ("B", True), ("B", False)]
    assert rows[1]["probabilities"]["B"] == pytest.approx(0.8 / 0.9, abs=1e-6)
    assert rows[0]["feedback"] == "A가 더 정확합니다."
    gold = [row["winner"].strip().upper() for row in originals]
    assert [r["gold_winner"] for r in rows] == gold
    data = json.loads(invoke("report", str(out), "--json").stdout)["relative"]
    right = sum(r["winner"] == g for r, g in zip(rows, gold))
    assert (data["accuracy"]["n"], data["accuracy"]["correct"], data["accuracy"]["forced"]) == (3, right, 1)
    # A written verdict was probed where the model wrote it (right after "[["): P(A), P(B) are known.
    assert rows[0]["probabilities"]["A"] == pytest.approx(0.7 / 0.9, abs=1e-6)
