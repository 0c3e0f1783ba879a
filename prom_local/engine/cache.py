"""The prefix cache: which tokens' KV each sequence of the context holds, and how to reuse it.

Pure Python and numpy. The KV itself lives in llama.cpp; this keeps its table of contents (per
sequence, the tokens at positions 0..n-1) and issues the only two operations that change it besides
decoding, a whole-sequence copy and a trim, to a `memory` (the llama.cpp context, or nothing in
tests), so the table and the KV cannot drift apart. With a host store (host_cache.py) it also saves
what a sequence is about to lose there, and loads a stored prompt back when that beats every sequence.
"""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence

import numpy as np

# Tokens a sequence must be about to lose before its state is worth saving to the host store, and
# tokens a stored state must add over the best sequence before loading it beats computing them
# (a load copies the whole state; below this, computing the difference costs about the same).
MIN_SPILL = 32
MIN_RECALL_GAIN = 32


class KvMemory(Protocol):
    def seq_cp(self, src: int, dst: int) -> None: ...
    def seq_rm(self, seq: int, keep: int) -> None: ...
    # Only with a host store:
    def seq_save(self, seq: int): ...                      # the sequence's state, bytes-like
    def seq_load(self, seq: int, data) -> bool: ...       # replace the sequence with a state


class PromptStore(Protocol):
    """What the cache asks of a host store (host_cache.HostPromptCache). A protocol, not an import:
    the store uses this module's common_prefix, and the two modules must not import each other."""
    def best(self, arr: np.ndarray, limit: int) -> tuple[object | None, int]: ...
    def used(self, entry) -> None: ...
    def covers(self, tokens: np.ndarray) -> bool: ...
    def put(self, tokens: np.ndarray, data) -> bool: ...


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    # numpy compares long prompts far faster than a Python loop.
    if n <= 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


class PrefixCache:
    """Tokens whose KV each of `n_seq` sequences holds (at most `capacity` each)."""

    def __init__(self, n_seq: int, capacity: int, memory: KvMemory | None = None,
                 store: PromptStore | None = None):
        self._buf = np.zeros((n_seq, capacity), dtype=np.int64)
        self.n = [0] * n_seq            # sequence s holds buf[s, :n[s]]
        # Of which the first exact[s] were decoded as prompt pieces of at least the scheduler's
        # exact tail: only those are offered for reuse. A generated token or a short prompt went
        # through another kernel than a cold prompt's piece would (scheduler.EXACT_TAIL,
        # context.FLASH_ATTN_TILE_ROWS), so a prompt that continues into them computes them again.
        self.exact = [0] * n_seq
        self.last_used = [0] * n_seq    # admission stamp of the last request given the sequence
        self.memory = memory
        self.store = store if memory is not None else None
        # Stream copies llama.cpp carries out at the next decode: until then a destination's data
        # is not there to save, and a state loaded into a source would be what gets copied.
        self._copy_src: set[int] = set()
        self._copy_dst: set[int] = set()

    @property
    def n_seq(self) -> int:
        return len(self.n)

    def tokens(self, seq: int) -> np.ndarray:
        return self._buf[seq, :self.n[seq]]

    def shared(self, seq: int, arr: np.ndarray, limit: int) -> int:
        """Tokens of `arr` (up to limit) whose KV sequence `seq` holds right now, as a cold prompt
        would have computed them."""
        return common_prefix(self._buf[seq, :self.exact[seq]], arr, limit)

    def longest(self, arr: np.ndarray, limit: int, prefer: int) -> tuple[int, int]:
        """(sequence, tokens) holding the longest prefix of arr; `prefer` wins ties (no copy)."""
        src, have = prefer, self.shared(prefer, arr, limit)
        for seq in range(self.n_seq):
            if seq != prefer:
                n = self.shared(seq, arr, limit)
                if n > have:
                    src, have = seq, n
        return src, have

    def choose(self, free: Sequence[int], arr: np.ndarray, upcoming: Iterable[np.ndarray]) -> int:
        """The free sequence a new prompt goes to: its own cache if that is the best match anywhere,
        else the free sequence whose cache the upcoming prompts need least (so shared prefixes
        outlive the records that made them), the least recently used among equals."""
        limit = len(arr) - 1
        own = max(free, key=lambda s: (self.shared(s, arr, limit), -self.last_used[s]))
        best_anywhere = max(self.shared(s, arr, limit) for s in range(self.n_seq))
        if self.n[own] and self.shared(own, arr, limit) == best_anywhere and best_anywhere > 0:
            return own
        upcoming = list(upcoming)

        def usefulness(seq: int) -> tuple[int, int]:
            need = max((self.shared(seq, a, len(a) - 1) for a in upcoming), default=0)
            return need, self.last_used[seq]

        return min(free, key=usefulness)

    def touch(self, seq: int, stamp: int) -> None:
        self.last_used[seq] = stamp

    # -- the host store ---------------------------------------------------------------------------
    def recallable(self, arr: np.ndarray, limit: int) -> int:
        """Tokens of arr (up to limit) a stored state holds."""
        return self.store.best(arr, limit)[1] if self.store is not None else 0

    def recall(self, seq: int, arr: np.ndarray, limit: int) -> int:
        """Load the stored state sharing most of arr into `seq` (saving what seq holds first);
        returns the tokens of arr it now holds (0 when nothing was loaded)."""
        entry, n = self.store.best(arr, limit) if self.store is not None else (None, 0)
        if entry is None or seq in self._copy_src or seq in self._copy_dst:
            return 0
        self._spill(seq, self.shared(seq, entry.tokens, len(entry.tokens)))
        if not self.memory.seq_load(seq, entry.data):  # type: ignore[union-attr]
            self.memory.seq_rm(seq, 0)  # type: ignore[union-attr]
            self.n[seq] = 0
            return 0
        self.store.used(entry)
        k = len(entry.tokens)
        self._buf[seq, :k] = entry.tokens
        self.n[seq] = self.exact[seq] = k   # (only exact prefixes are stored)
        return n

    def _spill(self, seq: int, keep: int) -> None:
        """`seq` is about to keep only its first `keep` tokens: save its state first when what it
        loses is worth keeping and neither the store nor another sequence has it."""
        if self.store is None or self.exact[seq] - keep < MIN_SPILL or seq in self._copy_dst:
            return
        tokens = self._buf[seq, :self.exact[seq]]
        n = len(tokens)
        if self.store.covers(tokens) or any(s != seq and self.shared(s, tokens, n) == n
                                            for s in range(self.n_seq)):
            return
        data = self.memory.seq_save(seq)  # type: ignore[union-attr]
        if data is not None:
            self.store.put(tokens, data)

    def copies_done(self) -> None:
        """A decode ran: llama.cpp has carried out the pending stream copies."""
        self._copy_src.clear()
        self._copy_dst.clear()

    # -- changes ----------------------------------------------------------------------------------
    def reuse(self, seq: int, src: int, keep: int) -> None:
        """Make `seq` hold the first `keep` tokens of what `src` holds (itself: a trim)."""
        own = keep if src == seq else self.shared(seq, self._buf[src, :keep], keep)
        self._spill(seq, own)
        exact = min(self.exact[src], keep)
        if src != seq:
            if self.memory is not None:
                self.memory.seq_cp(src, seq)
                self._copy_src.add(src)
                self._copy_dst.add(seq)
            n = self.n[src]
            self._buf[seq, :n] = self._buf[src, :n]
            self.n[seq] = n
        if self.memory is not None:
            self.memory.seq_rm(seq, keep)
        self.n[seq] = keep
        self.exact[seq] = exact

    def trim(self, seq: int, keep: int) -> None:
        """Drop the sequence's tokens from `keep` on (rejected drafts): nothing saved, nothing copied."""
        if self.memory is not None:
            self.memory.seq_rm(seq, keep)
        self.n[seq] = min(self.n[seq], keep)
        self.exact[seq] = min(self.exact[seq], keep)

    def append(self, seq: int, tokens: Sequence[int], exact: bool = True) -> None:
        """Tokens just decoded at the end of `seq`; `exact`: as a prompt piece a cold run computes
        the same way (see self.exact)."""
        n, k = self.n[seq], len(tokens)
        self._buf[seq, n:n + k] = tokens
        self.n[seq] = n + k
        if exact and self.exact[seq] == n:
            self.exact[seq] = n + k
