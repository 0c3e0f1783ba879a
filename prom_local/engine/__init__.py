"""llama.cpp, and nothing above it: load a GGUF, tokenize, and decode many sequences together.

Within the prom_local library this package is the only code that calls llama.cpp (convert/'s
quantize and imatrix steps call it themselves); everything else sees token lists, strings and
floats. Its parts, one concern each:

  config.py      EngineConfig, SamplingParams (what the CLI's options map onto)
  requests.py    GenRequest in; TokenEvent / DoneEvent / ErrorEvent out
  llama.py       backend, log, LlamaModel (a GGUF: metadata, tokenizer)
  context.py     LlamaContext, LlamaBatch, SamplerChain (one class per llama.cpp object)
  cache.py       PrefixCache: which tokens' KV each sequence holds; copy, trim, eviction
  scheduler.py   admission, prefix waits, rounds, KV bounds: pure Python, tested without a model
  submission.py  submit() from any thread / generate(); who runs the loop
  host_cache.py  the host prompt store: KV states of finished prompts kept in RAM for reuse
  core.py        Engine: the decode loop over all of the above
  loading.py     loading a GGUF: context size, --parallel, GPU layers (retried with fewer on OOM)
  offload.py     the planning arithmetic: GPU layers, context sizing, --parallel from free memory
  devices.py     the devices llama.cpp sees (ggml's registry); the one nvidia-smi reader (CUDA_VISIBLE_DEVICES)
  model_info.py  the one GGUF summary, quant names, what a loaded model is
"""

from .cache import PrefixCache
from .config import EngineConfig, SamplingParams
from .core import Engine
from .llama import (GGUF_MAGIC, LlamaModel, build_backend, check_gguf_file, gpu_offload_supported,
                    load_vocab_only)
from .requests import DoneEvent, EngineStats, ErrorEvent, Event, GenOutput, GenRequest, TokenEvent, log_softmax
from .scheduler import CONTINUATION_RESERVE, EXACT_TAIL, MIN_WAIT_GAIN, Scheduler
from .submission import EngineClosed, RequestHandle

__all__ = ["CONTINUATION_RESERVE", "EXACT_TAIL", "DoneEvent", "Engine", "EngineClosed", "EngineConfig", "EngineStats",
           "ErrorEvent", "Event", "GGUF_MAGIC", "GenOutput", "GenRequest", "LlamaModel", "MIN_WAIT_GAIN",
           "PrefixCache", "RequestHandle", "SamplingParams", "Scheduler", "TokenEvent", "build_backend",
           "check_gguf_file", "gpu_offload_supported", "load_vocab_only", "log_softmax"]
