"""StoryWorld renderer: exact-palette frames, per-frame boxes and character masks, in numpy.

No anti-aliasing: every pixel is the setting colour, a ground/décor shade of it, a palette colour
(character or prop) or a character's pattern shade. Shape masks are rasterised once per
(shape, pattern, pixel size) and cached; each object is drawn into all frames of a shot at once by
scattering its cached pixel offsets (one numpy call per colour).

Camera: world point ``(x, y)`` lands at pixel ``((x - cx)·z·W + W/2, (y - cy)·z·H + H/2)`` where
``(cx, cy)`` is the camera centre and ``z`` the shot type's zoom. Events animate over the shot with
progress ``p`` from 0 to 1; a long-take segment (``cut=False``) starts one step after the previous
shot's last frame, from its characters' final positions and its final camera, and glides to its own
framing (zoom of its shot type; medium and close-up re-centre on the subject; plus its pan).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from storyreel.world.sampler import SceneSpec, ShotSpec
from storyreel.world.vocab import PATTERNS, SHOT_TYPES, shade

__all__ = ["Box", "RenderedScene", "RenderedShot", "ShotPlan", "plan_scene", "render_scene", "shape_mask", "sprite"]

MOVE = 0.35  # a move travels this fraction of the frame (any shot type)
JUMP = 0.30  # jump height, fraction of the frame height
GROW = 1.5  # grow multiplies the size by this; shrink divides by it
ENTER_STOP = 0.15  # an entering character of a long take stops this far before the frame centre
EDGE_MARGIN_PX = 2.0  # enter/exit start/end this many pixels beyond the frame edge


@dataclass(frozen=True)
class Box:
    """A labelled pixel box; ``x1``/``y1`` are exclusive."""

    label: str
    x0: int
    y0: int
    x1: int
    y1: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def normalized(self, width: int, height: int) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` divided by the frame size (the script's ``LayoutBox.box`` form)."""
        return (self.x0 / width, self.y0 / height, self.x1 / width, self.y1 / height)


@dataclass
class RenderedShot:
    """One rendered shot.

    ``frames``: uint8 ``[T, H, W, 3]``. ``boxes[t]``: characters (``Character N``, by index) then
    props (``'<colour> <shape>'``), each box enclosing exactly the object's drawn pixels clipped
    to the frame (occlusion by later objects is ignored), omitted when out of frame.
    ``character_masks``: uint8 ``[T, H, W]``, ``N`` where Character N is the visible pixel, else 0.
    """

    index: int
    prompt: str
    frames: np.ndarray
    boxes: list[list[Box]]
    character_masks: np.ndarray

    def mask(self, character: int) -> np.ndarray:
        """bool ``[T, H, W]``: the visible pixels of ``Character character``."""
        return self.character_masks == character


@dataclass
class RenderedScene:
    """A rendered scene: the spec, its global prompt and one :class:`RenderedShot` per shot."""

    spec: SceneSpec
    global_prompt: str
    shots: list[RenderedShot]

    def video(self) -> np.ndarray:
        """All shots concatenated: uint8 ``[sum(T_i), H, W, 3]``."""
        return np.concatenate([s.frames for s in self.shots], axis=0)

    def to_metadata(self) -> dict[str, Any]:
        """The spec's metadata plus per-shot, per-frame boxes (JSON-able)."""
        meta = self.spec.to_metadata()
        for m, shot in zip(meta["shots"], self.shots, strict=True):
            m["boxes"] = [[b.to_dict() for b in frame] for frame in shot.boxes]
        return meta


# ----------------------------------------------------------------------------------------------
# shapes


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]: u (columns) and v (rows), each ``[n, n]``."""
    c = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    v, u = np.meshgrid(c, c, indexing="ij")  # [n, n] each
    return u, v


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Five-pointed star (point up), inner radius 0.45, by the even-odd rule."""
    ang = -np.pi / 2 + np.arange(10) * np.pi / 5
    rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    px, py = rad * np.cos(ang), rad * np.sin(ang) + 0.08  # nudge down to balance the shape
    inside = np.zeros(u.shape, dtype=bool)
    for k in range(10):
        x0, y0, x1, y1 = px[k], py[k], px[(k + 1) % 10], py[(k + 1) % 10]
        crosses = (y0 > v) != (y1 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < xi)
    return inside


@lru_cache(maxsize=4096)
def shape_mask(shape: str, n: int) -> np.ndarray:
    """bool ``[n, n]`` body of ``shape`` at ``n`` pixels (read-only, cached)."""
    u, v = _grid(n)
    r2 = u * u + v * v
    if shape == "circle":
        m = r2 <= 1.0
    elif shape == "square":
        m = np.ones((n, n), dtype=bool)
    elif shape == "triangle":
        m = np.abs(u) <= (v + 1.0) / 2.0
    elif shape == "diamond":
        m = np.abs(u) + np.abs(v) <= 1.0
    elif shape == "star":
        m = _star(u, v)
    elif shape == "ring":
        m = (r2 <= 1.0) & (r2 >= 0.55**2)
    elif shape == "cross":
        m = (np.abs(u) <= 0.34) | (np.abs(v) <= 0.34)
    else:
        raise ValueError(f"shape={shape!r} is unknown; allowed: circle, square, triangle, diamond, star, ring, cross")
    if not m.any():
        m[n // 2, n // 2] = True
    m.setflags(write=False)
    return m


@lru_cache(maxsize=4096)
def sprite(shape: str, pattern: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(body, dark)``: bool ``[n, n]`` masks; ``dark`` ⊂ ``body`` holds exactly
    ``round(fraction · body pixels)`` pattern pixels (fraction from ``PATTERNS``).

    Dots: the pixels nearest to a 3×3 grid of dot centres; stripes: the low phase of three
    diagonal stripes. Both are laid out in the shape's own coordinates, so they scale with it.
    """
    body = shape_mask(shape, n)
    frac = PATTERNS[pattern]
    dark = np.zeros_like(body)
    count = int(body.sum())
    k = int(math.floor(frac * count + 0.5))
    if k > 0:
        u, v = _grid(n)
        if pattern == "dots":
            g = (np.arange(3) + 0.5) / 3 * 2.0 - 1.0  # dot centres in [-1, 1]
            du = np.abs(u[..., None] - g).min(-1)  # [n, n]
            dv = np.abs(v[..., None] - g).min(-1)  # [n, n]
            key = du * du + dv * dv
        else:  # stripes
            t = (u + v + 2.0) / 4.0  # diagonal coordinate in [0, 1]
            key = (t * 3.0) % 1.0
        flat = np.where(body, key, np.inf).ravel()  # [n*n]
        order = np.argsort(flat, kind="stable")[:k]
        dark.ravel()[order] = True
    dark.setflags(write=False)
    return body, dark


# ----------------------------------------------------------------------------------------------
# blocking: camera and character trajectories per frame


@dataclass
class ShotPlan:
    """Blocking of one shot in world units: camera and character tracks per frame, and the state
    at progress 1 (where a following long-take segment starts)."""

    cam: np.ndarray  # [T, 3] (cx, cy, zoom)
    chars: dict[int, np.ndarray]  # index -> [T, 3] (x, y, scale)
    end_cam: np.ndarray  # [3]
    end_chars: dict[int, np.ndarray]  # index -> [3]


def _lerp(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``a + (b - a)·p`` for ``a, b: [3]`` and ``p: [T]`` -> ``[T, 3]``."""
    return a[None, :] + (b - a)[None, :] * p[:, None]


_DIRS = {"move left": (-1.0, 0.0), "move right": (1.0, 0.0), "move up": (0.0, -1.0), "move down": (0.0, 1.0)}


def _plan_shot(spec: SceneSpec, i: int, prev: ShotPlan | None) -> ShotPlan:
    shot: ShotSpec = spec.shots[i]
    w, h = spec.resolution
    m = min(w, h)
    T = shot.frames
    cont = (not shot.cut) and prev is not None
    if cont:
        p = (np.arange(T) + 1.0) / T  # one step after the previous last frame
    else:
        p = np.arange(T) / max(T - 1, 1)
    pe = np.append(p, 1.0)  # [T+1]: the frames plus the end state
    z = SHOT_TYPES[shot.shot_type]
    subj = shot.subject
    ev = shot.events

    def half_w(n: int, s: float) -> float:  # half a character's width in world x units
        return 0.5 * spec.character(n).size * s * m / w

    def jump_lift(n: int) -> float:
        return JUMP / z / 2.0 if ev.get(n) == "jump" else 0.0

    # --- camera
    if cont:
        start_cam = prev.end_cam
        c = start_cam[:2].copy()
        if shot.shot_type != "wide" and subj is not None and subj in prev.end_chars and ev[subj] != "enter":
            sx, sy = prev.end_chars[subj][:2]
            target = np.array([sx, sy - jump_lift(subj)])
            c = target if shot.shot_type == "close-up" else (target + start_cam[:2]) / 2.0
        end_cam = np.array([c[0] + shot.pan, c[1], z])
        cam = _lerp(start_cam, end_cam, pe)  # [T+1, 3]
    else:
        c = np.array([0.5, 0.5])
        if subj is not None and shot.shot_type != "wide":
            ax, ay = shot.anchors[subj]
            target = np.array([ax, ay - jump_lift(subj)])
            c = target if shot.shot_type == "close-up" else (c + target) / 2.0
        cam = np.empty((T + 1, 3))
        cam[:, 0] = c[0] + shot.pan * (pe - 0.5)
        cam[:, 1] = c[1]
        cam[:, 2] = z
    cam_end = cam[-1]
    margin = EDGE_MARGIN_PX / (z * w)

    # --- characters
    chars: dict[int, np.ndarray] = {}
    for n, e in ev.items():
        continuing = cont and n in prev.end_chars
        if continuing:
            x0, y0, s0 = (float(v) for v in prev.end_chars[n])
        else:
            x0, y0 = shot.anchors[n]
            s0 = 1.0
        start = np.array([x0, y0, s0])
        end = start.copy()
        if e in _DIRS:
            dx, dy = _DIRS[e]
            d = np.array([dx, dy]) * MOVE / z
            if continuing:  # keep the move inside the end view, but always move at least 40%
                hw = half_w(n, s0) + margin
                lo = cam_end[:2] - 0.5 / z + np.array([hw, hw * w / h])
                hi = cam_end[:2] + 0.5 / z - np.array([hw, hw * w / h])
                want = start[:2] + d
                got = np.clip(want, np.minimum(lo, start[:2]), np.maximum(hi, start[:2]))
                got = np.where(np.abs(got - start[:2]) < 0.4 * np.abs(d), start[:2] + 0.4 * d, got)
                end[:2] = got
            else:
                start[:2] = start[:2] - d / 2.0
                end[:2] = start[:2] + d
        elif e == "grow":
            end[2] = s0 * GROW
        elif e == "shrink":
            end[2] = s0 / GROW
        elif e == "enter":
            if continuing:
                side = 1.0 if x0 >= cam_end[0] else -1.0
                end[0] = cam_end[0] + side * ENTER_STOP / z
            else:
                side = float(shot.sides.get(n, 1))
                start[0] = cam[0, 0] + side * (0.5 / cam[0, 2] + half_w(n, 1.0) + margin)
        elif e == "exit":
            if continuing and abs(x0 - cam_end[0]) > 1e-9:
                side = 1.0 if x0 > cam_end[0] else -1.0
            else:
                side = float(shot.sides.get(n, 1))
            end[0] = cam_end[0] + side * (0.5 / z + half_w(n, s0) + margin)
        track = _lerp(start, end, pe)  # [T+1, 3]
        if e == "jump":
            track[:, 1] -= (JUMP / z) * 4.0 * pe * (1.0 - pe)
        chars[n] = track
    return ShotPlan(
        cam=cam[:T],
        chars={n: t[:T] for n, t in chars.items()},
        end_cam=cam_end,
        end_chars={n: t[-1] for n, t in chars.items()},
    )


# ----------------------------------------------------------------------------------------------
# drawing



@dataclass(frozen=True)
class _Pixels:
    """A sprite as pixel offsets: body ``rr, cc`` and pattern ``drr, dcc`` (int ``[P]`` each), and
    the body's bounding box ``(r0, c0, r1, c1)`` inside the ``n × n`` square (exclusive ends)."""

    rr: np.ndarray
    cc: np.ndarray
    drr: np.ndarray
    dcc: np.ndarray
    bbox: tuple[int, int, int, int]


@lru_cache(maxsize=4096)
def _pixels(shape: str, pattern: str, n: int) -> _Pixels:
    body, dark = sprite(shape, pattern, n)
    rr, cc = np.nonzero(body)
    drr, dcc = np.nonzero(dark)
    bbox = (int(rr.min()), int(cc.min()), int(rr.max()) + 1, int(cc.max()) + 1)
    return _Pixels(rr, cc, drr, dcc, bbox)


@lru_cache(maxsize=8192)
def _flat_offsets(shape: str, pattern: str, n: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Body and pattern pixel offsets from the sprite's top-left pixel in a row-major ``[H, W]`` frame."""
    px = _pixels(shape, pattern, n)
    return px.rr * w + px.cc, px.drr * w + px.dcc


def _sizes(size: float, scale: np.ndarray, zoom: np.ndarray, m: int) -> np.ndarray:
    """Sprite sizes in pixels ``[T]`` (at least 2)."""
    return np.maximum(2, np.floor(size * scale * zoom * m + 0.5)).astype(np.int64)


def _place(x: np.ndarray, y: np.ndarray, n: np.ndarray, cam: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left pixel of ``n``-pixel sprites centred at world ``(x, y)``; all ``[T]``."""
    px = (x - cam[:, 0]) * cam[:, 2] * w + w / 2.0
    py = (y - cam[:, 1]) * cam[:, 2] * h + h / 2.0
    return np.floor(px - n / 2.0 + 0.5).astype(np.int64), np.floor(py - n / 2.0 + 0.5).astype(np.int64)


_PIXEL = np.dtype((np.void, 3))  # one RGB pixel as a single 3-byte item


def _scatter(canvas: _Canvas, li: np.ndarray, rgb: tuple[int, int, int], label: int | None) -> None:
    """Write colour ``rgb`` (and ``label``) at flat pixel indices ``li`` (into ``[T*H*W]``)."""
    np.put(canvas.pixels, li, np.array(rgb, dtype=np.uint8).view(_PIXEL)[0])
    if label is not None:
        np.put(canvas.labels, li, label)


@dataclass
class _Canvas:
    """The frames being drawn: ``pixels`` is a ``[T*H*W]`` view of ``frames [T, H, W, 3]`` with one
    3-byte item per pixel, ``labels`` the uint8 ``[T*H*W]`` view of the character-mask buffer."""

    frames: np.ndarray
    masks: np.ndarray

    def __post_init__(self) -> None:
        self.pixels = self.frames.reshape(-1, 3).view(_PIXEL).reshape(-1)  # [T*H*W] of 3-byte RGB
        self.labels = self.masks.reshape(-1)  # [T*H*W]


def _stamp(canvas: _Canvas, shape: str, pattern: str, n: np.ndarray, xs: np.ndarray, ys: np.ndarray,
           rgb: tuple[int, int, int], dark_rgb: tuple[int, int, int] | None = None, label: int | None = None,
           frames: int | None = None) -> np.ndarray:
    """Draw one object into the first ``frames`` (default: all) frames of ``canvas`` at once.

    ``n, xs, ys``: int ``[T]`` sprite size and top-left pixel per frame; pattern pixels take
    ``dark_rgb``; with ``label`` the body is written into the character masks. Returns int
    ``[T, 4]``: exact boxes ``(x0, y0, x1, y1)`` of the drawn (clipped) pixels, rows of ``-1``
    where nothing landed in the frame.
    """
    T, H, W = canvas.frames.shape[:3]
    T = T if frames is None else frames
    boxes = np.full((T, 4), -1, dtype=np.int64)
    n, xs, ys = n[:T], xs[:T], ys[:T]
    for size in np.unique(n).tolist():
        ts = np.flatnonzero(n == size)  # [k] frames drawn at this size
        px = _pixels(shape, pattern, int(size))
        r0, c0, r1, c1 = px.bbox
        x, y = xs[ts], ys[ts]  # [k]
        touches = (x + c1 > 0) & (x + c0 < W) & (y + r1 > 0) & (y + r0 < H)  # [k]
        if not touches.all():
            ts, x, y = ts[touches], x[touches], y[touches]
            if ts.size == 0:
                continue
        base = (ts * H + y) * W + x  # [k] flat index of each sprite's top-left pixel
        inside = bool(((x + c0 >= 0) & (x + c1 <= W) & (y + r0 >= 0) & (y + r1 <= H)).all())
        if inside:
            off, doff = _flat_offsets(shape, pattern, int(size), W)
            _scatter(canvas, (base[:, None] + off[None, :]).ravel(), rgb, label)  # [k*P]
            if dark_rgb is not None and doff.size:
                _scatter(canvas, (base[:, None] + doff[None, :]).ravel(), dark_rgb, None)  # [k*D]
            boxes[ts] = np.stack([x + c0, y + r0, x + c1, y + r1], axis=1)  # [k, 4]
            continue
        rr = y[:, None] + px.rr[None, :]  # [k, P]
        cc = x[:, None] + px.cc[None, :]  # [k, P]
        ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)  # [k, P]
        _scatter(canvas, ((ts[:, None] * H + rr) * W + cc)[ok], rgb, label)
        if dark_rgb is not None and px.drr.size:
            dr = y[:, None] + px.drr[None, :]  # [k, D]
            dc = x[:, None] + px.dcc[None, :]  # [k, D]
            dok = (dr >= 0) & (dr < H) & (dc >= 0) & (dc < W)
            _scatter(canvas, ((ts[:, None] * H + dr) * W + dc)[dok], dark_rgb, None)
        hit = ok.any(axis=1)  # [k] (a sprite can touch the frame with its box but no pixel)
        ts, ok, rr, cc = ts[hit], ok[hit], rr[hit], cc[hit]
        boxes[ts, 0] = np.where(ok, cc, W).min(axis=1)
        boxes[ts, 1] = np.where(ok, rr, H).min(axis=1)
        boxes[ts, 2] = np.where(ok, cc, -1).max(axis=1) + 1
        boxes[ts, 3] = np.where(ok, rr, -1).max(axis=1) + 1
    return boxes


def _background(spec: SceneSpec, cam: np.ndarray, canvas: _Canvas, frames: int) -> None:
    """Setting colour, ground band and décor into the first ``frames`` frames of ``canvas`` for
    cameras ``cam [T, 3]``."""
    h, w = canvas.frames.shape[1:3]
    m = min(w, h)
    out = canvas.frames[:frames]  # [F, H, W, 3]
    row = np.empty((w, 3), dtype=np.uint8)  # one pixel row; broadcasting a row is far faster than a tuple
    row[:] = spec.setting_rgb
    out[:] = row
    d = spec.dressing
    cam = cam[:frames]
    if d.ground > 0:
        top = (1.0 - d.ground - cam[:, 1]) * cam[:, 2] * h + h / 2.0  # [F] pixel y of the band's top edge
        r0 = np.clip(np.ceil(top - 0.5), 0, h).astype(np.int64).tolist()  # [F] first ground row
        row[:] = shade(spec.setting_rgb, d.ground_shade)
        if all(r == r0[0] for r in r0):
            out[:, r0[0] :] = row
        else:
            for t, r in enumerate(r0):
                out[t, r:] = row
    ones = np.ones(frames)
    for dec in d.decor:
        n = _sizes(dec.size, ones, cam[:, 2], m)
        xs, ys = _place(np.full(frames, dec.x), np.full(frames, dec.y), n, cam, w, h)
        _stamp(canvas, dec.shape, "solid", n, xs, ys, shade(spec.setting_rgb, dec.shade), frames=frames)


def _to_boxes(label: str, arr: np.ndarray, out: list[list[Box]]) -> None:
    for t, (x0, y0, x1, y1) in enumerate(arr.tolist()):
        if x0 >= 0:
            out[t].append(Box(label, x0, y0, x1, y1))


def _render_shot(spec: SceneSpec, i: int, plan: ShotPlan, prompt: str) -> RenderedShot:
    w, h = spec.resolution
    m = min(w, h)
    T = spec.shots[i].frames
    canvas = _Canvas(np.empty((T, h, w, 3), dtype=np.uint8), np.zeros((T, h, w), dtype=np.uint8))
    cam = plan.cam  # [T, 3]
    if bool(np.all(cam == cam[0])):  # static camera: draw the set once, copy it
        _background(spec, cam, canvas, 1)
        canvas.frames[1:] = canvas.frames[0]
    else:
        _background(spec, cam, canvas, T)
    boxes: list[list[Box]] = [[] for _ in range(T)]
    prop_boxes: list[list[Box]] = [[] for _ in range(T)]
    ones = np.ones(T)
    for prop in spec.props:
        n = _sizes(prop.size, ones, cam[:, 2], m)
        xs, ys = _place(np.full(T, prop.x), np.full(T, prop.y), n, cam, w, h)
        _to_boxes(prop.label, _stamp(canvas, prop.shape, "solid", n, xs, ys, prop.rgb), prop_boxes)
    for idx in sorted(plan.chars):
        ch = spec.character(idx)
        tr = plan.chars[idx]  # [T, 3] (x, y, scale)
        n = _sizes(ch.size, tr[:, 2], cam[:, 2], m)
        xs, ys = _place(tr[:, 0], tr[:, 1], n, cam, w, h)
        dark = ch.shade_rgb if ch.pattern != "solid" else None
        _to_boxes(f"Character {idx}", _stamp(canvas, ch.shape, ch.pattern, n, xs, ys, ch.rgb, dark, idx), boxes)
    for t in range(T):
        boxes[t].extend(prop_boxes[t])
    return RenderedShot(index=i, prompt=prompt, frames=canvas.frames, boxes=boxes, character_masks=canvas.masks)


def plan_scene(spec: SceneSpec) -> list[ShotPlan]:
    """Per shot: camera ``[T, 3]`` (cx, cy, zoom) and character tracks ``[T, 3]`` (x, y, scale)."""
    plans: list[ShotPlan] = []
    prev: ShotPlan | None = None
    for i in range(len(spec.shots)):
        prev = _plan_shot(spec, i, prev)
        plans.append(prev)
    return plans


def render_scene(spec: SceneSpec) -> RenderedScene:
    """Render every shot of ``spec``: frames uint8 ``[T, H, W, 3]`` with ``(W, H) = spec.resolution``,
    per-frame boxes and character masks. Deterministic: the spec fixes every pixel."""
    from storyreel.world.describe import global_prompt, shot_prompt

    plans = plan_scene(spec)
    shots = [_render_shot(spec, i, plan, shot_prompt(spec, i)) for i, plan in enumerate(plans)]
    return RenderedScene(spec=spec, global_prompt=global_prompt(spec), shots=shots)
