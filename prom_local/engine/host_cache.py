"""Earlier prompts' KV kept in host memory, so a sequence can take one back instead of recomputing it.

A context of n sequences holds n prompts' KV. A client that grades responses to several instructions
in turn, one at a time, sends each instruction again after others have replaced it, and the prompt
has to be computed again (llama.cpp's own server keeps such prompts in host memory for the same
reason, its `--cache-ram`). When the prefix cache is about to lose what a sequence holds, it copies
that sequence's KV here (llama.cpp's sequence state: the cells' K and V, a memcpy, or a device-to-host
copy on a GPU); when a new prompt shares more with a stored one than with any sequence, the stored
state is loaded back into the sequence and trimmed to the shared part.

Pure Python: entries are (tokens, opaque bytes) and the bytes are whatever `memory.seq_save` gave.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from .cache import common_prefix


@dataclass(eq=False)
class Stored:
    tokens: np.ndarray      # positions 0..n-1 of the sequence the state was taken from
    data: object            # the memory's saved state (bytes-like: len() is its size)

    @property
    def nbytes(self) -> int:
        return len(self.data)  # type: ignore[arg-type]


class HostPromptCache:
    """Saved sequence states, least recently used evicted first, within `limit_bytes`."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        # The entries in use order, least recent first (a Stored hashes by identity).
        self._entries: collections.OrderedDict[Stored, None] = collections.OrderedDict()
        self.nbytes = 0
        self.saves = 0          # states stored
        self.loads = 0          # states taken back into a sequence
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def best(self, arr: np.ndarray, limit: int) -> tuple[Stored | None, int]:
        """The entry sharing the longest prefix of arr (up to limit tokens), and that length."""
        best, best_n = None, 0
        for entry in self._entries:
            n = common_prefix(entry.tokens, arr, limit)
            if n > best_n:
                best, best_n = entry, n
        return best, best_n

    def covers(self, tokens: np.ndarray) -> bool:
        """Whether some entry already holds all of `tokens` (storing them again would add nothing)."""
        n = len(tokens)
        return any(len(e.tokens) >= n and common_prefix(e.tokens, tokens, n) == n
                   for e in self._entries)

    def put(self, tokens: np.ndarray, data) -> bool:
        """Store a state; entries it extends (their tokens a prefix of these) go, then the least
        recently used until it fits. A state larger than the whole limit is not stored."""
        entry = Stored(np.array(tokens, dtype=np.int64), data)
        if entry.nbytes > self.limit_bytes:
            return False
        n = len(entry.tokens)
        for old in list(self._entries):
            if len(old.tokens) <= n and common_prefix(old.tokens, entry.tokens, n) == len(old.tokens):
                self._drop(old)
        while self._entries and self.nbytes + entry.nbytes > self.limit_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        self._entries[entry] = None
        self.nbytes += entry.nbytes
        self.saves += 1
        return True

    def used(self, entry: Stored) -> None:
        """An entry was loaded: it becomes the most recently used."""
        self.loads += 1
        self._entries.move_to_end(entry)

    def _drop(self, entry: Stored) -> None:
        del self._entries[entry]
        self.nbytes -= entry.nbytes
