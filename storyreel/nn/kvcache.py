"""Per-layer key/value cache for context-causal multi-shot generation.

Follows Long Context Tuning (Guo et al. 2025, §3.3): with ``causal_shots`` attention earlier shots never
look at later ones, so their keys/values can be computed once and reused while later shots are
denoised. History held at a fixed noise level ``t_c`` is simply cached tokens whose K/V were computed
at ``t_c``. The cache layout is always a prefix of the full layout, so RoPE positions stay correct
when shots are appended.

Typical use inside one attention layer ``l`` of a forward pass over new segments::

    k_all, v_all = cache.concat(l, k_new, v_new, write=cache_write)   # cache + new, [B, H, Lc+Ln, D]
    out = attention(q_new, k_all, v_all, plan_attention(full_layout, policy, query_segments=new_segs))

and after the pass (when ``cache_write``): ``cache.commit(new_segments)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from storyreel.nn.layout import Segment, SequenceLayout

__all__ = ["KVCache", "KVCachePool"]


class KVCache:
    """Keys/values of already-processed tokens, one ``[B, H, L_cached, D]`` pair per layer.

    ``layout`` describes the committed tokens (``None`` while empty). :meth:`append` stores new
    tokens for one layer; :meth:`commit` then extends ``layout`` once every layer has appended them.
    """

    def __init__(self) -> None:
        self.layout: SequenceLayout | None = None
        self._kv: dict[int, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ queries
    @property
    def n_tokens(self) -> int:
        """Number of committed tokens."""
        return 0 if self.layout is None else self.layout.seq_len

    @property
    def n_segments(self) -> int:
        """Number of committed segments."""
        return 0 if self.layout is None else self.layout.n_segments

    def prefix_of(self, layout: SequenceLayout) -> int:
        """Number of segments of ``layout`` this cache already holds (0 when empty).

        ``layout`` is the FULL layout of a forward (cached prefix + the segments to compute). Raises
        ``ValueError`` when the cached segments are not a prefix of it, or when nothing is left to compute.
        """
        if self.layout is None:
            return 0
        cached = self.layout.segments
        n_cached = len(cached)
        if n_cached > layout.n_segments or tuple(layout.segments[:n_cached]) != tuple(cached):
            raise ValueError(
                f"kv_cache holds {n_cached} segment(s) that are not a prefix of the layout ({layout.n_segments} "
                "segments); pass the FULL layout (cached prefix + new segments) or clear the cache"
            )
        if n_cached == layout.n_segments:
            raise ValueError(
                f"kv_cache already holds all {n_cached} segments of the layout; append the segments to compute "
                "(layout.append([...])) before calling the model"
            )
        return n_cached

    @property
    def nbytes(self) -> int:
        """Bytes held by all cached tensors."""
        return sum(k.nbytes + v.nbytes for k, v in self._kv.values())

    @property
    def layers(self) -> list[int]:
        """Layers that hold tensors, sorted."""
        return sorted(self._kv)

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return f"KVCache(tokens={self.n_tokens}, layers={len(self._kv)}, nbytes={self.nbytes})"

    def get(self, layer: int) -> tuple[Tensor, Tensor] | None:
        """Cached ``(k, v)`` ``[B, H, L, D]`` of ``layer`` (appended but uncommitted tokens included), or None."""
        return self._kv.get(layer)

    def full_layout(self, segments: Sequence[Segment]) -> SequenceLayout:
        """The layout of the cached tokens followed by ``segments`` (what a forward over new tokens plans with)."""
        return SequenceLayout(segments) if self.layout is None else self.layout.append(segments)

    def new_segment_indices(self, n_new: int) -> list[int]:
        """Indices, in the full layout, of ``n_new`` segments that follow the committed ones."""
        return list(range(self.n_segments, self.n_segments + n_new))

    # ------------------------------------------------------------------ updates
    def append(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Concatenate new ``k``/``v`` ``[B, H, L_new, D]`` to ``layer``'s cache along L."""
        if k.ndim != 4 or k.shape != v.shape:
            raise ValueError(f"k and v must both be [B, H, L, D] of one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
        old = self._kv.get(layer)
        if old is None:
            if self.n_tokens:
                raise ValueError(
                    f"layer {layer} has no cached tokens but the cache holds {self.n_tokens}; append every layer "
                    "in every cache-writing pass"
                )
            self._kv[layer] = (k, v)
            return
        ok, ov = old
        if ok.shape[:2] != k.shape[:2] or ok.shape[3] != k.shape[3] or ok.dtype != k.dtype or ok.device != k.device:
            raise ValueError(
                f"layer {layer}: new k {tuple(k.shape)} {k.dtype} on {k.device} does not extend the cached "
                f"{tuple(ok.shape)} {ok.dtype} on {ok.device} (batch, heads, head_dim, dtype and device must match)"
            )
        if ok.shape[2] != self.n_tokens:
            raise ValueError(
                f"layer {layer} already holds {ok.shape[2] - self.n_tokens} uncommitted tokens; call commit() "
                "after each cache-writing pass"
            )
        self._kv[layer] = (torch.cat([ok, k], dim=2), torch.cat([ov, v], dim=2))  # [B, H, Lc + Ln, D]

    def concat(self, layer: int, k: Tensor, v: Tensor, *, write: bool = False) -> tuple[Tensor, Tensor]:
        """Keys/values of cache + new tokens ``[B, H, Lc + Ln, D]``; with ``write`` also :meth:`append` them."""
        old = self.get(layer)
        if old is not None and old[0].shape[2] != self.n_tokens:
            raise ValueError(f"layer {layer} holds uncommitted tokens; call commit() before the next pass")
        if old is None and self.n_tokens:
            raise ValueError(f"layer {layer} has no cached tokens but the cache holds {self.n_tokens}")
        if write:
            self.append(layer, k, v)
            return self._kv[layer]
        if old is None:
            return k, v
        return torch.cat([old[0], k], dim=2), torch.cat([old[1], v], dim=2)  # [B, H, Lc + Ln, D]

    def commit(self, segments: Sequence[Segment]) -> None:
        """Extend ``layout`` by ``segments`` after every layer appended their tokens."""
        segments = tuple(segments)
        new_layout = self.full_layout(segments)
        if not self._kv:
            raise ValueError("commit() called but no layer appended any tokens")
        wrong = {l: kv[0].shape[2] for l, kv in self._kv.items() if kv[0].shape[2] != new_layout.seq_len}
        if wrong:
            raise ValueError(
                f"the committed layout would have {new_layout.seq_len} tokens but layers hold {wrong} "
                "(layer: tokens); every layer must append exactly the new segments' tokens"
            )
        self.layout = new_layout

    def truncate(self, n_segments: int) -> None:
        """Keep only the first ``n_segments`` committed segments (drops uncommitted tokens too)."""
        if not 0 <= n_segments <= self.n_segments:
            raise ValueError(f"truncate needs 0 <= n_segments <= {self.n_segments}, got {n_segments}")
        if n_segments == 0:
            self.clear()
            return
        self.layout = self.layout.prefix(n_segments)
        n = self.layout.seq_len
        self._kv = {l: (k[:, :, :n], v[:, :, :n]) for l, (k, v) in self._kv.items()}

    def prefix(self, n_segments: int) -> KVCache:
        """A new cache holding the first ``n_segments`` committed segments. It shares this cache's tensors (views;
        appending to either one concatenates into new tensors, so neither ever changes the other)."""
        if not 0 <= n_segments <= self.n_segments:
            raise ValueError(f"prefix needs 0 <= n_segments <= {self.n_segments}, got {n_segments}")
        out = KVCache()
        if n_segments:
            out.layout = self.layout.prefix(n_segments)
            n = out.layout.seq_len
            out._kv = {l: (k[:, :, :n], v[:, :, :n]) for l, (k, v) in self._kv.items()}
        return out

    def clear(self) -> None:
        """Drop every cached tensor and the layout."""
        self.layout = None
        self._kv = {}


class KVCachePool:
    """A few :class:`KVCache` s, each keyed by the items it holds in order, for shot-by-shot generation whose
    history is not always an extension of the previous shot's (a shot with an explicit ``history``, relevance
    selection, a full context window that slides).

    :meth:`get` returns the cache holding the longest prefix of the wanted items; when that cache holds more
    than the shared prefix, a new cache takes a view of the prefix (no copy) and the old one is kept, so the
    main line of history survives a detour (LCT's human-selected context). At most ``size`` caches are kept,
    least recently used dropped first.
    """

    def __init__(self, size: int = 2) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._entries: list[tuple[list[Hashable], KVCache]] = []  # most recently used last

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, want: Sequence[Hashable]) -> tuple[KVCache, list[Hashable]]:
        """``(cache, have)``: ``cache`` holds the items ``have`` (a prefix of ``want``, possibly empty). The caller
        writes ``want[len(have):]`` into ``cache`` one item at a time, appending each key to ``have`` (the same
        list object) after its write is committed."""
        want = list(want)
        best, best_n = None, 0
        for entry in self._entries:
            keys = entry[0]
            n = 0
            while n < min(len(keys), len(want)) and keys[n] == want[n]:
                n += 1
            if best is None or n > best_n:
                best, best_n = entry, n
        if best is not None and best_n == len(best[0]):  # extends in place
            self._entries.remove(best)
            self._entries.append(best)
            return best[1], best[0]
        cache = best[1].prefix(best_n) if best is not None and best_n > 0 else KVCache()
        entry = (want[:best_n], cache)
        self._entries.append(entry)
        while len(self._entries) > self.size:
            self._entries.pop(0)
        return entry[1], entry[0]

    def clear(self) -> None:
        self._entries = []
