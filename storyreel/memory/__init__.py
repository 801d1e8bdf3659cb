"""Scene memory: the history pool with its selection strategies, and GoldenMem history compression."""

from storyreel.memory.goldenmem import (
    PHI,
    GoldenFrame,
    full_frame_tokens,
    goldenmem_compress,
    goldenmem_sizes,
    goldenmem_tokens,
)
from storyreel.memory.history import HISTORY_STRATEGIES, HistoryEntry, HistoryPool, select_history

__all__ = [
    "HISTORY_STRATEGIES",
    "PHI",
    "GoldenFrame",
    "HistoryEntry",
    "HistoryPool",
    "full_frame_tokens",
    "goldenmem_compress",
    "goldenmem_sizes",
    "goldenmem_tokens",
    "select_history",
]
