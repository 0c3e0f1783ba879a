"""What llama.cpp's CPU kernels need so that a record gets the same bits whatever else runs.

llama.cpp picks its CPU kernels by the shape of each micro-batch, and two kernels for the same
arithmetic may round differently. A record graded from a cached prefix, at another --parallel, or
beside other requests must still get the bits it gets cold and alone (docs/exactness.md), so the
engine never lets a row's kernel depend on those:

- A prompt is decoded in pieces of at least `exact_tail(flash_attn)` rows, and reuse of a cached
  prefix stops that many tokens before the prompt's end (scheduler.py cuts the pieces). Without
  flash attention the matmuls decide (scheduler.EXACT_TAIL); with it, the attention kernel: ggml-cpu
  (ops.cpp, ggml_compute_forward_flash_attn_ext_f16) computes 64 rows or more of one sequence with a
  tiled kernel and fewer row by row, and the two differ by up to ~0.8 in SmolLM2's logits, while any
  cut into pieces of 64+ rows gives identical bits (measured: ../shared/tools/fa_rows.py in this
  project's history, and tests/test_parallel.py).
- With flash attention, a micro-batch holding one sequence's one token, past 256 cached tokens,
  splits that sequence's KV across threads and sums the parts in another order than the row-by-row
  kernel every other row gets; llama.cpp puts sequences with consecutive ids in one micro-batch, so a
  token is alone when its neighbours' sequences are not in the batch. `pad_rows` gives such a token a
  second row of its own sequence (the same token one position on, its KV dropped after the decode),
  which keeps it on the row-by-row kernel.
"""

from __future__ import annotations

from .scheduler import EXACT_TAIL

FLASH_ATTN_TILE_ROWS = 64   # GGML_FA_TILE_Q in ggml-cpu/common.h


def exact_tail(flash_attn: bool) -> int:
    """The fewest rows a piece of a prompt is decoded in."""
    return max(EXACT_TAIL, FLASH_ATTN_TILE_ROWS if flash_attn else 0)


def pad_rows(items: list[tuple[int, int, int]], capacity: int) -> set[int]:
    """The sequences of a batch whose token would be alone in its micro-batch: items are
    (sequence, tokens in this batch, room left in its KV stream), `capacity` the batch's size."""
    seqs = {seq for seq, _, _ in items}
    lone = [seq for seq, take, room in items
            if take == 1 and seq - 1 not in seqs and seq + 1 not in seqs and room >= 2]
    return set(lone[:capacity - sum(take for _, take, _ in items)])
