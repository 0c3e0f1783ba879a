import json

import pytest

from prom_local.errors import OutputError
from prom_local.output import ResultWriter, load_existing


def test_torn_last_line_is_cut_and_its_record_redone(tmp_path):
    path = tmp_path / "out.jsonl"
    with ResultWriter(path) as writer:
        writer.write({"id": "a", "score": 1})
        writer.write({"id": "b", "score": 2})
    with path.open("ab") as handle:
        handle.write(b'{"id": "c", "sco')          # what a kill -9 mid-write leaves
    state = load_existing(path)
    assert state.done_ids == {"a", "b"} and state.rows == 2 and state.repaired_bytes == len('{"id": "c", "sco')
    assert path.read_text().endswith('"score": 2}\n')
    with ResultWriter(path) as writer:                # appending resumes cleanly
        writer.write({"id": "c", "score": 3})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b", "c"]


def test_a_file_that_is_not_ours_is_refused_not_overwritten(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("hello\n")
    with pytest.raises(OutputError, match="line 1 is not valid JSON"):
        load_existing(path)
    assert path.read_text() == "hello\n"
    path.write_text('{"score": 3}\n')
    with pytest.raises(OutputError, match="no 'id'"):
        load_existing(path)
