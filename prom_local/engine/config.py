"""How an engine is built and how a request samples: the two dataclasses the CLI's options map onto.

Kept apart from the engine's code so that option declarations (cli/options.py) and tools that only
need the defaults read them without touching llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0   # 0 = greedy, deterministic
    top_p: float = 1.0
    top_k: int = 0
    repeat_penalty: float = 1.0
    seed: int = 0
    max_tokens: int = 512
    # Samples of one prompt (vLLM's and OpenAI's `n`): the prompt is decoded once and its KV copied
    # to n sequences, sample i drawing with seed + i. Each sample needs a sequence of its own.
    n: int = 1

    def for_sample(self, i: int) -> "SamplingParams":
        """The settings sample i draws with: the same, seeded seed + i (a run is reproducible, and
        samples at a temperature differ from one another)."""
        return self if i == 0 else replace(self, seed=self.seed + i)


@dataclass
class EngineConfig:
    n_ctx: int | None = None             # per sequence; None = min(8192, trained context)
    # Tokens the longest record of the work needs (prompt + max new tokens), when the caller knows:
    # n_ctx is then sized to it, with n_ctx (or the trained context) as the cap (offload.context_size).
    need_tokens: int | None = None
    gpu_layers: int | None = None        # None = auto, -1 = all, 0 = CPU, N = N layers
    n_threads: int | None = None
    n_parallel: int | None = 1           # sequences in flight; None = choose from memory (auto)
    # Fewest sequences, whatever n_parallel says: requests with SamplingParams.n samples need n.
    min_parallel: int = 1
    n_batch: int = 512
    verbose: bool = False
    # Requests read ahead of the free slots, to start those that share a cached prefix first.
    # None = 4 x n_parallel; 1 = strictly in input order (always so with n_parallel 1).
    lookahead: int | None = None
    # llama.cpp's flash attention: True, False, or None = auto (llama.cpp's own default: on wherever
    # its device runs the op; on these machines' CPUs it computes prompts ~30% faster). With it on,
    # the scheduler cuts prompts so that a cached prefix still gives the cold result
    # (Engine.exact_tail).
    flash_attn: bool | None = None
    # Put prompt chunks in the same batch as generated tokens. None = on a GPU only (see
    # Engine._round).
    mix_prompts: bool | None = None
    # Host memory (MiB) for earlier prompts' KV that the sequences no longer hold (host_cache.py);
    # 0 = off. Used as prompts are replaced, up to this; llama-server's --cache-ram is the same idea.
    host_cache_mib: int = 1024
    # The types llama.cpp keeps K and V in: "f16", "q8_0", "q4_0" (llama-server's -ctk/-ctv), or
    # "auto": f16 unless a type measured to change scores little fits more layers or more sequences
    # on the GPU (offload.auto_plan). A quantized V turns flash attention on.
    cache_type_k: str = "auto"
    cache_type_v: str = "auto"
    # Drafts from the prompt (engine/drafts.py): at most this many tokens drafted per sequence and
    # step by n-gram lookup in its own prompt and output, verified in the same batch; 0 = off.
    # None = the measured default (drafts.draft_default: on with GPU layers, off on CPU).
    draft: int | None = None
