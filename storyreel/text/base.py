"""The text-encoder interface shared by every encoder: token states, a sentence embedding, a cache.

Every encoder turns prompts into ``TextStates`` of exactly ``max_length`` tokens (zero states and
``mask == False`` where padded) and into one L2-normalised sentence embedding per prompt (used to
retrieve relevant history shots). Encoded prompts are kept in a small per-prompt LRU cache, so a
prompt repeated across shots or sampling steps is encoded once.
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["CacheInfo", "TextEncoder", "TextStates"]


@dataclass(frozen=True)
class TextStates:
    """Per-token text features of a batch of prompts.

    Attributes:
        states: ``[B, L, D]`` float token states; rows where ``mask`` is False are exactly zero.
        mask: ``[B, L]`` bool, True for a real token, False for padding.
    """

    states: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.states.ndim != 3:
            raise ValueError(f"TextStates.states must be [B, L, D], got shape {tuple(self.states.shape)}")
        if self.mask.dtype != torch.bool or tuple(self.mask.shape) != tuple(self.states.shape[:2]):
            raise ValueError(
                f"TextStates.mask must be a bool tensor of shape {tuple(self.states.shape[:2])} (= states[:2]), "
                f"got dtype {self.mask.dtype} shape {tuple(self.mask.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return int(self.states.shape[0])

    @property
    def length(self) -> int:
        return int(self.states.shape[1])

    @property
    def lengths(self) -> torch.Tensor:
        """``[B]`` int64 number of real tokens per prompt."""
        return self.mask.sum(dim=1)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> TextStates:
        """Move states (and mask) to ``device``; cast states to ``dtype`` if given."""
        return TextStates(states=self.states.to(device=device, dtype=dtype), mask=self.mask.to(device=device))

    def __getitem__(self, index: int | slice) -> TextStates:
        """Select prompts along the batch axis (an int keeps the batch axis: ``[1, L, D]``)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return TextStates(states=self.states[index], mask=self.mask[index])

    @staticmethod
    def cat(items: Sequence[TextStates]) -> TextStates:
        """Concatenate along the batch axis (all items must share L and D)."""
        if not items:
            raise ValueError("TextStates.cat needs at least one item")
        return TextStates(states=torch.cat([i.states for i in items]), mask=torch.cat([i.mask for i in items]))


@dataclass(frozen=True)
class CacheInfo:
    """Counters of an encoder's prompt cache (``encode`` and ``embed`` counted together)."""

    hits: int
    misses: int
    size: int
    capacity: int


class TextEncoder(abc.ABC):
    """Base class of all text encoders.

    Subclasses set ``dim``, ``max_length`` and ``name`` and implement ``_encode_batch`` and
    ``_embed_batch`` on prompts that are not cached; the public ``encode`` / ``embed`` handle the
    cache, batching and validation.
    """

    name: str = "text-encoder"
    dim: int
    max_length: int

    def __init__(self, *, cache_size: int = 512) -> None:
        if not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0 (0 disables the cache), got {cache_size!r}")
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._hits = 0
        self._misses = 0

    # -- to implement -------------------------------------------------------------------------
    @abc.abstractmethod
    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode uncached prompts → (states ``[N, max_length, dim]`` zero where padded, mask ``[N, max_length]``)."""

    @abc.abstractmethod
    def _embed_batch(self, prompts: list[str]) -> torch.Tensor:
        """Embed uncached prompts → ``[N, dim]`` L2-normalised sentence embeddings."""

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    # -- public API ------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str]) -> TextStates:
        """Token states of ``prompts``: ``states [B, max_length, dim]``, ``mask [B, max_length]``.

        Padded positions hold exact zeros and ``mask == False``; prompts longer than
        ``max_length`` tokens are truncated.
        """
        items = self._cached("encode", prompts, self._encode_batch)
        states = torch.stack([s for s, _ in items])  # [B, L, D]
        mask = torch.stack([m for _, m in items])  # [B, L]
        return TextStates(states=states, mask=mask)

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """Sentence embeddings ``[B, dim]``, L2-normalised (cosine similarity = dot product)."""
        return torch.stack(self._cached("embed", prompts, self._embed_batch))  # [B, D]

    def cache_info(self) -> CacheInfo:
        return CacheInfo(hits=self._hits, misses=self._misses, size=len(self._cache), capacity=self.cache_size)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._hits = self._misses = 0

    # -- cache -----------------------------------------------------------------------------------
    def _cached(
        self,
        kind: str,
        prompts: Sequence[str],
        compute: Callable[[list[str]], torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    ) -> list:  # list of per-prompt tensors (embed) or (states, mask) pairs (encode)
        if isinstance(prompts, str):
            raise TypeError(f"{type(self).__name__}.{kind} takes a sequence of prompts; wrap one prompt in a list: [prompt]")
        prompts = list(prompts)
        if not prompts:
            raise ValueError(f"{type(self).__name__}.{kind} needs at least one prompt, got an empty sequence")
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        if bad:
            raise TypeError(f"prompts must be strings; item {bad[0]} is a {type(prompts[bad[0]]).__name__}")
        found: dict[str, object] = {}
        todo: dict[str, None] = {}  # insertion-ordered set of prompts to compute
        for p in prompts:
            key = (kind, p)
            if p in found or p in todo:
                continue
            if key in self._cache:
                self._cache.move_to_end(key)
                found[p] = self._cache[key]
                self._hits += 1
            else:
                todo[p] = None
                self._misses += 1
        if todo:
            result = compute(list(todo))
            for j, p in enumerate(todo):
                # clone: a cached row must not keep the whole batch tensor alive
                value = (result[0][j].clone(), result[1][j].clone()) if isinstance(result, tuple) else result[j].clone()
                found[p] = value
                if self.cache_size:
                    self._cache[(kind, p)] = value
                    self._cache.move_to_end((kind, p))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return [found[p] for p in prompts]
