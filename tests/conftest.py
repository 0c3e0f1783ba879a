import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

from assets import llama3_tokenizer_dir, smollm2_gguf  # noqa: E402

# tiny_llama3_checkpoint / tiny_llama3_store: a tiny random Llama 3 and its real conversion.
pytest_plugins = ["tiny_llama"]


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="session")
def llama3_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(llama3_tokenizer_dir()))


@pytest.fixture(scope="session")
def tiny_llama3_gguf(tiny_llama3_store):
    """The converted tiny Llama 3 (Q8_0), vocabulary only: llama.cpp's Llama 3 tokenizer and template."""
    from prom_local.engine import read_model_info
    from prom_local.prompts import get_profile
    store, name = tiny_llama3_store
    model = read_model_info(store / name / f"{name}.Q8_0.gguf")
    assert model.chat_template, "the converted GGUF should carry the Llama 3 chat template"
    yield model, get_profile("prometheus-ko")
    model.close()


@pytest.fixture(scope="session")
def card_sample() -> dict:
    return json.loads((TESTS / "data" / "sample-ko.json").read_text("utf-8"))


def run_cli(*args: str, input: str | None = None, cwd: Path | None = None, timeout: float = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, importing this checkout (not whatever is installed)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "prom_local", *args], input=input, text=True,
                          capture_output=True, cwd=cwd, timeout=timeout, env=full_env)


def write_jsonl(path: Path, rows: list) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


RUBRIC = {
    "criteria": "응답은 질문에 정확하게 답하는가?",
    "score1_description": "틀렸다.",
    "score2_description": "대부분 틀렸다.",
    "score3_description": "부분적으로 맞다.",
    "score4_description": "대체로 맞다.",
    "score5_description": "완전히 맞다.",
}


def short_record(i: int, **extra) -> dict:
    """Short Korean records: a few hundred tokens, so real inference stays fast in tests."""
    return {"id": f"r{i}", "instruction": f"{i} 더하기 {i}는?", "response": f"{2 * i}입니다.",
            "rubric": RUBRIC, **extra}
