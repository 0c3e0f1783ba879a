"""llama.cpp's process-wide parts and the model file: backend, log, a loaded GGUF and its tokenizer.

One class per C object, as llama-cpp-python's `_internals.py` has them: `LlamaModel` owns a
`llama_model` and frees it. The context, batch and sampler are in context.py.
"""

from __future__ import annotations

import collections
import ctypes
import os
from pathlib import Path
from typing import Iterable

from ..errors import ModelLoadError, ModelNotFound
from .offload import ModelShape

try:  # Guarded so that importing the package (the CLI, its --help, config readers) works on an
    # install whose binding is missing or broken; that is reported when a model is opened.
    import llama_cpp as _ll
except ImportError:  # pragma: no cover - exercised only on broken installs
    _ll = None

GGUF_MAGIC = b"GGUF"


# ----------------------------------------------------------------------------------------------
# llama.cpp's log: keep it quiet unless asked, but remember it so load failures can say why.

class _LlamaLog:
    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.count = 0   # lines ever logged: a mark for since()
        self.verbose = False
        self._callback = None

    def install(self) -> None:
        if self._callback is not None or _ll is None:
            return

        @_ll.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            message = text.decode("utf-8", "replace")
            self.lines.append(message)
            self.count += 1
            if self.verbose:
                os.write(2, text)

        self._callback = callback  # a reference must outlive the C side's use of it
        _ll.llama_log_set(callback, ctypes.c_void_p(0))

    def mark(self) -> int:
        return self.count

    def since(self, mark: int) -> list[str]:
        """The lines logged after mark() returned `mark` (those still kept)."""
        return list(self.lines)[-min(self.count - mark, len(self.lines)):] if self.count > mark else []

    def tail(self, n: int = 8) -> str:
        return "".join(list(self.lines)[-n:]).strip()

    def why(self, n: int = 8) -> str:
        """The log's last lines as a suffix for an error message ("" when there are none)."""
        tail = self.tail(n)
        return f"\n{tail}" if tail else ""


LOG = _LlamaLog()
_BACKEND_READY = False


def require_llama():
    """The llama_cpp module, with its backend initialised once per process."""
    global _BACKEND_READY
    if _ll is None:
        raise ModelLoadError("llama-cpp-python is not installed: pip install llama-cpp-python")
    if not _BACKEND_READY:
        LOG.install()
        _ll.llama_backend_init()
        _BACKEND_READY = True
    return _ll


def gpu_offload_supported() -> bool:
    """Whether the installed llama.cpp build can put layers on a GPU (CUDA, Metal, Vulkan...)."""
    return bool(require_llama().llama_supports_gpu_offload())


# Names llama.cpp's system info uses for GPU backends, in the order we report them.
_GPU_BACKENDS = ("CUDA", "ROCm", "HIP", "Metal", "Vulkan", "SYCL", "MUSA", "CANN", "OpenCL", "Kompute")


def build_backend() -> str:
    """Which backend this llama.cpp build was compiled with: "CUDA", "Metal", ... or "CPU".

    The build, not what a model uses: a CUDA build running with --gpu-layers 0 still says CUDA.
    """
    info = require_llama().llama_print_system_info().decode("utf-8", "replace")
    for name in _GPU_BACKENDS:
        if f"{name} :" in info or f"{name}:" in info:
            return name
    return "GPU" if gpu_offload_supported() else "CPU"


def binding_version() -> str | None:
    """llama-cpp-python's version; None when it is not installed."""
    return getattr(_ll, "__version__", None)


def llama_build_version() -> str | None:
    """The linked llama.cpp's own version string; None when the binding is missing or broken
    (a broken binding is reported where it is used, not where its version is recorded)."""
    try:
        return _ll.llama_version().decode() if _ll is not None else None
    except Exception:
        return None


def check_gguf_file(path: Path) -> None:
    """Fail early, with the path, for the mistakes llama.cpp would only report as 'failed to load'."""
    if not path.exists():
        raise ModelNotFound(f"{path}: no such file")
    if path.is_dir():
        raise ModelNotFound(f"{path}: is a directory, expected a .gguf file")
    with path.open("rb") as handle:
        head = handle.read(4)
    if head != GGUF_MAGIC:
        raise ModelLoadError(f"{path}: not a GGUF file (starts with {head!r}, expected {GGUF_MAGIC!r})")


# ----------------------------------------------------------------------------------------------
# The model file: weights (or only the vocabulary), metadata, tokenizer.

class LlamaModel:
    """A loaded GGUF. `vocab_only=True` reads the tokenizer and metadata without the weights."""

    def __init__(self, path: str | Path, *, n_gpu_layers: int = 0, vocab_only: bool = False,
                 verbose: bool = False):
        ll = require_llama()
        self.path = Path(path)
        check_gguf_file(self.path)
        LOG.verbose = verbose
        params = ll.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.vocab_only = vocab_only
        LOG.lines.clear()
        self._model = ll.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            raise ModelLoadError(f"{self.path}: llama.cpp could not load this GGUF{LOG.why()}")
        self.n_gpu_layers = n_gpu_layers
        self.vocab_only = vocab_only
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self.metadata = self._read_metadata()
        self._piece_cache: dict[int, bytes] = {}
        self._control_texts: tuple[str, ...] | None = None

    @property
    def handle(self):
        """The llama_model pointer, for the context built on it."""
        return self._model

    def _read_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(1 << 16)
        for i in range(_ll.llama_model_meta_count(self._model)):
            n = _ll.llama_model_meta_key_by_index(self._model, i, buf, len(buf))
            key = buf.value.decode("utf-8", "replace") if n >= 0 else f"#{i}"
            n = _ll.llama_model_meta_val_str_by_index(self._model, i, buf, len(buf))
            if n >= len(buf):  # long values (chat templates) need a bigger buffer
                big = ctypes.create_string_buffer(n + 1)
                _ll.llama_model_meta_val_str_by_index(self._model, i, big, len(big))
                out[key] = big.value.decode("utf-8", "replace")
            else:
                out[key] = buf.value.decode("utf-8", "replace") if n >= 0 else ""
        return out

    # -- shape --------------------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "?")

    def _meta_int(self, suffix: str, default: int = 0) -> int:
        value = self.metadata.get(f"{self.architecture}.{suffix}")
        try:
            return int(value) if value is not None else default
        except ValueError:
            return default

    @property
    def n_layer(self) -> int:
        return self._meta_int("block_count")

    @property
    def n_ctx_train(self) -> int:
        return self._meta_int("context_length", 4096)

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template") or None

    def shape(self) -> ModelShape:
        n_head = self._meta_int("attention.head_count", 1)
        return ModelShape(
            file_bytes=self.path.stat().st_size, n_layer=self.n_layer,
            n_embd=self._meta_int("embedding_length"), n_head=n_head,
            n_head_kv=self._meta_int("attention.head_count_kv", n_head),
            n_ff=self._meta_int("feed_forward_length"), n_vocab=self.n_vocab)

    # -- tokenizer ----------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]:
        """Tokens of text. `special=True` turns written special tokens (<|eot_id|>) into their ids;
        prompts go through prompt_tokens, which uses it only for what the chat template wrote."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            arr = (_ll.llama_token * capacity)()
            n = _ll.llama_tokenize(self._vocab, data, len(data), arr, capacity, add_bos, special)
            if n >= 0:
                return list(arr[:n])
            capacity = -n

    def token_bytes(self, token: int) -> bytes:
        piece = self._piece_cache.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = _ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = _ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
            piece = buf.raw[:n]
            self._piece_cache[token] = piece
        return piece

    def detokenize(self, tokens: Iterable[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", "replace")

    def special_text(self, which: str) -> str:
        """The text of the bos/eos token ("<|begin_of_text|>"), for rendering chat templates."""
        token_id = self.metadata.get(f"tokenizer.ggml.{which}_token_id")
        return self.token_bytes(int(token_id)).decode("utf-8", "replace") if token_id else ""

    def control_token_texts(self) -> tuple[str, ...]:
        """Texts that tokenizing with special=True turns into control ids (<|eot_id|>, <|im_start|>):
        the tokens llama.cpp treats that way are those marked control or unknown, and those marked
        user-defined, which llama.cpp matches as whole tokens even with special parsing off."""
        if self._control_texts is None:
            wanted = (_ll.LLAMA_TOKEN_ATTR_CONTROL | _ll.LLAMA_TOKEN_ATTR_UNKNOWN
                      | _ll.LLAMA_TOKEN_ATTR_USER_DEFINED)
            self._control_texts = tuple(
                text for token in range(self.n_vocab)
                if _ll.llama_vocab_get_attr(self._vocab, token) & wanted
                and (text := self.token_bytes(token).decode("utf-8", "replace")))
        return self._control_texts

    def is_eog(self, token: int) -> bool:
        return bool(_ll.llama_vocab_is_eog(self._vocab, token))

    def close(self) -> None:
        if getattr(self, "_model", None):
            _ll.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass


def load_vocab_only(path: str | Path) -> LlamaModel:
    """The model's metadata and tokenizer without its weights, as a LlamaModel (fast, no GPU memory);
    close it when done."""
    return LlamaModel(path, vocab_only=True)
