"""Colour segmentation of StoryWorld video from pixels alone.

Given frames (ground-truth renders or generated video) and the palette colours a script names,
follow each colour through a shot: per frame its presence, body mask, box, dark share (→ pattern
class) and shape; per shot presence, pattern and shape by majority. Nothing here reads the
renderer's state: only StoryWorld's public vocabulary (palette, setting colours and shade factors,
shape definitions) serves as reference.

Tolerant by design, because generated video is blurry and noisy:

* every pixel goes to the nearest reference colour — a palette colour, its 55% pattern shade, or
  the setting colour / one of its ground and décor shades — if within ``tolerance`` (RGB
  Euclidean), else to "unknown";
* a colour's body is the largest 8-connected component of its colour ∪ pattern-shade pixels
  (pieces within ``2·bridge`` px joined) that holds enough pixels of the colour itself and is not
  a thin blur halo hugging another object;
* the dark share is the mean darkness along the colour's ray (colour = 0, pattern shade = 1,
  blends in between) over the body's interior — its outline with small holes closed, minus a rim
  that blur mixes with the background — so blur keeps it, where a count of dark pixels would not;
* shapes come from template matching of the bounding-box-normalised body.

Patterns and shapes are judged only in frames where the body is whole (not touching the frame
edge) and large enough. Thresholds are calibrated on ground-truth renders, see
``docs/evaluation.md``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from storyreel.world.render import shape_mask
from storyreel.world.vocab import COLORS, PATTERN_SHADE, PATTERNS, SETTINGS, SHAPES, decor_shades, ground_shade, shade

__all__ = [
    "UNKNOWN",
    "ColorTrack",
    "ReferencePalette",
    "DetectConfig",
    "ShotDetection",
    "check_frames",
    "classify_pixels",
    "classify_shape",
    "darkness",
    "detect_shot",
    "dilate",
    "erode",
    "label_components",
    "pattern_of",
    "reference_palette",
    "setting_factors",
    "track_confidence",
]

_REFERENCE_SIDE = 64  # pixel thresholds below are given for 64 px frames and scale with min(H, W)


@dataclass(frozen=True, kw_only=True)
class DetectConfig:
    """Thresholds of the colour detector (pixel counts are for a 64 px frame side and scale with
    the area of the actual frames). Calibration on ground truth: ``docs/evaluation.md``.

    Attributes:
        tolerance: a pixel farther than this (RGB Euclidean) from every reference colour is
            "unknown" (neither character nor setting).
        min_color_pixels: a body needs at least this many pixels of the colour itself.
        max_halo_share: a component with more than this share of its pixels within 3 px of the
            thick part of other character colours is a blur halo around another object.
        min_area: a body needs at least this many pixels (colour + pattern shade).
        min_frame_share: a colour is present in a shot if found in at least this share of its
            frames (at least one frame).
        erode: pixels peeled off the body before measuring its pattern (at least) ...
        erode_frac: ... or this share of the body's smaller box side, if more.
        bridge: pieces of one colour closer than ``2·bridge`` pixels form one body (blur turns the
            pixels where a colour meets its pattern shade into neither).
        pattern_min_pixels: interior pixels needed to measure a pattern in a frame.
        min_interior_share: ... and the interior (the body less its rim) must keep this share of
            the body (thin or small bodies are all edge; their pattern is not measured).
        solid_max: dark share (see :func:`darkness`) below this is ``solid``.
        dots_max: dark share below this (and >= ``solid_max``) is ``dots``; above is ``stripes``
            (the renderer draws 0, 0.15 and 0.45).
        shape_min_side: bounding-box side (pixels) needed to judge a shape in a frame.
        shape_grid: side of the grid bodies and templates are resampled to for shape matching.
    """

    tolerance: float = 60.0
    min_color_pixels: int = 4
    min_area: int = 6
    max_halo_share: float = 0.8
    min_frame_share: float = 0.125
    erode: int = 1
    erode_frac: float = 0.06
    bridge: int = 1
    pattern_min_pixels: int = 30
    min_interior_share: float = 0.5
    solid_max: float = 0.07
    dots_max: float = 0.30
    shape_min_side: int = 9
    shape_grid: int = 12

    def __post_init__(self) -> None:
        checks = [
            ("tolerance", self.tolerance, 0 < self.tolerance <= 255, "a number in (0, 255]"),
            ("min_color_pixels", self.min_color_pixels, self.min_color_pixels >= 1, "an integer >= 1"),
            ("min_area", self.min_area, self.min_area >= 1, "an integer >= 1"),
            ("max_halo_share", self.max_halo_share, 0 < self.max_halo_share <= 1, "a number in (0, 1]"),
            ("min_frame_share", self.min_frame_share, 0 < self.min_frame_share <= 1, "a number in (0, 1]"),
            ("erode", self.erode, self.erode >= 0, "an integer >= 0"),
            ("erode_frac", self.erode_frac, 0 <= self.erode_frac < 0.5, "a number in [0, 0.5)"),
            ("bridge", self.bridge, self.bridge >= 0, "an integer >= 0"),
            ("pattern_min_pixels", self.pattern_min_pixels, self.pattern_min_pixels >= 1, "an integer >= 1"),
            ("min_interior_share", self.min_interior_share, 0 <= self.min_interior_share < 1, "a number in [0, 1)"),
            ("solid_max", self.solid_max, 0 < self.solid_max < self.dots_max, "0 < solid_max < dots_max"),
            ("dots_max", self.dots_max, self.solid_max < self.dots_max < 1, "solid_max < dots_max < 1"),
            ("shape_min_side", self.shape_min_side, self.shape_min_side >= 3, "an integer >= 3"),
            ("shape_grid", self.shape_grid, 4 <= self.shape_grid <= 64, "an integer in 4..64"),
        ]
        for name, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"DetectConfig.{name}={value!r} is invalid; allowed: {allowed}")

    def scaled(self, count: int, height: int, width: int) -> int:
        """A pixel-count threshold given for 64×64 frames, scaled to ``height × width`` (>= 1)."""
        return max(1, int(round(count * height * width / _REFERENCE_SIDE**2)))


# ----------------------------------------------------------------------------------------------
# reference palette and pixel classes


@dataclass(frozen=True)
class ReferencePalette:
    """Reference colours ``rgb [K, 3]`` (float32). Classes ``0..C-1`` are the character colours
    (in ``COLORS`` order), ``C..2C-1`` their pattern shades, the rest setting colours and shades;
    ``setting_of[k]`` / ``factor_of[k]`` name a background class (``""`` / 0 for character ones)."""

    rgb: np.ndarray
    colors: tuple[str, ...]
    setting_of: tuple[str, ...]
    factor_of: tuple[float, ...]


def setting_factors(setting: str) -> tuple[float, ...]:
    """Brightness factors of ``setting``'s family, used as background reference colours: 1 (the
    setting colour) and the shades its ground band and décor may use (70–85%, ascending)."""
    return (1.0, *sorted({ground_shade(setting), *decor_shades(setting)}))


@lru_cache(maxsize=16)
def reference_palette(settings: tuple[str, ...] | None = None) -> ReferencePalette:
    """StoryWorld's reference colours: palette colours, pattern shades and the families of
    ``settings`` (default: every setting)."""
    for name in settings or ():
        if name not in SETTINGS:
            raise ValueError(f"setting {name!r} is not a StoryWorld setting; allowed: {', '.join(SETTINGS)}")
    colors = tuple(COLORS)
    rgb = [COLORS[c] for c in colors] + [shade(COLORS[c], PATTERN_SHADE) for c in colors]
    setting_of = [""] * (2 * len(colors))
    factor_of = [0.0] * (2 * len(colors))
    for name in settings or tuple(SETTINGS):
        base = SETTINGS[name]
        for f in setting_factors(name):
            rgb.append(shade(base, f))
            setting_of.append(name)
            factor_of.append(f)
    arr = np.asarray(rgb, dtype=np.float32)  # [K, 3]
    arr.setflags(write=False)
    return ReferencePalette(arr, colors, tuple(setting_of), tuple(factor_of))


#: Class of a pixel far from every reference colour.
UNKNOWN = -1


def check_frames(frames: object, *, name: str = "frames") -> np.ndarray:
    """``frames`` as uint8 ``[T, H, W, 3]`` (T >= 1), or ``ValueError`` saying how to fix it."""
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{name} has dtype {arr.dtype}; pass uint8 RGB frames [T, H, W, 3] "
            "(convert model tensors with storyreel.media.tensor_to_frames)"
        )
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"{name} has shape {arr.shape}; pass RGB frames of shape [T, H, W, 3] with T >= 1")
    return arr


def classify_pixels(
    frames: np.ndarray, *, tolerance: float = 60.0, settings: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest reference colour per pixel.

    Args:
        frames: uint8 ``[T, H, W, 3]``.
        tolerance: pixels farther than this from every reference colour get :data:`UNKNOWN`.
        settings: settings whose colour families are background references (default: all).

    Returns:
        ``(classes, distance)``: int16 ``[T, H, W]`` class index into :func:`reference_palette`
        (or ``-1``) and float32 ``[T, H, W]`` distance to it.
    """
    frames = check_frames(frames)
    pal = reference_palette(None if settings is None else tuple(settings)).rgb  # [K, 3]
    T, H, W, _ = frames.shape
    # classify each distinct colour once: exact, and fast on clean renders (few distinct colours)
    flat = frames.reshape(-1, 3).astype(np.int32)  # [T*H*W, 3]
    packed = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]  # [T*H*W]
    uniq, inverse = np.unique(packed, return_inverse=True)  # [U], [T*H*W]
    x = np.stack([uniq >> 16, (uniq >> 8) & 255, uniq & 255], axis=1).astype(np.float32)  # [U, 3]
    k = np.empty(uniq.size, dtype=np.int16)
    best = np.empty(uniq.size, dtype=np.float32)
    c2 = (pal * pal).sum(1)  # [K]
    for u0 in range(0, uniq.size, 65536):  # bounded memory: [chunk, K] distances at a time
        xc = x[u0 : u0 + 65536]  # [u, 3]
        d2 = (xc * xc).sum(1, keepdims=True) - 2.0 * xc @ pal.T + c2[None, :]  # [u, K]
        kc = d2.argmin(1)  # [u]
        bc = np.sqrt(np.maximum(d2[np.arange(kc.size), kc], 0.0))  # [u]
        k[u0 : u0 + kc.size] = np.where(bc <= tolerance, kc, UNKNOWN)
        best[u0 : u0 + kc.size] = bc
    classes = k[inverse].reshape(T, H, W)  # [T, H, W]
    dist = best[inverse].reshape(T, H, W)  # [T, H, W]
    return classes, dist


# ----------------------------------------------------------------------------------------------
# binary morphology and connected components (numpy only)


def _pad1(mask: np.ndarray, fill: bool) -> np.ndarray:
    """``mask [T, H, W]`` with a one-pixel border of ``fill``: ``[T, H+2, W+2]`` (np.pad is slow)."""
    T, H, W = mask.shape
    out = np.full((T, H + 2, W + 2), fill, dtype=bool)
    out[:, 1:-1, 1:-1] = mask
    return out


def erode(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """4-neighbour binary erosion of ``mask [T, H, W]`` (outside the frame counts as inside, so a
    body clipped by the frame edge is not eroded there)."""
    out = mask
    for _ in range(steps):
        p = _pad1(out, True)  # [T, H+2, W+2]
        out = p[:, 1:-1, 1:-1] & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]
    return out


def dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """8-neighbour binary dilation of ``mask [T, H, W]``."""
    out = mask
    for _ in range(steps):
        p = _pad1(out, False)  # [T, H+2, W+2]
        rows = p[:, :-2] | p[:, 1:-1] | p[:, 2:]  # [T, H, W+2]: any of the three rows
        out = rows[:, :, :-2] | rows[:, :, 1:-1] | rows[:, :, 2:]  # [T, H, W]
    return out


_NEIGHBOURS_8 = ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of each frame of ``mask``: bool ``[T, H, W]`` -> int64 ``[T, H, W]``.

    Background is 0; a component's label is 1 + the flat index of its first pixel (labels are
    unique over all frames, components never cross frames). Min-label propagation with pointer
    jumping, vectorised over every frame at once.
    """
    mask = np.asarray(mask, dtype=bool)
    T, H, W = mask.shape
    big = np.int64(T * H * W + 1)
    idx = np.arange(1, T * H * W + 1, dtype=np.int64).reshape(T, H, W)
    lab = np.where(mask, idx, big)  # [T, H, W]
    pad = np.full((T, H + 2, W + 2), big, dtype=np.int64)  # [T, H+2, W+2]: a border of "outside"
    while True:
        pad[:, 1:-1, 1:-1] = lab
        new = lab.copy()
        for dy, dx in _NEIGHBOURS_8:
            np.minimum(new, pad[:, 1 + dy : H + 1 + dy, 1 + dx : W + 1 + dx], out=new)
        new[~mask] = big
        flat = new.reshape(-1)  # [T*H*W] view
        inside = np.flatnonzero(flat < big)
        for _ in range(8):  # pointer jumping: follow each label to its own label
            hop = flat[flat[inside] - 1]
            if not (hop < flat[inside]).any():
                break
            flat[inside] = np.minimum(flat[inside], hop)
        if np.array_equal(new, lab):
            break
        lab = new
    return np.where(mask, lab, 0)


# ----------------------------------------------------------------------------------------------
# shapes


@lru_cache(maxsize=1024)
def _area_matrix(n: int, g: int) -> np.ndarray:
    """``[g, n]`` area-resampling weights from ``n`` source cells to ``g`` target cells."""
    edges = np.linspace(0.0, n, g + 1)  # [g+1] target cell edges in source units
    lo = np.maximum(edges[:-1, None], np.arange(n)[None, :])  # [g, n]
    hi = np.minimum(edges[1:, None], np.arange(1, n + 1)[None, :])  # [g, n]
    a = np.clip(hi - lo, 0.0, None)
    return a / a.sum(1, keepdims=True)


def _normalise(mask: np.ndarray, g: int) -> np.ndarray:
    """Crop bool ``[h, w]`` to its bounding box and area-resample it to float ``[g, g]``."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float64)  # [h', w']
    return _area_matrix(crop.shape[0], g) @ crop @ _area_matrix(crop.shape[1], g).T  # [g, g]


@lru_cache(maxsize=8)
def _templates(g: int) -> np.ndarray:
    """float ``[len(SHAPES), g, g]``: every shape, bounding-box normalised."""
    return np.stack([_normalise(shape_mask(s, 96), g) for s in SHAPES])


def classify_shape(body: np.ndarray, *, grid: int = 12) -> tuple[str, float]:
    """Best-matching StoryWorld shape of a body mask bool ``[h, w]`` and its mean absolute
    difference to that template (0 = perfect) after both are normalised to ``grid × grid``."""
    if not body.any():
        raise ValueError("classify_shape got an empty body mask; pass a mask with at least one True pixel")
    err = np.abs(_templates(grid) - _normalise(body, grid)[None]).mean(axis=(1, 2))  # [S]
    k = int(err.argmin())
    return SHAPES[k], float(err[k])


# ----------------------------------------------------------------------------------------------
# detection


def pattern_of(dark_share: float, config: DetectConfig) -> str:
    """Pattern class of a dark share (see :func:`darkness`): ``solid`` / ``dots`` / ``stripes``."""
    if dark_share < config.solid_max:
        return "solid"
    return "dots" if dark_share < config.dots_max else "stripes"


@dataclass
class ColorTrack:
    """One palette colour followed through one shot.

    Per frame: ``found`` bool ``[T]``, ``areas`` int ``[T]`` (body pixels), ``boxes`` int
    ``[T, 4]`` (``x0, y0, x1, y1`` exclusive; ``-1`` where not found), ``masks`` bool
    ``[T, H, W]`` (body), ``dark_share`` float ``[T]`` (:func:`darkness` of the body's interior;
    NaN where the body is thin, small or touches the frame edge), ``shapes`` (best shape or None).
    Per shot: ``present``, ``pattern`` (majority of measured frames, None if none), ``shape``
    (same), and the vote counts.
    """

    color: str
    found: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    dark_share: np.ndarray
    shapes: list[str | None]
    present: bool
    pattern: str | None
    pattern_votes: dict[str, int] = field(default_factory=dict)
    shape: str | None = None
    shape_votes: dict[str, int] = field(default_factory=dict)

    @property
    def median_dark_share(self) -> float:
        """Median dark share over the frames where it was measured (NaN if none)."""
        v = self.dark_share[~np.isnan(self.dark_share)]
        return float(np.median(v)) if v.size else float("nan")


@dataclass
class ShotDetection:
    """Detections of one shot: ``tracks`` per requested colour, ``classes`` int16 ``[T, H, W]``
    (see :func:`classify_pixels`), ``character_pixels`` bool ``[T, H, W]`` (pixels of any
    palette colour or pattern shade, i.e. not background) and ``distance`` float32 ``[T, H, W]``
    (each pixel's RGB distance to its nearest reference colour; None if not kept)."""

    tracks: dict[str, ColorTrack]
    classes: np.ndarray
    character_pixels: np.ndarray
    distance: np.ndarray | None = None

    @property
    def present(self) -> set[str]:
        """Colours present in the shot."""
        return {c for c, tr in self.tracks.items() if tr.present}


def _majority(votes: Sequence[str]) -> tuple[str | None, dict[str, int]]:
    counts = Counter(votes)
    if not counts:
        return None, {}
    best = max(counts.values())
    # ties go to the name listed first in the vocabulary order of the votes' kind
    order = {**{p: i for i, p in enumerate(PATTERNS)}, **{s: i for i, s in enumerate(SHAPES)}}
    winner = min((v for v, n in counts.items() if n == best), key=lambda v: order.get(v, 99))
    return winner, dict(counts)


def darkness(pixels: np.ndarray, color: str, *, max_off_ray: float = 30.0) -> float:
    """Mean darkness of ``pixels`` (uint8 ``[P, 3]``) along ``color``'s ray.

    A pixel at brightness factor ``f`` (its projection on the colour) counts ``(1 - f) / (1 - 0.55)``
    — 0 for the colour, 1 for its pattern shade, fractions for blends — clipped to [-0.5, 1.5].
    Blur mixes colour and shade linearly, so this mean keeps the dark share of a blurred pattern
    (a pixel count would not). Pixels farther than ``max_off_ray`` from the ray (blends with the
    background or with other objects) are left out; NaN if none is left.
    """
    c = np.asarray(COLORS[color], dtype=np.float64)  # [3]
    x = pixels.astype(np.float64)  # [P, 3]
    f = x @ c / float(c @ c)  # [P]
    off = np.linalg.norm(x - f[:, None] * c[None, :], axis=1)  # [P] distance from the ray
    keep = off <= max_off_ray
    if not keep.any():
        return float("nan")
    return float(np.clip((1.0 - f[keep]) / (1.0 - PATTERN_SHADE), -0.5, 1.5).mean())


def _window(a: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``a[y0:y1, x0:x1]`` of an ``[H, W, ...]`` array, zero-filled where the window leaves it."""
    H, W = a.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0, *a.shape[2:]), dtype=a.dtype)
    sy, sx = slice(max(y0, 0), min(y1, H)), slice(max(x0, 0), min(x1, W))
    out[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0] = a[sy, sx]
    return out


def _measure(body: np.ndarray, frame: np.ndarray, color: str, box: tuple[int, int, int, int], config: DetectConfig,
             scale: float) -> tuple[float, str | None]:
    """Dark share and shape of a whole body (bool ``[H, W]`` in frame uint8 ``[H, W, 3]``, box
    ``x0, y0, x1, y1``); NaN / None where the body is too thin or small to tell."""
    x0, y0, x1, y1 = box
    side = min(x1 - x0, y1 - y0)
    steps = int(round(config.erode * scale))
    rim = max(steps, int(round(config.erode_frac * side)))
    m = rim + 2  # work on the body's box plus an empty margin (the body does not touch the edge)
    crop = _window(body, y0 - m, y1 + m, x0 - m, x1 + m)[None]  # [1, h, w]
    # the body's outline with 1-2 px holes closed (blur can turn pixels where the colour meets its
    # shade into neither); thin or small outlines are all edge and are not measured
    closed = erode(dilate(crop, 1), 1)  # [1, h, w]
    # peel the rim that blur mixes with the background (thicker bodies lose a thicker rim)
    core = erode(closed, rim) if rim else closed  # [1, h, w]
    thick = int(core.sum()) >= config.min_interior_share * int(closed.sum())
    interior = core & crop  # [1, h, w]
    dark = float("nan")
    if thick and int(interior.sum()) >= config.scaled(config.pattern_min_pixels, *body.shape):
        pixels = _window(frame, y0 - m, y1 + m, x0 - m, x1 + m)[interior[0]]  # [n, 3]
        dark = darkness(pixels, color)
    shape = None
    if side >= max(3, int(round(config.shape_min_side * scale))):
        shape = classify_shape(crop[0], grid=config.shape_grid)[0]
    return dark, shape


def _track(color: str, frames: np.ndarray, classes: np.ndarray, config: DetectConfig) -> ColorTrack:
    T, H, W = classes.shape
    pal = reference_palette()
    ci = pal.colors.index(color)
    is_color = classes == ci  # [T, H, W]
    is_dark = classes == ci + len(pal.colors)  # [T, H, W]
    union = is_color | is_dark
    labels = np.zeros((T, H, W), dtype=np.int64)
    rows, cols = np.flatnonzero(union.any(axis=(0, 2))), np.flatnonzero(union.any(axis=(0, 1)))
    if rows.size:  # label only the region that holds the colour (labels stay unique per frame)
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        sub = union[:, r0:r1, c0:c1]  # [T, h, w]
        near = dilate(sub, config.bridge) if config.bridge else sub  # bridge gaps of blended pixels
        labels[:, r0:r1, c0:c1] = np.where(sub, label_components(near), 0)
    min_color = config.scaled(config.min_color_pixels, H, W)
    min_area = config.scaled(config.min_area, H, W)
    scale = min(H, W) / _REFERENCE_SIDE
    found = np.zeros(T, dtype=bool)
    areas = np.zeros(T, dtype=np.int64)
    boxes = np.full((T, 4), -1, dtype=np.int64)
    masks = np.zeros((T, H, W), dtype=bool)
    dark_share = np.full(T, np.nan)
    shapes: list[str | None] = [None] * T
    ids, inv, counts = np.unique(labels[union], return_inverse=True, return_counts=True)  # [n], [P], [n]
    color_counts = np.bincount(inv[is_color[union]], minlength=ids.size)  # [n] colour pixels per component
    # blur leaves a thin halo of mixed pixels around every object, and a halo can match another
    # palette colour (magenta on snow blurs to pink). A component lying almost wholly within 3 px
    # of the thick part (surviving a 1 px erosion) of other objects is such a halo; halos
    # themselves are thin, so a real body's own halo never disqualifies it.
    n_col = len(pal.colors)
    other_color = (classes >= 0) & (classes < n_col) & ~is_color  # [T, H, W]
    other_dark = (classes >= n_col) & (classes < 2 * n_col) & ~is_dark  # [T, H, W]
    # other objects: their colour pixels plus the shade pixels next to them (a background that
    # happens to resemble some pattern shade is not an object)
    others = other_color | (other_dark & dilate(other_color, 2))  # [T, H, W]
    near_others = dilate(erode(others, 1), 3)  # [T, H, W]
    halo_counts = np.bincount(inv[near_others[union]], minlength=ids.size)  # [n]
    frame_of = np.nonzero(union)[0][np.unique(inv, return_index=True)[1]]  # [n] frame of each component
    ok = (color_counts >= min_color) & (counts >= min_area) & (halo_counts <= config.max_halo_share * counts)  # [n]
    best = np.full(T, -1, dtype=np.int64)  # per frame: the largest qualifying component
    for k in np.flatnonzero(ok)[np.argsort(counts[ok], kind="stable")].tolist():  # ascending area
        best[frame_of[k]] = k
    for t in np.flatnonzero(best >= 0).tolist():
        k = int(best[t])
        lab = labels[t]
        body = lab == ids[k]  # [H, W]
        ys, xs = np.nonzero(body)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        found[t], areas[t], masks[t] = True, int(counts[k]), body
        boxes[t] = (x0, y0, x1, y1)
        if x0 > 0 and y0 > 0 and x1 < W and y1 < H:  # whole bodies only: patterns and shapes
            dark_share[t], shapes[t] = _measure(body, frames[t], color, (x0, y0, x1, y1), config, scale)
    need = max(1, int(np.ceil(config.min_frame_share * T)))
    pattern, pvotes = _majority([pattern_of(float(s), config) for s in dark_share if not np.isnan(s)])
    shape_, svotes = _majority([s for s in shapes if s is not None])
    return ColorTrack(
        color=color,
        found=found,
        areas=areas,
        boxes=boxes,
        masks=masks,
        dark_share=dark_share,
        shapes=shapes,
        present=int(found.sum()) >= need,
        pattern=pattern,
        pattern_votes=pvotes,
        shape=shape_,
        shape_votes=svotes,
    )


def detect_shot(
    frames: np.ndarray, colors: Sequence[str], config: DetectConfig | None = None, *, setting: str | None = None
) -> ShotDetection:
    """Segment ``colors`` (palette names) in one shot.

    Args:
        frames: uint8 ``[T, H, W, 3]``.
        colors: character colour names to follow (e.g. the colours of a script's characters).
        config: thresholds (default :class:`DetectConfig`).
        setting: the setting the script asks for; only its colour family serves as background
            reference (fewer look-alikes for blurred characters). Default: every setting.

    Returns:
        A :class:`ShotDetection` with one :class:`ColorTrack` per colour.
    """
    config = config or DetectConfig()
    for c in colors:
        if c not in COLORS:
            raise ValueError(f"colour {c!r} is not a StoryWorld palette colour; allowed: {', '.join(COLORS)}")
    frames = check_frames(frames)
    classes, distance = classify_pixels(frames, tolerance=config.tolerance, settings=None if setting is None else (setting,))
    n_char = 2 * len(reference_palette().colors)
    character_pixels = (classes >= 0) & (classes < n_char)
    tracks = {c: _track(c, frames, classes, config) for c in dict.fromkeys(colors)}
    return ShotDetection(tracks=tracks, classes=classes, character_pixels=character_pixels, distance=distance)


def track_confidence(track: ColorTrack, distance: np.ndarray, *, tolerance: float) -> np.ndarray:
    """Confidence in ``[0, 1]`` of each frame's body of ``track`` (0 where none was found): the mean of
    the share of the shot's frames in which the colour is found (a body that comes and goes is less
    trustworthy) and the body's colour purity, ``mean(1 - distance / tolerance)`` over its pixels
    (blurred or off-palette bodies score lower). ``distance``: float ``[T, H, W]`` from
    :func:`classify_pixels`. Returns float64 ``[T]``."""
    T = track.found.shape[0]
    conf = np.zeros(T, dtype=np.float64)
    share = float(track.found.mean())
    for t in np.flatnonzero(track.found).tolist():
        purity = float(np.clip(1.0 - distance[t][track.masks[t]] / tolerance, 0.0, 1.0).mean())
        conf[t] = 0.5 * share + 0.5 * purity
    return conf

