"""Packed multi-shot sequence layouts: which token belongs to which segment, shot and modality.

Interleaved 3D RoPE positions follow Long Context Tuning (Guo et al. 2025, "Long Context Tuning
for Video Generation", §3.1): text sits on the diagonal of the (t, h, w) grid and every segment
continues from the cursor left by the previous one.

A :class:`SequenceLayout` is the single description every multi-shot part reads (design.md,
Principle 1): masks, RoPE positions, per-token timesteps and KV-cache slices are all derived from it.
Layouts are immutable and hashable, so that attention plans can be cached per layout.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from storyreel.nn.masks import TokenMeta

__all__ = ["Modality", "Segment", "SequenceLayout", "TEXTUAL", "VISUAL", "shot_timesteps"]


def shot_timesteps(t: Tensor, shot: Tensor, *, global_t: float = 0.0) -> Tensor:
    """Per-shot timesteps ``t [B, n_shots]`` gathered at shot ids ``shot [N]`` (on ``t``'s device; ``-1`` = a global
    segment or token, which takes ``global_t``) → ``[B, N]``. One gather, no host work: the models call it every
    step with shot ids kept on the device (per token in :meth:`SequenceLayout.token_timesteps`, per segment in the
    MMDiT and the backbone adapters)."""
    return torch.where(shot >= 0, t[:, shot.clamp(min=0)], float(global_t))


class Modality(enum.IntEnum):
    """Kind of tokens in a segment (stored per token as a small integer)."""

    TEXT = 0
    VIDEO = 1
    IMAGE = 2
    LAYOUT = 3
    SEMANTIC = 4


#: modalities laid out as a 3-D grid (t, h, w)
VISUAL: frozenset[Modality] = frozenset({Modality.VIDEO, Modality.IMAGE})
#: modalities laid out as a 1-D run of tokens, grid (n, 1, 1)
TEXTUAL: frozenset[Modality] = frozenset({Modality.TEXT, Modality.LAYOUT, Modality.SEMANTIC})


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Segment:
    """One contiguous run of tokens of a single modality.

    ``grid`` is the token grid ``(t, h, w)``; 1-D modalities (text, layout, semantic) use ``(n, 1, 1)``.
    ``shot`` is the 0-based shot index, ``-1`` for global segments (e.g. the LCT global prompt).
    Layout segments carry the ``instance`` id of their box and the normalised ``box`` ``(x0, y0, x1, y1)``.
    """

    modality: Modality
    shot: int
    grid: tuple[int, int, int]
    instance: int = -1
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        try:
            modality = Modality(self.modality)
        except ValueError:
            raise ValueError(
                f"Segment.modality={self.modality!r} is not a modality; use one of "
                f"{[m.name for m in Modality]}"
            ) from None
        object.__setattr__(self, "modality", modality)
        if not _is_int(self.shot) or self.shot < -1:
            raise ValueError(f"Segment.shot={self.shot!r} must be an int >= 0, or -1 for a global segment")
        grid = tuple(self.grid) if isinstance(self.grid, (tuple, list)) else self.grid
        if not isinstance(grid, tuple) or len(grid) != 3 or not all(_is_int(g) and g > 0 for g in grid):
            raise ValueError(f"Segment.grid={self.grid!r} must be three positive ints (t, h, w)")
        object.__setattr__(self, "grid", grid)
        if modality in TEXTUAL and grid[1:] != (1, 1):
            raise ValueError(
                f"Segment.grid={grid} for a {modality.name} segment must be (n, 1, 1); only VIDEO/IMAGE are 3-D"
            )
        if not _is_int(self.instance) or self.instance < -1:
            raise ValueError(f"Segment.instance={self.instance!r} must be an int >= -1")
        if self.box is not None:
            if modality != Modality.LAYOUT:
                raise ValueError(f"Segment.box is only for LAYOUT segments, got a box on a {modality.name} segment")
            box = tuple(float(b) for b in self.box)
            if len(box) != 4 or not (0.0 <= box[0] < box[2] <= 1.0 and 0.0 <= box[1] < box[3] <= 1.0):
                raise ValueError(
                    f"Segment.box={self.box!r} must be (x0, y0, x1, y1) with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1"
                )
            object.__setattr__(self, "box", box)

    @property
    def length(self) -> int:
        """Number of tokens ``t*h*w``."""
        t, h, w = self.grid
        return t * h * w

    @property
    def is_visual(self) -> bool:
        return self.modality in VISUAL

    def with_shot(self, shot: int) -> Segment:
        """A copy of this segment assigned to ``shot``."""
        return Segment(modality=self.modality, shot=shot, grid=self.grid, instance=self.instance, box=self.box)


class SequenceLayout:
    """Immutable description of a packed multi-shot token sequence.

    Derived per-token tensors (``token_segment``, ``token_shot``, ``token_modality``, RoPE positions,
    :meth:`token_meta`) are computed with vectorised torch ops (one loop over segments, never over
    tokens) and cached on the instance. Two layouts with equal segments are equal and hash alike.
    """

    segments: tuple[Segment, ...]
    offsets: tuple[int, ...]
    seq_len: int
    n_segments: int
    n_shots: int

    def __init__(self, segments: Sequence[Segment]) -> None:
        segs = tuple(segments)
        if not segs:
            raise ValueError("SequenceLayout needs at least one segment, got none")
        for i, s in enumerate(segs):
            if not isinstance(s, Segment):
                raise ValueError(f"segments[{i}] must be a Segment, got {type(s).__name__}")
        shots = sorted({s.shot for s in segs if s.shot >= 0})
        n_shots = (shots[-1] + 1) if shots else 0
        missing = sorted(set(range(n_shots)) - set(shots))
        if missing:
            raise ValueError(
                f"shot indices must be 0..n_shots-1 without gaps; shots {missing} have no segment "
                f"(shots present: {shots}); renumber the shots or use select_shots()"
            )
        offsets: list[int] = []
        pos = 0
        for s in segs:
            offsets.append(pos)
            pos += s.length
        set_ = object.__setattr__
        set_(self, "segments", segs)
        set_(self, "offsets", tuple(offsets))
        set_(self, "seq_len", pos)
        set_(self, "n_segments", len(segs))
        set_(self, "n_shots", n_shots)
        set_(self, "_hash", hash(segs))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SequenceLayout is immutable (tried to set {name!r}); build a new layout instead")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def scene(
        cls,
        *,
        text_lens: Sequence[int],
        video_grids: Sequence[tuple[int, int, int]],
        global_text_len: int = 0,
        visual_modalities: Sequence[Modality] | None = None,
    ) -> SequenceLayout:
        """The standard scene layout: ``[global text]?`` then per shot ``[text_i][video_i]``.

        ``visual_modalities`` optionally gives each shot's visual modality (VIDEO, or IMAGE for a
        keyframe with ``t == 1``); the default is VIDEO for every shot.
        """
        text_lens = list(text_lens)
        video_grids = [tuple(g) for g in video_grids]
        if len(text_lens) != len(video_grids):
            raise ValueError(
                f"text_lens has {len(text_lens)} entries but video_grids has {len(video_grids)}; "
                "give one text length and one video grid per shot"
            )
        if not text_lens:
            raise ValueError("a scene layout needs at least one shot (text_lens and video_grids are empty)")
        for i, n in enumerate(text_lens):
            if not _is_int(n) or n <= 0:
                raise ValueError(f"text_lens[{i}]={n!r} must be a positive int")
        if not _is_int(global_text_len) or global_text_len < 0:
            raise ValueError(f"global_text_len={global_text_len!r} must be an int >= 0 (0 = no global prompt)")
        if visual_modalities is None:
            visual_modalities = [Modality.VIDEO] * len(text_lens)
        visual_modalities = [Modality(m) for m in visual_modalities]
        if len(visual_modalities) != len(text_lens):
            raise ValueError(
                f"visual_modalities has {len(visual_modalities)} entries but there are {len(text_lens)} shots"
            )
        segs: list[Segment] = []
        if global_text_len:
            segs.append(Segment(Modality.TEXT, -1, (global_text_len, 1, 1)))
        for i, (n, grid, mod) in enumerate(zip(text_lens, video_grids, visual_modalities, strict=True)):
            if mod not in VISUAL:
                raise ValueError(f"visual_modalities[{i}]={mod.name} must be VIDEO or IMAGE")
            segs.append(Segment(Modality.TEXT, i, (n, 1, 1)))
            segs.append(Segment(mod, i, grid))  # grid validated by Segment
        return cls(segs)

    # ------------------------------------------------------------------ identity
    def __eq__(self, other: object) -> bool:
        return isinstance(other, SequenceLayout) and self.segments == other.segments

    def __hash__(self) -> int:
        return self._hash

    def __len__(self) -> int:
        return self.seq_len

    def __repr__(self) -> str:
        parts = [
            f"{s.modality.name.lower()}{'' if s.shot < 0 else s.shot}{list(s.grid) if s.is_visual else s.length}"
            for s in self.segments
        ]
        return f"SequenceLayout(L={self.seq_len}, shots={self.n_shots}: {' '.join(parts)})"

    # ------------------------------------------------------------------ segment queries
    def segment_slice(self, i: int) -> slice:
        """Token slice of segment ``i``."""
        self._check_segment(i)
        return slice(self.offsets[i], self.offsets[i] + self.segments[i].length)

    def segments_of_shot(self, shot: int) -> list[int]:
        """Indices of the segments of ``shot`` (``-1`` = global segments), in layout order."""
        return [i for i, s in enumerate(self.segments) if s.shot == shot]

    def video_segments(self) -> list[int]:
        """Indices of the VIDEO/IMAGE segments, in layout order."""
        return [i for i, s in enumerate(self.segments) if s.modality in VISUAL]

    def text_segments(self) -> list[int]:
        """Indices of the TEXT segments, in layout order."""
        return [i for i, s in enumerate(self.segments) if s.modality == Modality.TEXT]

    def segments_of_modality(self, *modalities: Modality) -> list[int]:
        """Indices of the segments whose modality is one of ``modalities``, in layout order."""
        wanted = {Modality(m) for m in modalities}
        return [i for i, s in enumerate(self.segments) if s.modality in wanted]

    def token_indices(self, segments: Sequence[int]) -> Tensor:
        """LongTensor ``[n]`` of the token indices of ``segments``, concatenated in the given order."""
        parts = [torch.arange(self.segment_slice(i).start, self.segment_slice(i).stop) for i in segments]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def _check_segment(self, i: int) -> None:
        if not _is_int(i) or not 0 <= i < self.n_segments:
            raise ValueError(f"segment index {i!r} is out of range; this layout has {self.n_segments} segments")

    # ------------------------------------------------------------------ per-token tensors (cached, CPU)
    def _per_segment(self, values: Sequence[int]) -> Tensor:
        lengths = torch.tensor([s.length for s in self.segments], dtype=torch.long)
        return torch.repeat_interleave(torch.tensor(list(values), dtype=torch.long), lengths)

    @cached_property
    def token_segment(self) -> Tensor:
        """LongTensor ``[L]``: segment index of every token."""
        return self._per_segment(range(self.n_segments))

    @cached_property
    def segment_shot(self) -> Tensor:
        """LongTensor ``[S]``: shot of every segment (``-1`` = global)."""
        return torch.tensor([s.shot for s in self.segments], dtype=torch.long)

    @cached_property
    def token_shot(self) -> Tensor:
        """LongTensor ``[L]``: shot of every token (``-1`` = global)."""
        return self._per_segment([s.shot for s in self.segments])

    @cached_property
    def token_modality(self) -> Tensor:
        """LongTensor ``[L]``: :class:`Modality` value of every token."""
        return self._per_segment([int(s.modality) for s in self.segments])

    @cached_property
    def token_instance(self) -> Tensor:
        """LongTensor ``[L]``: layout instance id of every token (``-1`` outside layout segments)."""
        return self._per_segment([s.instance for s in self.segments])

    @cached_property
    def token_grid(self) -> Tensor:
        """LongTensor ``[L, 3]``: (t, h, w) coordinate of every token inside its own segment's grid."""
        return torch.cat([_grid_coords(s.grid) for s in self.segments])

    @cached_property
    def _rope_positions(self) -> Tensor:
        parts: list[Tensor] = []
        cursor = 0
        for s in self.segments:
            if s.modality in VISUAL:
                parts.append(_grid_coords(s.grid) + cursor)  # [T*H*W, 3]: (c+t, c+h, c+w)
                cursor += max(s.grid)
            else:
                diag = torch.arange(cursor, cursor + s.length, dtype=torch.long)
                parts.append(diag[:, None].expand(-1, 3))  # [n, 3]: (c+j, c+j, c+j)
                cursor += s.length
        return torch.cat(parts).contiguous()

    def rope_positions(self) -> Tensor:
        """LongTensor ``[L, 3]`` of interleaved 3D RoPE coordinates (t, h, w) (LCT).

        A cursor ``c`` walks the segments in order: a 1-D segment of ``n`` tokens puts token ``j`` at
        ``(c+j, c+j, c+j)`` then ``c += n``; a VIDEO/IMAGE grid ``(T, H, W)`` puts token ``(t, h, w)`` at
        ``(c+t, c+h, c+w)`` then ``c += max(T, H, W)``. Positions of a prefix layout equal the first
        tokens of the full layout's positions, so KV-cached tokens keep their positions.
        """
        return self._rope_positions

    def token_meta(self, device: torch.device | str = "cpu") -> TokenMeta:
        """Per-token metadata on ``device`` that mask predicates read (cached per device)."""
        key = str(torch.device(device))
        cache: dict[str, TokenMeta] = self.__dict__.setdefault("_meta_cache", {})
        if key not in cache:
            from storyreel.nn.masks import TokenMeta

            cache[key] = TokenMeta.from_layout(self).to(device)
        return cache[key]

    # ------------------------------------------------------------------ timesteps
    def token_timesteps(self, t: Tensor | float, *, global_t: float = 0.0, batch: int | None = None) -> Tensor:
        """Per-token timesteps ``[B, L]`` float32: every token takes its shot's ``t``; global tokens ``global_t``.

        ``t`` may be ``[B, n_shots]``, ``[B, 1]``, a scalar, or 1-D. A 1-D ``t`` is read as per-sample
        ``[B]`` when ``batch`` is given (or its length is not ``n_shots``) and as per-shot ``[n_shots]``
        (B = 1) otherwise; pass ``batch=B`` or a 2-D tensor when the two could be confused.
        """
        t = torch.as_tensor(t, dtype=torch.float32)
        n = self.n_shots
        if t.ndim == 0:
            t = t.reshape(1, 1)  # [] -> [1, 1]
        elif t.ndim == 1:
            per_sample = batch is not None or t.shape[0] != n
            if per_sample and batch is not None and t.shape[0] != batch:
                raise ValueError(f"t has {t.shape[0]} entries but batch={batch}; give one timestep per sample")
            t = t[:, None] if per_sample else t[None, :]  # [B] -> [B, 1]  or  [n_shots] -> [1, n_shots]
        elif t.ndim != 2:
            raise ValueError(f"t must be [B, n_shots], [B], [n_shots] or a scalar, got shape {tuple(t.shape)}")
        if t.shape[1] not in (1, max(n, 1)):
            raise ValueError(
                f"t has {t.shape[1]} timesteps per sample (t.shape[1]) but the layout has {n} shots; "
                "give one timestep per shot or one per sample"
            )
        t = t.expand(t.shape[0], max(n, 1))  # [B, n_shots]
        return shot_timesteps(t, self.token_shot.to(t.device), global_t=global_t)  # [B, L]

    # ------------------------------------------------------------------ derived layouts
    def append(self, segments: Sequence[Segment]) -> SequenceLayout:
        """A new layout: this one followed by ``segments`` (KV-cache growth)."""
        return SequenceLayout(self.segments + tuple(segments))

    def prefix(self, n_segments: int) -> SequenceLayout:
        """The layout of the first ``n_segments`` segments."""
        if not _is_int(n_segments) or not 1 <= n_segments <= self.n_segments:
            raise ValueError(f"prefix needs 1 <= n_segments <= {self.n_segments}, got {n_segments!r}")
        return SequenceLayout(self.segments[:n_segments])

    def select_shots(self, shots: Sequence[int]) -> SequenceLayout:
        """Keep the global segments and the given shots (in the given order), renumbered ``0..k-1``."""
        shots = list(shots)
        if len(set(shots)) != len(shots):
            raise ValueError(f"select_shots got repeated shots {shots}; give each shot once")
        bad = [s for s in shots if not _is_int(s) or not 0 <= s < self.n_shots]
        if bad:
            raise ValueError(f"select_shots got shots {bad} outside 0..{self.n_shots - 1}")
        segs = [s for s in self.segments if s.shot < 0]
        for new, old in enumerate(shots):
            segs += [s.with_shot(new) for s in self.segments if s.shot == old]
        return SequenceLayout(segs)

    def check_tokens(self, n: int, what: str) -> None:
        """Raise ``ValueError`` naming both sides unless ``n == seq_len``."""
        if n != self.seq_len:
            raise ValueError(f"layout has {self.seq_len} tokens but the tensor has {n} ({what})")


def _grid_coords(grid: tuple[int, int, int]) -> Tensor:
    """LongTensor ``[t*h*w, 3]`` of the (t, h, w) coordinates of a grid in row-major order."""
    t, h, w = grid
    axes = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack(axes, dim=-1).reshape(t * h * w, 3)  # [t, h, w, 3] -> [t*h*w, 3]


def grid_centres(grid: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """Normalised (x, y) centres ``[t*h*w]`` each of the tokens of a VIDEO/IMAGE grid."""
    t, h, w = grid
    coords = _grid_coords(grid)
    x = (coords[:, 2].to(torch.float32) + 0.5) / w
    y = (coords[:, 1].to(torch.float32) + 0.5) / h
    return x, y
