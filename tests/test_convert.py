"""`prom-local convert` on a tiny random Llama 3 checkpoint: what conversion must preserve (chat template,
tokenizer, logits), the store and manifest, resume, and the errors a user can cause.

Everything runs for real: llama.cpp's converter, llama_model_quantize, llama.cpp loading the results,
transformers as the reference. The fixtures (tests/tiny_llama.py) convert once per session.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from assets import LLAMA3_INSTRUCT_TEMPLATE
from helpers import ROOT as REPO_ROOT, run_cli
from tiny_llama import convert_report

SAMPLE = json.loads((REPO_ROOT / "tests" / "data" / "sample-ko.json").read_text("utf-8"))

pytestmark = pytest.mark.slow


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gguf(store: Path, name: str, quant: str) -> Path:
    return store / name / f"{name}.{quant}.gguf"


def probe_texts() -> list[str]:
    """Korean, English, mixed, digits, whitespace and special-token text, plus the card sample."""
    rec = SAMPLE["record"]
    texts = [
        "Hello world",
        "The response is mostly accurate, but it misses the second point. [RESULT] 4",
        "이 응답은 갈등 해결에 대한 이해가 부족함을 보여준다. 따라서 전체 점수는 1이다.",
        "피드백: 응답은 rubric의 기준을 잘 따르고 있으며, GPT-4의 답변과 비교해도 손색이 없다 (score 5/5).",
        "2024년 5월 13일, 서울 — 1234567 won; e-mail: judge@example.com\n\n  ###Feedback:",
        "   leading spaces\ttabs\n\nnew lines   ",
        "한국어English混合テキスト 😀 ✅",
        rec["orig_instruction"], rec["orig_response"], rec["orig_reference_answer"], rec["orig_criteria"],
        *SAMPLE["card_outputs"].values(),
    ]
    rng = random.Random(7)
    words = " ".join(texts).split()
    for _ in range(200):  # random recombinations hit merge orders the fixed texts do not
        texts.append(rng.choice([" ", "", "\n"]).join(rng.choice(words) for _ in range(rng.randint(1, 10))))
        texts.append("".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(rng.randint(1, 6))))
    return texts


# ------------------------------------------------------------------------------------------------
# The store and its manifest.

def test_store_holds_each_quant_with_a_true_manifest(tiny_llama3_store, tiny_llama3_checkpoint):
    store, name = tiny_llama3_store
    manifest = json.loads((store / name / "manifest.json").read_text("utf-8"))
    assert manifest["format"] == 1 and manifest["name"] == name
    assert manifest["profile"] == "prometheus-ko"
    assert manifest["source"]["kind"] == "local"
    assert manifest["source"]["path"] == str(tiny_llama3_checkpoint.resolve())
    assert manifest["tools"]["converter"]["version"]
    assert manifest["tools"]["llama_cpp"] and manifest["tools"]["llama_cpp_python"]
    datetime.fromisoformat(manifest["created"])
    assert manifest["gguf"]["tokenizer_pre"] == "llama-bpe"
    assert manifest["gguf"]["architecture"] == "llama" and manifest["gguf"]["n_vocab"] == 128256
    assert set(manifest["files"]) == {"F16", "Q8_0", "Q4_K_M"}
    for quant, entry in manifest["files"].items():
        path = gguf(store, name, quant)
        assert entry["file"] == path.name
        assert entry["size"] == path.stat().st_size
        assert entry["sha256"] == sha256(path)
        assert entry["role"] == "output"  # F16 too: --keep-f16
        assert entry["source"]["fingerprint"] == manifest["source"]["fingerprint"]
    assert manifest["files"]["Q8_0"]["from_sha256"] == manifest["files"]["F16"]["sha256"]
    sizes = {q: e["size"] for q, e in manifest["files"].items()}
    assert sizes["Q4_K_M"] < sizes["Q8_0"] < sizes["F16"]
    assert not list((store / name).glob("*.partial"))

    report = convert_report(store)
    ran = {(s["stage"], s["target"]) for s in report["stages"] if s["status"] == "ran"}
    assert ("convert", f"{name}.F16.gguf") in ran
    assert {("quantize", f"{name}.{q}.gguf") for q in ("Q8_0", "Q4_K_M")} <= ran
    peak = {s["target"]: s["peak_rss_bytes"] for s in report["stages"] if s["stage"] in ("convert", "quantize")}
    assert all(v and v > 0 for v in peak.values())
    print("\nsizes:", sizes, "\nstages:", [(s["stage"], s["target"], round(s["seconds"], 2),
                                             s["peak_rss_bytes"]) for s in report["stages"]])


def test_models_lists_and_score_resolves_the_converted_files(tiny_llama3_store):
    from prom_local.store.models import resolve_model

    store, name = tiny_llama3_store
    result = run_cli("models", "--models-dir", store, "--json")
    assert result.returncode == 0, result.stderr
    files = {row["quant"]: row for row in json.loads(result.stdout)["files"] if row["name"] == name}
    assert set(files) == {"F16", "Q8_0", "Q4_K_M"}
    assert all(len(row["sha256"]) == 64 for row in files.values())
    resolved = resolve_model(f"{name}:Q8_0", store)
    assert resolved.path == gguf(store, name, "Q8_0") and resolved.profile == "prometheus-ko"


# ------------------------------------------------------------------------------------------------
# What conversion must preserve.

def test_every_gguf_carries_the_llama3_chat_template(tiny_llama3_store):
    import llama_cpp

    from prom_local.engine import load_vocab_only

    store, name = tiny_llama3_store
    for quant in ("F16", "Q8_0", "Q4_K_M"):
        model = load_vocab_only(gguf(store, name, quant))
        assert model.chat_template == LLAMA3_INSTRUCT_TEMPLATE
        assert model.metadata["tokenizer.ggml.pre"] == "llama-bpe"
        assert model.metadata["tokenizer.ggml.bos_token_id"] == "128000"
        assert model.metadata["tokenizer.ggml.eos_token_id"] == "128009"
        model.close()
    llm = llama_cpp.Llama(str(gguf(store, name, "Q4_K_M")), vocab_only=True, verbose=False)
    assert llm.chat_format == "llama-3"


def test_llama_cpp_tokenizes_like_the_hf_tokenizer(tiny_llama3_store, tiny_llama3_checkpoint):
    from transformers import AutoTokenizer

    from prom_local.engine import load_vocab_only

    store, name = tiny_llama3_store
    hf = AutoTokenizer.from_pretrained(tiny_llama3_checkpoint)
    model = load_vocab_only(gguf(store, name, "Q8_0"))
    texts = probe_texts()
    mismatches = [t for t in texts if model.tokenize(t, special=False) != hf.encode(t, add_special_tokens=False)]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[0]!r}"
    # Written special tokens, and BOS added the way each side adds it.
    chat = "<|start_header_id|>user<|end_header_id|>\n\n안녕하세요 hello<|eot_id|>"
    assert model.tokenize(chat, special=True) == hf.encode(chat, add_special_tokens=False)
    assert model.tokenize("평가 score", add_bos=True) == hf.encode("평가 score") == \
        [128000] + hf.encode("평가 score", add_special_tokens=False)
    model.close()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _kl(lp: np.ndarray, lq: np.ndarray) -> np.ndarray:
    """KL(p || q) per position, from log-probabilities."""
    return (np.exp(lp) * (lp - lq)).sum(-1)


def test_logits_match_hf_and_q8_stays_close_to_f16(tiny_llama3_store, tiny_llama3_checkpoint):
    import llama_cpp
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    store, name = tiny_llama3_store
    tok = AutoTokenizer.from_pretrained(tiny_llama3_checkpoint)
    rec = SAMPLE["record"]
    prompts = ["Hello world, this is a test of the judge.", "이 응답은 갈등 해결에 대한 이해가 부족함을 보여준다.",
               "Feedback: 응답은 rubric을 따른다 [RESULT] 4", rec["orig_instruction"][:60]]
    ids = [tok.encode(p) for p in prompts]  # with BOS, as prompts are decoded

    hf = LlamaForCausalLM.from_pretrained(tiny_llama3_checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = np.concatenate([hf(torch.tensor([i])).logits[0].double().numpy() for i in ids])

    def gguf_logits(quant: str) -> np.ndarray:
        # n_ctx just above the longest probe: Llama keeps an n_ctx x n_vocab array of scores.
        n_ctx = max(map(len, ids)) + 8
        llm = llama_cpp.Llama(str(gguf(store, name, quant)), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx,
                              n_threads=1, verbose=False)
        rows = []
        for i in ids:
            llm.reset()
            llm.eval(i)
            rows.append(np.array(llm.scores[:len(i)], dtype=np.float64))
        llm.close()
        return np.concatenate(rows)

    f16, q8, q4 = gguf_logits("F16"), gguf_logits("Q8_0"), gguf_logits("Q4_K_M")
    n = len(ref)
    f16_diff = float(np.abs(f16 - ref).max())
    f16_top1 = float((f16.argmax(-1) == ref.argmax(-1)).mean())
    l_ref, l_f16 = _log_softmax(ref), _log_softmax(f16)
    kl_q8, kl_q4 = _kl(l_f16, _log_softmax(q8)), _kl(l_f16, _log_softmax(q4))
    q8_top1 = float((q8.argmax(-1) == f16.argmax(-1)).mean())
    print(f"\n{n} positions; logit range [{ref.min():.2f}, {ref.max():.2f}]\n"
          f"F16 vs HF: max |diff| {f16_diff:.5f}, top-1 agreement {f16_top1:.3f}, "
          f"KL(HF||F16) max {_kl(l_ref, l_f16).max():.2e}\n"
          f"Q8_0 vs F16: KL mean {kl_q8.mean():.2e} max {kl_q8.max():.2e}, top-1 agreement {q8_top1:.3f}, "
          f"max |diff| {np.abs(q8 - f16).max():.4f}\n"
          f"Q4_K_M vs F16: KL mean {kl_q4.mean():.2e} max {kl_q4.max():.2e}, top-1 agreement "
          f"{(q4.argmax(-1) == f16.argmax(-1)).mean():.3f}")
    assert f16_top1 == 1.0, "the f16 GGUF must pick the same next token as transformers at every position"
    assert f16_diff < 0.01
    assert kl_q8.mean() < 1e-3 and kl_q8.max() < 1e-2
    assert kl_q8.mean() < kl_q4.mean()  # more bits, closer


def test_render_token_ids_equal_transformers_apply_chat_template(tiny_llama3_store, tiny_llama3_checkpoint,
                                                                   tmp_path):
    from transformers import AutoTokenizer

    from prom_local.judging.prompts import get_profile
    from prom_local.judging.records import record_from_mapping

    store, name = tiny_llama3_store
    data = {"id": "card-sample", **SAMPLE["record"]}
    records = tmp_path / "in.jsonl"
    records.write_text(json.dumps(data, ensure_ascii=False) + "\n", "utf-8")
    result = run_cli("render", records, "--model", f"{name}:Q8_0", "--models-dir", store)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.splitlines()[0])

    tok = AutoTokenizer.from_pretrained(tiny_llama3_checkpoint)
    messages = get_profile("prometheus-ko").messages(record_from_mapping(data, line=1))
    expected = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert row["tokens"] == list(expected)
    assert row["tokens"][0] == 128000 and row["tokens"][-4:] == [128006, 78191, 128007, 271]


def test_score_runs_end_to_end_on_the_converted_model(tiny_llama3_store, tmp_path):
    store, name = tiny_llama3_store
    records = tmp_path / "in.jsonl"
    records.write_text(json.dumps({"id": "s1", **SAMPLE["record"]}, ensure_ascii=False) + "\n", "utf-8")
    out = tmp_path / "out.jsonl"
    result = run_cli("score", records, "--model", f"{name}:Q4_K_M", "--models-dir", store,
                     "--max-tokens", "8", "--ctx", "2048", "--gpu-layers", "0", "-o", out, "--quiet")
    assert result.returncode == 0, result.stderr
    row = json.loads(out.read_text("utf-8").splitlines()[0])
    assert row["id"] == "s1" and row["score"] in (1, 2, 3, 4, 5)
    assert row["forced"] is True  # 8 tokens of a random model never write a score itself


# ------------------------------------------------------------------------------------------------
# Resume.

def _stages(stdout: str) -> dict[tuple[str, str], str]:
    return {(s["stage"], s["target"]): s["status"] for s in json.loads(stdout)["stages"]}


def test_resume_reruns_only_the_missing_or_damaged_stage(tiny_llama3_store, tiny_llama3_checkpoint, tmp_path):
    src_store, name = tiny_llama3_store
    store = tmp_path / "models"
    shutil.copytree(src_store, store)
    files = {q: gguf(store, name, q) for q in ("F16", "Q8_0", "Q4_K_M")}
    original = {q: sha256(p) for q, p in files.items()}
    args = ["convert", tiny_llama3_checkpoint, "--out", store, "--name", name, "--keep-f16",
            "--quant", "Q8_0", "--quant", "Q4_K_M", "--json"]

    # An output deleted: only its quantize stage runs, from the kept F16.
    files["Q8_0"].unlink()
    before = {q: files[q].stat().st_mtime_ns for q in ("F16", "Q4_K_M")}
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    stages = _stages(result.stdout)
    assert stages[("quantize", f"{name}.Q8_0.gguf")] == "ran"
    assert stages[("quantize", f"{name}.Q4_K_M.gguf")] == "skipped"
    assert ("convert", f"{name}.F16.gguf") not in stages or stages[("convert", f"{name}.F16.gguf")] == "skipped"
    assert {q: files[q].stat().st_mtime_ns for q in ("F16", "Q4_K_M")} == before
    assert sha256(files["Q8_0"]) == original["Q8_0"]  # llama.cpp's quantizer is deterministic

    # An output truncated behind the manifest's back: its hash gives it away, and only it is redone.
    data = files["Q8_0"].read_bytes()
    files["Q8_0"].write_bytes(data[: len(data) // 2])
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    stages = _stages(result.stdout)
    assert stages[("quantize", f"{name}.Q8_0.gguf")] == "ran"
    assert stages[("quantize", f"{name}.Q4_K_M.gguf")] == "skipped"
    assert "differs from the manifest" in result.stderr
    assert sha256(files["Q8_0"]) == original["Q8_0"]
    manifest = json.loads((store / name / "manifest.json").read_text("utf-8"))
    assert {q: e["sha256"] for q, e in manifest["files"].items()} == original

    # Asking for the same files from another checkpoint is refused, not silently mixed.
    from convert.pipeline import convert_model
    from prom_local.errors import ConvertError

    other = tmp_path / "other-ckpt"
    shutil.copytree(tiny_llama3_checkpoint, other)
    (other / "generation_config.json").write_text('{"do_sample": false}', "utf-8")
    with pytest.raises(ConvertError, match="--force") as info:
        convert_model(str(other), store=store, name=name, quants=["Q8_0", "Q4_K_M"], keep_f16=True)
    assert str(files["Q8_0"]) in str(info.value)


# ------------------------------------------------------------------------------------------------
# Errors a user can cause: a message naming the file, an exit code, never a traceback.

def test_pickled_weights_are_refused_unless_allowed(tmp_path, tiny_llama3_checkpoint):
    import torch

    from convert.source import identify

    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer_config.json", "tokenizer.json"):
        (folder / name).symlink_to(tiny_llama3_checkpoint / name)
    torch.save({"model.embed_tokens.weight": torch.zeros(4, 4)}, folder / "pytorch_model.bin")
    store = tmp_path / "models"
    result = run_cli("convert", folder, "--out", store)
    assert result.returncode == 5
    assert "pytorch_model.bin" in result.stderr and "--allow-pickle" in result.stderr
    assert "Traceback" not in result.stderr
    assert not store.exists()
    allowed = identify(str(folder), allow_pickle=True)
    assert allowed.kind == "local" and allowed.path == folder.resolve()


def test_truncated_or_foreign_gguf_gives_a_clear_error(tiny_llama3_store, tmp_path):
    from convert.quantize import quantize
    from prom_local.errors import ConvertError

    store, name = tiny_llama3_store
    data = gguf(store, name, "Q8_0").read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 3])
    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"PK\x03\x04 not a gguf at all")
    records = tmp_path / "in.jsonl"
    records.write_text(json.dumps({"id": "1", **SAMPLE["record"]}, ensure_ascii=False) + "\n", "utf-8")
    for path, words in ((truncated, "could not load"), (foreign, "not a GGUF file")):
        result = run_cli("score", records, "--model", path, "-o", tmp_path / "out.jsonl", "--quiet")
        assert result.returncode == 3, result.stderr
        assert str(path) in result.stderr and words in result.stderr
        assert "Traceback" not in result.stderr
    # The quantizer, given a truncated 16-bit GGUF, fails with llama.cpp's reason and the file name.
    half_f16 = tmp_path / "half.F16.gguf"
    f16 = gguf(store, name, "F16").read_bytes()
    half_f16.write_bytes(f16[: len(f16) // 2])
    with pytest.raises(ConvertError) as info:
        quantize(half_f16, tmp_path / "out.Q8_0.gguf", "Q8_0")
    assert str(half_f16) in str(info.value) and "not within the file bounds" in str(info.value)
    assert not list(tmp_path.glob("out.Q8_0.gguf*"))


def test_truncated_safetensors_shard_is_named(tmp_path, tiny_llama3_checkpoint):
    folder = tmp_path / "cut"
    folder.mkdir()
    for path in tiny_llama3_checkpoint.iterdir():
        if path.name != "model.safetensors":
            (folder / path.name).symlink_to(path)
    data = (tiny_llama3_checkpoint / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 1000])
    result = run_cli("convert", folder, "--out", tmp_path / "models")
    assert result.returncode == 5 and "model.safetensors: truncated" in result.stderr
    assert "Traceback" not in result.stderr


def test_quant_names_and_disk_checks():
    from convert.pipeline import check_free
    from convert.quantize import parse_quant
    from prom_local.errors import ConvertError, DiskSpaceError

    assert parse_quant("q4_k_m") == "Q4_K_M" and parse_quant("Q8_0") == "Q8_0" and parse_quant("bf16") == "BF16"
    with pytest.raises(ConvertError, match="Q4_K_M"):
        parse_quant("Q9_9")
    with pytest.raises(ConvertError, match="importance matrix"):
        parse_quant("IQ2_XS")
    with pytest.raises(DiskSpaceError) as info:
        check_free(REPO_ROOT / "models" / "not-made-yet", 1 << 60, "converting to F16")
    assert "needs about" in str(info.value) and str(REPO_ROOT) in str(info.value)
    assert not (REPO_ROOT / "models" / "not-made-yet").exists()


def test_convert_rejects_bad_arguments_before_any_work(tiny_llama3_checkpoint, tmp_path):
    from convert.pipeline import convert_model
    from prom_local.errors import ConvertError

    store = tmp_path / "models"
    for kwargs, words in (({"quants": ["Q9_9"]}, "not a llama.cpp quantization type"),
                          ({"name": "a:b"}, "--name"),
                          ({"revision": "v1"}, "only applies to a hub repo"),
                          ({"outtype": "f8"}, "--outtype")):
        with pytest.raises(ConvertError, match=words):
            convert_model(str(tiny_llama3_checkpoint), store=store, **kwargs)
    result = run_cli("convert", tmp_path / "nowhere", "--out", store)
    assert result.returncode == 5 and "no such folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert not store.exists()
