"""The history pool: finished shots kept for conditioning later ones, and which of them a new shot sees.

After LCT (Guo et al. 2025, §3.3-3.4: a scene longer than the context is generated shot by shot; the shots that
condition the next one are chosen by recency, by semantic relevance, or by a human) and Captain Cinema
(Xiao et al. 2025: retrieval of relevant context by text-embedding similarity).

Selection rules (:func:`select_history`), for a target shot with at most ``k`` history slots:

* ``recency``: the ``k`` most recent earlier shots;
* ``relevance``: the ``k`` earlier shots whose prompts are most similar (cosine of sentence embeddings) to the
  target's prompt, ties going to the more recent shot;
* ``script``: only the shots the user names (``shots[i].history``); none for a shot that names none.

Whatever the strategy, shots the user names for a shot are used exactly, and ``required`` shots (the previous
shot of a long take, ``cut: false``) are always included. The result is in time order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["HISTORY_STRATEGIES", "HistoryEntry", "HistoryPool", "select_history"]

HISTORY_STRATEGIES = ("recency", "relevance", "script")


def _ints(name: str, values: Sequence[int]) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must hold shot indices (ints >= 0), got {list(values)!r}")
        out.append(int(v))
    return out


def select_history(
    target: int,
    candidates: Sequence[int],
    k: int,
    *,
    strategy: str = "recency",
    scores: Sequence[float] | None = None,
    required: Sequence[int] = (),
    user: Sequence[int] | None = None,
) -> list[int]:
    """Choose the history shots (0-based, time order) that condition shot ``target``.

    Args:
        target: the shot being generated.
        candidates: earlier shots available as history (each ``< target``).
        k: history slots (the model's context window minus the target shot); ``>= 0``.
        strategy: ``"recency"``, ``"relevance"`` or ``"script"`` (see the module docstring).
        scores: for ``relevance``: one similarity per candidate (higher = more relevant).
        required: shots that must be included (e.g. the previous shot of a long take).
        user: shots the user named for this shot (0-based), used exactly (plus ``required``).
    Raises:
        ValueError: unknown strategy, a named/required shot that is not an earlier candidate, or more named +
        required shots than ``k`` slots.
    """
    if strategy not in HISTORY_STRATEGIES:
        raise ValueError(f"history strategy {strategy!r} is unknown; choose one of {', '.join(HISTORY_STRATEGIES)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k={k!r} (history slots) must be an int >= 0")
    cands = sorted(set(_ints("candidates", candidates)))
    late = [c for c in cands if c >= target]
    if late:
        raise ValueError(f"candidates {late} are not earlier than the target shot {target}; history holds earlier shots only")
    must = list(dict.fromkeys(_ints("required", required)))
    named = list(dict.fromkeys(_ints("user", user))) if user is not None else None
    for what, ids in (("required", must), ("user-named", named or [])):
        missing = [i for i in ids if i not in cands]
        if missing:
            raise ValueError(f"{what} history shots {missing} are not available earlier shots (available: {cands})")
    if named is not None:
        chosen = list(dict.fromkeys(named + must))
        if len(chosen) > k:
            raise ValueError(
                f"shot {target} needs {len(chosen)} history shots ({sorted(chosen)}) but the context holds only {k}; "
                f"name at most {k - len(must)} shots in its history"
            )
        return sorted(chosen)
    if len(must) > k:
        raise ValueError(f"shot {target} requires {len(must)} history shots {must} but the context holds only {k}")
    rest = [c for c in cands if c not in must]
    free = k - len(must)
    if strategy == "script" or free == 0:
        picked: list[int] = []
    elif strategy == "recency":
        picked = rest[-free:]
    else:
        if scores is None or len(scores) != len(cands):
            raise ValueError(
                f"relevance selection needs one score per candidate ({len(cands)}), got "
                f"{None if scores is None else len(scores)}"
            )
        by_shot = dict(zip(cands, (float(s) for s in scores)))
        ranked = sorted(rest, key=lambda c: (-by_shot[c], -c))  # most similar first, ties: most recent first
        picked = ranked[:free]
    return sorted(must + picked)


@dataclass
class HistoryEntry:
    """One finished shot in the pool: its prompt and its latent ``[1, C, T, h, w]`` (as the model conditions on it)."""

    shot: int
    prompt: str
    latent: Tensor


class HistoryPool:
    """Finished shots of a scene, available as history for later ones.

    Args:
        embed: ``embed(prompts) -> [N, D]`` L2-normalised sentence embeddings (e.g. a text encoder's ``embed``);
            needed only for ``relevance`` selection.
    """

    def __init__(self, embed: Callable[[list[str]], Tensor] | None = None) -> None:
        self._entries: dict[int, HistoryEntry] = {}
        self._embed = embed
        self._emb_cache: dict[str, Tensor] = {}

    def __contains__(self, shot: object) -> bool:
        return shot in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def shots(self) -> list[int]:
        """Shots in the pool, in time order."""
        return sorted(self._entries)

    def add(self, shot: int, *, prompt: str, latent: Tensor) -> None:
        """Add (or replace) finished shot ``shot`` with its prompt and latent ``[1, C, T, h, w]``."""
        if latent.ndim != 5:
            raise ValueError(f"latent of shot {shot} must be [1, C, T, h, w], got shape {tuple(latent.shape)}")
        self._entries[int(shot)] = HistoryEntry(shot=int(shot), prompt=prompt, latent=latent)

    def entry(self, shot: int) -> HistoryEntry:
        """The entry of ``shot``; ``KeyError`` naming the shots held when it is not in the pool."""
        if shot not in self._entries:
            raise KeyError(f"shot {shot} is not in the history pool (it holds {self.shots})")
        return self._entries[shot]

    def similarities(self, prompt: str, shots: Sequence[int]) -> list[float]:
        """Cosine similarity of ``prompt``'s embedding to each of ``shots``' prompts (needs ``embed``)."""
        if self._embed is None:
            raise ValueError("relevance selection needs an embedding function; build the pool with embed=encoder.embed")
        texts = [prompt] + [self.entry(s).prompt for s in shots]
        todo = [t for t in dict.fromkeys(texts) if t not in self._emb_cache]
        if todo:
            for text, vec in zip(todo, self._embed(todo)):
                self._emb_cache[text] = vec.detach().float().cpu()
        q = self._emb_cache[prompt]
        return [float(torch.dot(q, self._emb_cache[self.entry(s).prompt])) for s in shots]

    def select(
        self, target: int, *, prompt: str, k: int, strategy: str = "recency", required: Sequence[int] = (),
        user: Sequence[int] | None = None,
    ) -> list[int]:
        """:func:`select_history` over the pool's shots earlier than ``target`` (``prompt`` is the target's)."""
        cands = [s for s in self.shots if s < target]
        scores = self.similarities(prompt, cands) if strategy == "relevance" and cands and user is None else None
        return select_history(target, cands, k, strategy=strategy, scores=scores, required=required, user=user)
