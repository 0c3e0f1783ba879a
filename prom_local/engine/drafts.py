"""Drafts from the prompt: prompt-lookup speculative decoding, the lookup half.

A judge's feedback quotes the rubric and the response it grades, so the next few tokens of a
sequence are often a copy of what follows an earlier occurrence of its last few tokens. `NgramIndex`
keeps, for every n-gram (n = MIN_NGRAM..MAX_NGRAM) of a sequence's prompt and output, where its most
recent occurrence was followed, and `draft(k)` proposes the k tokens that followed the last n-gram
the last time (the longest n that matches wins). No second model, no extra memory beyond a dict.

The engine (core.py) decodes the pending token and its drafts in one batch row run, with logits for
every position, and verifies them there: see `accept_drafts` below for why the rule used keeps the
model's own output, greedy and sampled alike.
"""

from __future__ import annotations

from typing import Callable, Sequence

# The longest n-gram matched first: a 3-token context picks the right copy far more often than one
# token does; 2 is the shortest tried (a single repeated token, e.g. a space or a particle, matches
# everywhere and its drafts are mostly rejected, which on a CPU costs compute for nothing).
MAX_NGRAM = 3
MIN_NGRAM = 2
# Tokens drafted per step when drafts are on by default (see draft_default).
DEFAULT_DRAFT = 8


def draft_default(draft: int | None, n_gpu_layers: int) -> int:
    """Drafts per step: `draft` when given, else the measured default. A drafted row costs what a
    prompt token costs, and pays only where one decode step is bound by reading the weights (a
    GPU, a big model on many CPU cores): there verifying k more tokens is nearly free. Measured
    (benchmarks/drafts.py, docs/performance.md "Drafts from the prompt"): on a CPU with SmolLM2, 3.89 drafts
    accepted per verification cut decode steps 3.7x yet cost 7-10% more CPU at --parallel 1 and
    22% at 4, so the CPU default is off; on with GPU layers (not measured here: gpu_check.sh)."""
    if draft is not None:
        return max(0, draft)
    return DEFAULT_DRAFT if n_gpu_layers != 0 else 0


class NgramIndex:
    """Where each n-gram of a token sequence was last followed; grows as tokens are accepted."""

    def __init__(self, tokens: Sequence[int] = (), *, max_n: int = MAX_NGRAM, min_n: int = MIN_NGRAM):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"n-gram sizes must satisfy 1 <= min_n <= max_n, got {min_n}..{max_n}")
        self.sizes = range(max_n, min_n - 1, -1)
        self.tokens: list[int] = []
        # n -> {n-gram: index of the token that followed its latest occurrence}
        self._next: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        """Tokens that are now part of the sequence (prompt, or accepted output)."""
        toks = self.tokens
        for token in tokens:
            toks.append(int(token))
            p = len(toks) - 1
            # The n-grams ending just before the new token are now known to be followed by it.
            for n, table in self._next.items():
                if p >= n:
                    table[tuple(toks[p - n:p])] = p

    def draft(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the sequence's last n-gram
        (the longest n that occurred); [] when none did or k <= 0."""
        toks = self.tokens
        if k <= 0:
            return []
        for n in self.sizes:
            if len(toks) <= n:
                continue
            start = self._next[n].get(tuple(toks[-n:]))
            if start is not None:
                return toks[start:start + k]
        return []


def accept_drafts(drafts: Sequence[int], sample_at: Callable[[int], int | None]) -> tuple[int, int]:
    """Verify drafts against the model: `sample_at(i)` draws (and emits) the model's next token
    from logits row i (row 0 follows the pending token, row i follows draft i-1), or returns None
    when the request ended there. Returns (drafts accepted, logits rows used): rows 0..accepted-1
    drew the drafts themselves, the last row drew the model's own token (a mismatch, the token
    after the last draft, or where the request ended). The KV of the pending token and of the
    accepted drafts stays; the rest is rejected.

    Why this is the standard speculative-sampling rule: a lookup draft is deterministic, so the
    proposal q is a point mass on the draft token t. The rule accepts t with probability
    min(1, p(t)/q(t)) = p(t), and on rejection draws from max(0, p - q) renormalised, i.e. p with t
    removed and renormalised. Drawing s ~ p and accepting iff s == t does exactly that: P(accept) =
    p(t), and given s != t, s is distributed as p without t, renormalised. So every emitted token
    is distributed as p, and (unlike a separate accept/reject coin) it takes one draw per emitted
    token, the same stream of draws as decoding without drafts; greedy (p a point mass on the
    argmax) is the argmax. With a seed, the tokens are those the same draws pick from the logits
    of the same text computed in one batch (tests/test_drafts.py replays them); drafts off picks
    them from a lone token's logits, which llama.cpp's CPU kernels round differently, so a draw
    or a greedy near-tie may go the other way there.
    """
    for i in range(len(drafts) + 1):
        token = sample_at(i)
        if token is None or i == len(drafts) or token != drafts[i]:
            return i, i + 1
    raise AssertionError("unreachable: the last row always ends the loop")
