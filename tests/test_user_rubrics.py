"""Saved rubrics in the user config folder: round trip, atomic rewrite, errors that name the file."""

from __future__ import annotations

import pytest

from prom_local.judging.rubrics import Rubric
from prom_local.store.user_rubrics import (RubricStoreError, delete_user_rubric, load_user_rubrics, rubrics_file,
                                     save_user_rubric)

KO = Rubric("응답이 간결한가?", ("장황함", "다소 장황함", "보통", "간결함", "매우 간결함"))
EN = Rubric("Is it polite?", ("rude", "curt", "neutral", "polite", "very polite"))


@pytest.fixture(autouse=True)
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("PROM_LOCAL_CONFIG_DIR", str(tmp_path / "cfg"))
    return tmp_path / "cfg"


def test_round_trip_keeps_order_and_korean(config):
    assert load_user_rubrics() == {}
    save_user_rubric("간결성", KO)
    save_user_rubric("polite", EN)
    save_user_rubric("간결성", KO)            # saving again replaces, keeps its place
    assert list(load_user_rubrics()) == ["간결성", "polite"]
    assert load_user_rubrics()["간결성"] == KO
    text = rubrics_file().read_text("utf-8")
    assert "매우 간결함" in text                # readable, not \\u escapes: people edit this file
    assert rubrics_file() == config / "rubrics.json"
    assert [p.name for p in config.iterdir()] == ["rubrics.json"]   # no temp files left behind
    assert delete_user_rubric("polite") and not delete_user_rubric("polite")
    assert list(load_user_rubrics()) == ["간결성"]


def test_names_that_cannot_be_saved():
    with pytest.raises(RubricStoreError, match="built-in preset"):
        save_user_rubric("helpfulness", EN)
    with pytest.raises(RubricStoreError, match="needs a name"):
        save_user_rubric("   ", EN)
    with pytest.raises(RubricStoreError, match="at most"):
        save_user_rubric("x" * 61, EN)


def test_broken_file_is_named_with_its_line(config):
    config.mkdir()
    rubrics_file().write_text('{\n "a": {"criteria": "c",\n}', encoding="utf-8")
    with pytest.raises(RubricStoreError, match=r"rubrics\.json:3: not valid JSON"):
        load_user_rubrics()
    rubrics_file().write_text('{"a": {"criteria": "c", "score1_description": "x"}}', encoding="utf-8")
    with pytest.raises(RubricStoreError, match="rubric 'a': 'score2_description' missing"):
        load_user_rubrics()
    # A broken file is never overwritten by a save: the user's other rubrics would be lost.
    with pytest.raises(RubricStoreError):
        save_user_rubric("new", EN)
    assert "score1_description" in rubrics_file().read_text("utf-8")
