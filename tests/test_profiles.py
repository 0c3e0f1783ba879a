"""Prompt profiles are data files, and the `prometheus-2` profile renders exactly what prometheus-eval
0.1.20 sends a vLLM-served Prometheus 2 model: its own `PrometheusEval` builds and renders the
prompts here (absolute and relative, with and without reference), and ours must equal them as
strings and as token ids.

Token ids: prometheus-eval hands vLLM the string, and vLLM's tokenizer adds the BOS; so the ids to
equal are [BOS] + the tokenization of prometheus-eval's string. Checked on two vocabularies:
- the Prometheus 2 models' own (Mistral v0.1 sentencepiece, 32000 pieces, from mistral-common's
  wheel, tests/mistral_vocab.py), against transformers' AutoTokenizer, which is what vLLM uses
  (slow lane: it converts a vocabulary-only GGUF);
- SmolLM2's (fast lane), against llama.cpp tokenizing the whole string at once: prom-local's
  prompt_tokens path (template control tokens special, record text plain) cuts nothing else.
"""

import json
import sys
import types
from importlib import resources

import pytest

from prom_local.errors import UsageError
from prom_local.engine import load_vocab_only
from prom_local.judging.prompt_tokens import render_prompt, tokenize_prompt
from prom_local.judging.prompts import PromptProfile, get_profile, load_profile, profile_names
from prom_local.judging.records import record_from_mapping

pe_prompts = pytest.importorskip("prometheus_eval.prompts")

P2 = get_profile("prometheus-2")
RUBRIC = {"criteria": "Is the answer correct and clearly explained?",
          **{f"score{s}_description": f"Description for score {s}." for s in range(1, 6)}}
INSTRUCTION = "What is 2 + 2? Explain {briefly}."   # braces: str.format must not re-read record text
RESPONSE_A, RESPONSE_B = "2 + 2 = 4, because two pairs make four.", "It is 5.\n\nTrust me."
REFERENCE = "4: adding two and two gives four."


class _Recorder:
    """Stands in for prometheus-eval's VLLM: PrometheusEval renders the conversation prompt for
    objects that have `validate_vllm`, and passes the strings to `completions`, kept here."""

    def __init__(self, reply: str):
        self.reply, self.prompts = reply, []

    def validate_vllm(self):
        return True

    def completions(self, prompts, **_params):
        self.prompts.extend(prompts)
        return [self.reply] * len(prompts)


@pytest.fixture(scope="module")
def prometheus_eval_judge():
    """prometheus_eval's PrometheusEval, able to take a VLLM-like model without vllm installed:
    its __init__ imports prometheus_eval.vllm, which needs `vllm` importable (never called here)."""
    from prometheus_eval.judge import PrometheusEval

    stub = types.ModuleType("vllm")
    stub.LLM = stub.SamplingParams = object
    saved = sys.modules.get("vllm")
    sys.modules["vllm"] = stub
    try:
        def make(reply, **templates):
            model = _Recorder(reply)
            return PrometheusEval(model=model, **templates), model
        yield make
    finally:
        if saved is None:
            sys.modules.pop("vllm", None)
        else:
            sys.modules["vllm"] = saved


def _theirs(make, mode: str, reference: bool) -> str:
    if mode == "absolute":
        template = pe_prompts.ABSOLUTE_PROMPT if reference else pe_prompts.ABSOLUTE_PROMPT_WO_REF
        judge, model = make("Good. [RESULT] 5", absolute_grade_template=template)
        judge.absolute_grade(instructions=[INSTRUCTION], responses=[RESPONSE_A],
                             rubric=pe_prompts.SCORE_RUBRIC_TEMPLATE.format(**RUBRIC),
                             reference_answers=[REFERENCE if reference else None], params={"max_tokens": 8})
    else:
        template = pe_prompts.RELATIVE_PROMPT if reference else pe_prompts.RELATIVE_PROMPT_WO_REF
        judge, model = make("Better. [RESULT] A", relative_grade_template=template)
        judge.relative_grade(instructions=[INSTRUCTION], responses_A=[RESPONSE_A], responses_B=[RESPONSE_B],
                             rubric=RUBRIC["criteria"], reference_answers=[REFERENCE if reference else None],
                             params={"max_tokens": 8})
    assert len(model.prompts) == 1
    return model.prompts[0]


def _ours(mode: str, reference: bool):
    data = {"instruction": INSTRUCTION, "rubric": RUBRIC}
    data.update({"response": RESPONSE_A} if mode == "absolute" else
                {"response_A": RESPONSE_A, "response_B": RESPONSE_B, "rubric": RUBRIC["criteria"]})
    if reference:
        data["reference_answer"] = REFERENCE
    return record_from_mapping(data, line=1)


CASES = [(mode, ref) for mode in ("absolute", "relative") for ref in (True, False)]


@pytest.mark.parametrize("mode,reference", CASES)
def test_prometheus_2_renders_prometheus_evals_own_prompt(prometheus_eval_judge, mode, reference):
    theirs = _theirs(prometheus_eval_judge, mode, reference)
    ours = render_prompt(_ours(mode, reference), P2)
    # With no model file the BOS is the profile's "<s>" (Mistral's), which vLLM adds on tokenizing.
    assert ours == "<s>" + theirs
    assert theirs.startswith("[INST] You are a fair judge assistant") and theirs.endswith("###Feedback:  [/INST]")


@pytest.mark.parametrize("mode,reference", CASES)
def test_prometheus_2_token_ids_equal_tokenizing_prometheus_evals_string(prometheus_eval_judge, smollm2,
                                                                          mode, reference):
    theirs = _theirs(prometheus_eval_judge, mode, reference)
    model = load_vocab_only(smollm2)
    try:
        record = _ours(mode, reference)
        # The GGUF has a (ChatML) template, but prometheus-2 always frames with its own.
        assert model.chat_template and "<|im_start|>" in model.chat_template
        assert render_prompt(record, P2, model) == model.special_text("bos") + theirs
        bos = model.tokenize(model.special_text("bos"), special=True)
        assert len(bos) == 1
        ids = tokenize_prompt(record, P2, model)
        assert ids == bos + model.tokenize(theirs, special=False)
        assert ids.count(bos[0]) == 1
    finally:
        model.close()


def test_prometheus_2_strings_are_prometheus_evals_verbatim():
    assert P2.system == pe_prompts.ABS_SYSTEM_PROMPT and P2.relative_system == pe_prompts.REL_SYSTEM_PROMPT
    assert P2.user_with_reference == pe_prompts.ABSOLUTE_PROMPT
    assert P2.user_without_reference == pe_prompts.ABSOLUTE_PROMPT_WO_REF
    assert P2.relative_with_reference == pe_prompts.RELATIVE_PROMPT
    assert P2.relative_without_reference == pe_prompts.RELATIVE_PROMPT_WO_REF
    assert P2.rubric_template == pe_prompts.SCORE_RUBRIC_TEMPLATE
    assert P2.template_source == "profile" and P2.has_relative


def test_prometheus_ko_is_absolute_only_and_says_so():
    ko = get_profile("prometheus-ko")
    assert not ko.has_relative and ko.template_source == "gguf"
    pair = record_from_mapping({"instruction": "q", "response_A": "a", "response_B": "b", "rubric": "c"}, line=1)
    with pytest.raises(UsageError, match=r"'prometheus-ko' has no relative .*\(prometheus-2, prometheus-ko-kudge\)"):
        render_prompt(pair, ko)


def test_profiles_load_from_data_files(tmp_path):
    assert {"prometheus-ko", "prometheus-2"} <= set(profile_names())
    shipped = json.loads(resources.files("prom_local.data").joinpath("profiles/prometheus-2.json")
                         .read_text("utf-8"))
    path = tmp_path / "my-judge.json"
    path.write_text(json.dumps({**shipped, "system": "Judge fairly."}), "utf-8")
    mine = load_profile(path)
    assert isinstance(mine, PromptProfile) and mine.name == "my-judge" and mine.system == "Judge fairly."
    assert mine.relative_with_reference == P2.relative_with_reference
    del shipped["absolute"]
    path.write_text(json.dumps(shipped), "utf-8")
    with pytest.raises(UsageError, match="my-judge.*'absolute'"):
        load_profile(path)
    path.write_text(json.dumps({**shipped, "absolute": {"with_reference": "{instruction}",
                                                        "without_reference": "{instruction}"},
                                "chat_template": {"source": "sometimes"}}), "utf-8")
    with pytest.raises(UsageError, match="'gguf' or 'profile'"):
        load_profile(path)



def test_registry_names_the_prometheus_2_ggufs_with_their_profile():
    from prom_local.store.models import registry
    from prom_local.store.pull import resolve_target

    for name, entry in registry().items():
        get_profile(entry["profile"])   # every registry model names a shipped profile
    for name, file in (("prometheus-2-7b", "prometheus-7b-v2.0.Q4_K_M.gguf"),
                       ("prometheus-2-8x7b", "prometheus-8x7b-v2.0.Q4_K_M.gguf")):
        assert registry()[name]["profile"] == "prometheus-2"
        target = resolve_target(name, None)
        assert (target.file, target.quant, target.name) == (file, "Q4_K_M", name)


def test_prometheus_evals_rubric_string_round_trips_through_the_profile():
    # absolute_grade(rubric=SCORE_RUBRIC_TEMPLATE.format(...)) is parsed into a Rubric, and the
    # profile renders it back: the prompt holds prometheus-eval's string unchanged.
    from prom_local.judging.rubrics import Rubric

    text = pe_prompts.SCORE_RUBRIC_TEMPLATE.format(**RUBRIC)
    assert P2.rubric_template.format(**Rubric.parse(text).as_dict()) == text


@pytest.fixture(scope="module")
def mistral_vocab(tmp_path_factory):
    from mistral_vocab import mistral_tokenizer_dir, mistral_vocab_gguf

    return mistral_tokenizer_dir(), mistral_vocab_gguf(tmp_path_factory.mktemp("mistral-vocab"))


@pytest.mark.slow   # a (vocabulary-only) conversion
@pytest.mark.parametrize("mode,reference", CASES)
def test_prometheus_2_ids_on_mistrals_vocabulary_equal_what_vllm_would_tokenize(
        prometheus_eval_judge, mistral_vocab, mode, reference):
    """The Prometheus 2 models' own vocabulary: prom-local's ids (llama.cpp, template pieces special,
    record text plain) equal transformers' encoding of prometheus-eval's string, BOS added, which is
    what vLLM feeds the model."""
    from transformers import AutoTokenizer

    folder, gguf = mistral_vocab
    theirs = _theirs(prometheus_eval_judge, mode, reference)
    model = load_vocab_only(gguf)
    try:
        assert model.special_text("bos") == "<s>" and model.chat_template is None
        ids = tokenize_prompt(_ours(mode, reference), P2, model)
    finally:
        model.close()
    hf = AutoTokenizer.from_pretrained(folder)
    assert ids == hf.encode(theirs)
    assert ids[0] == 1 and ids.count(1) == 1
