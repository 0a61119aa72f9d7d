"""
Per-frame vision-feature cache over a fixed *feature bank* (exact reuse across sliding windows).

Vision attention in Qwen3-VL is per image (in Qwen2.5-VL per image or per window inside it), so
a frame's merged embeddings and deepstack features do not depend on the other frames of the
window: a frame that stays in the sliding window can be encoded once (``qwen3vl-export.md``
section 2.6, measured diff 0.0). The features live in bank
slots of ``rows_per_slot`` rows; this class only does the bookkeeping (key -> slot, LRU eviction
of slots the current window does not use, hit statistics). Bank row 0 is reserved for zeros, so
slot ``s`` starts at row ``1 + s * rows_per_slot``.

A cache key is the caller's frame key (``GenerationRequest.frame_keys``) together with a CRC32
of the frame's pixels: a caller that reuses a key for different pixels gets a re-encode, never
another frame's features.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass
class CacheEntry:
    """Where a frame's features are and what shape they have."""

    slot: int
    grid: tuple[int, int, int]
    tokens: int


class VisionCache:
    """
    Slot bookkeeping for ``slots`` frames of at most ``rows_per_slot`` visual tokens each.

    :param slots: Number of frames the bank holds (at least the largest window).
    :param rows_per_slot: Visual tokens reserved per frame.
    """

    def __init__(self, slots: int, rows_per_slot: int) -> None:
        self.slots = int(slots)
        self.rows_per_slot = int(rows_per_slot)
        self._entries: OrderedDict[Hashable, CacheEntry] = OrderedDict()
        self._free = list(range(self.slots))
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def bank_rows(self) -> int:
        """Rows of the bank, including the zero row."""
        return 1 + self.slots * self.rows_per_slot

    def first_row(self, slot: int) -> int:
        return 1 + slot * self.rows_per_slot

    def get(self, key: Hashable) -> CacheEntry | None:
        """Look a frame up (LRU touch); does not count, see :meth:`count`."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, grid: tuple[int, int, int], tokens: int,
            pinned: set[int]) -> CacheEntry:
        """
        Reserve a slot for a frame about to be encoded.

        :param pinned: Slots the current window uses; never evicted.
        :raises ValueError: If the frame has more tokens than a slot or every slot is pinned.
        """
        if tokens > self.rows_per_slot:
            raise ValueError(f'{tokens} visual tokens > {self.rows_per_slot} per slot')
        if not self._free:
            victim = next((k for k, e in self._entries.items() if e.slot not in pinned), None)
            if victim is None:
                raise ValueError(f'all {self.slots} cache slots are used by this window')
            self._free.append(self._entries.pop(victim).slot)
            self.evictions += 1
        entry = CacheEntry(self._free.pop(0), grid, int(tokens))
        self._entries[key] = entry
        return entry

    def discard(self, key: Hashable) -> None:
        """Forget a frame (e.g. one without a key, or one whose encoding failed)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._free.append(entry.slot)

    def count(self, hits: int, misses: int) -> None:
        self.hits += hits
        self.misses += misses

    def clear(self) -> None:
        """Drop every entry; statistics are kept."""
        self._entries.clear()
        self._free = list(range(self.slots))

    def stats(self) -> dict[str, float]:
        """Frames served from the cache vs encoded, since construction."""
        total = self.hits + self.misses
        return {'hits': float(self.hits), 'misses': float(self.misses),
                'hit_rate': self.hits / total if total else 0.0,
                'entries': float(len(self._entries)), 'slots': float(self.slots),
                'evictions': float(self.evictions)}
