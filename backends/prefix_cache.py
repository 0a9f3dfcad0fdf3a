"""A bounded LRU of per-sequence KV caches, looked up by longest common token prefix.

The hf backend keeps the KV of recent prompts and finished branches in one, the PRM the
KV of scored prefixes: a causal decoder's KV of the first `k` tokens depends only on
those tokens, so any held sequence helps every later one that starts like it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from ttc.kernels.kv import KV


@dataclass(slots=True)
class _Entry:
    ids: np.ndarray
    kv: KV


class PrefixCache:
    """An LRU of per-sequence KV caches, bounded by the total tokens held.

    Lookups return the longest common prefix of a prompt with any entry: the KV of the
    first `k` tokens of a causal decoder depends only on those tokens, so an entry helps
    every prompt that starts like it (siblings share their problem prompt; a continued
    branch shares all of its parent).
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0

    def lookup(self, ids: Sequence[int], *, limit: int) -> tuple[int, KV | None]:
        """(length, KV views) of the longest held prefix of `ids`, at most `limit` tokens."""
        import numpy as np

        if not self._entries or limit <= 0:
            return 0, None
        query = np.asarray(ids[:limit], dtype=np.int64)
        best, best_key = 0, None
        for key, entry in self._entries.items():
            m = min(len(entry.ids), len(query))
            if m <= best:
                continue
            diff = np.flatnonzero(entry.ids[:m] != query[:m])
            n = int(diff[0]) if diff.size else m
            if n > best:
                best, best_key = n, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        kv = [(k[:, :, :best], v[:, :, :best]) for k, v in self._entries[best_key].kv]
        return best, kv

    def insert(self, ids: tuple[int, ...], kv: KV) -> None:
        """Hold `kv` (the KV of exactly `ids`); drop entries it makes redundant."""
        import numpy as np

        n = len(ids)
        if n == 0 or n > self.max_tokens:
            return
        for key in list(self._entries):
            if len(key) >= n and key[:n] == ids:
                self._entries.move_to_end(key)  # already covered by a longer entry
                return
            if len(key) < n and ids[: len(key)] == key:
                self._remove(key)
        self._entries[ids] = _Entry(np.asarray(ids, dtype=np.int64), kv)
        self.tokens += n
        while self.tokens > self.max_tokens:
            self._remove(next(iter(self._entries)))

    def _remove(self, key: tuple[int, ...]) -> None:
        del self._entries[key]
        self.tokens -= len(key)
