"""The prompt is the trained format, byte for byte: checked against the model card's own code and
against transformers' apply_chat_template with the real Llama 3 tokenizer, down to token ids."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from card_prompt import card_prompts
from helpers import invoke, write_jsonl
from prom_local.judging.judge import render_prompt
from prom_local.judging.prompt_tokens import tokenize_prompt
from prom_local.judging.prompts import get_profile
from prom_local.judging.records import record_from_mapping

PROFILE = get_profile("prometheus-ko")


def _messages(system, user):
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def test_user_message_equals_the_cards_own_fstrings(card_sample):
    sample = card_sample["record"]
    system, with_ref, without_ref = card_prompts(sample)
    assert PROFILE.system == system
    assert PROFILE.user_message(record_from_mapping(sample, line=1)) == with_ref
    no_ref = {k: v for k, v in sample.items() if k != "orig_reference_answer"}
    assert PROFILE.user_message(record_from_mapping(no_ref, line=1)) == without_ref


def test_rendered_prompt_matches_transformers_string_and_ids(card_sample, llama3_tokenizer):
    sample = card_sample["record"]
    system, with_ref, without_ref = card_prompts(sample)
    for record_data, user in ((sample, with_ref),
                              ({k: v for k, v in sample.items() if k != "orig_reference_answer"}, without_ref)):
        ours = render_prompt(record_from_mapping(record_data, line=1), PROFILE)
        theirs = llama3_tokenizer.apply_chat_template(_messages(system, user), tokenize=False,
                                                      add_generation_prompt=True)
        assert ours == theirs
        ids = llama3_tokenizer.apply_chat_template(_messages(system, user), tokenize=True,
                                                   add_generation_prompt=True, return_dict=False)
        assert llama3_tokenizer.encode(ours, add_special_tokens=False) == list(ids)
        # The Llama 3 frame, as FACTS/tokenizer_config define it.
        assert ids[0] == 128000 and ids[1] == 128006 and list(ids).count(128009) == 2
        assert ours.endswith("###Feedback:<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


text_st = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60).filter(str.strip)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.fixed_dictionaries({
    "instruction": text_st, "response": text_st, "criteria": text_st,
    **{f"score{s}_description": text_st for s in range(1, 6)},
    "reference_answer": st.one_of(st.none(), text_st)}))
def test_random_unicode_records_match_transformers(fields, llama3_tokenizer):
    sample = {f"orig_{k}": v for k, v in fields.items()}
    record = record_from_mapping(fields, line=1)
    system, with_ref, without_ref = card_prompts(sample)
    user = with_ref if record.has_reference else without_ref
    ours = render_prompt(record, PROFILE)
    theirs = llama3_tokenizer.apply_chat_template(_messages(system, user), tokenize=False, add_generation_prompt=True)
    assert ours == theirs
    ids = llama3_tokenizer.apply_chat_template(_messages(system, user), tokenize=True,
                                               add_generation_prompt=True, return_dict=False)
    assert llama3_tokenizer.encode(ours, add_special_tokens=False) == list(ids)


def test_braces_and_template_syntax_in_records_are_plain_text():
    record = record_from_mapping({"instruction": "{response} {{x}} {% if %}", "response": "}{",
                                  "criteria": "{criteria}", **{f"score{s}_description": "{0}" for s in range(1, 6)}},
                                 line=1)
    prompt = render_prompt(record, PROFILE)
    assert "###The instruction to evaluate: {response} {{x}} {% if %}\n  ###Response to evaluate: }{\n" in prompt
    assert "[{criteria}]" in prompt


def test_render_command_needs_no_weights(tmp_path, card_sample):
    path = write_jsonl(tmp_path / "in.jsonl", [card_sample["record"], {"id": "bad"}])
    result = invoke("render", str(path))
    assert result.returncode == 2, result.stderr
    first, second = [json.loads(line) for line in result.stdout.splitlines()]
    system, with_ref, _ = card_prompts(card_sample["record"])
    assert first["id"] == "1"
    assert first["prompt"] == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + system
                               + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" + with_ref
                               + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert second["id"] == "bad" and "line 2" not in second["error"] and ":2: field 'instruction'" in second["error"]


def test_render_with_model_uses_the_ggufs_template_and_tokenizer(tmp_path, smollm2):
    path = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "안녕", "response": "네", "criteria": "c",
                                                **{f"score{s}_description": str(s) for s in range(1, 6)}}])
    result = invoke("render", str(path), "--model", str(smollm2))
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["prompt"].startswith("<|im_start|>system\n###Task Description:")   # SmolLM2's ChatML
    assert row["n_tokens"] == len(row["tokens"]) > 100
    assert row["tokens"][0] == 1   # <|im_start|> parsed as the special token, not as text


@pytest.mark.slow  # needs the tiny Llama 3 conversion (torch + convert)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.fixed_dictionaries({
    "instruction": text_st, "response": text_st, "criteria": text_st,
    **{f"score{s}_description": text_st for s in range(1, 6)},
    "reference_answer": st.one_of(st.none(), text_st)}))
def test_llama_cpp_token_ids_equal_transformers_on_random_records(fields, tiny_llama3_gguf, llama3_tokenizer):
    """What the engine feeds llama.cpp (our render, llama.cpp's tokenizer, from a GGUF converted with
    the real Llama 3 tokenizer) is the id sequence transformers' apply_chat_template produces."""
    model, profile = tiny_llama3_gguf
    record = record_from_mapping(fields, line=1)
    ours = tokenize_prompt(record, profile, model)
    sample = {f"orig_{k}": v for k, v in fields.items()}
    system, with_ref, without_ref = card_prompts(sample)
    expected = llama3_tokenizer.apply_chat_template(
        _messages(system, with_ref if record.has_reference else without_ref), tokenize=True,
        add_generation_prompt=True, return_dict=False)
    assert ours == list(expected)
