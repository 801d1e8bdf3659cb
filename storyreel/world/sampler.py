"""StoryWorld scene sampler: seeded stories of several shots, with spoken and unspoken details.

A scene has two layers of content:

* **spoken** — everything a script states: the characters' colours and shapes, the setting, the
  story sentence, and per shot its type, the named characters with their events, frames and cut;
* **unspoken** — patterns, character sizes, set dressing, props, start positions, enter/exit sides
  and camera pans. These are drawn by :func:`assemble_scene` from generators derived from the seed
  and the spoken layer only, so a scene rebuilt from its script (same seed) is identical.

Coordinates are in *world units*: at a wide shot with no pan the frame shows ``x, y ∈ [0, 1]``
(``x`` to the right, ``y`` down). Sizes are fractions of ``min(width, height)`` at zoom 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storyreel.world.vocab import (
    COLORS,
    DECOR_SHAPES,
    EVENTS,
    PATTERNS,
    SETTINGS,
    SHAPES,
    SHOT_TYPES,
    RGB,
    character_description,
    decor_shades,
    ground_shade,
    pattern_shade,
    shade,
    shot_caption,
)

__all__ = [
    "CharacterSpec",
    "Decor",
    "Dressing",
    "Prop",
    "SceneSpec",
    "ShotSpec",
    "SpokenCharacter",
    "SpokenShot",
    "assemble_scene",
    "sample_scene",
]

RESOLUTION_RANGE = (32, 256)
_STORIES: dict[int, tuple[str, ...]] = {
    1: ("Character 1 explores the {setting}.", "Character 1 wanders around.", "Character 1 plays alone."),
    2: ("Character 1 meets Character 2.", "Character 1 follows Character 2.", "Character 1 and Character 2 play together."),
    3: (
        "Character 1 meets Character 2 and Character 3.",
        "Character 1, Character 2 and Character 3 gather.",
        "Character 1 follows Character 2 while Character 3 watches.",
    ),
}


def _check(cond: bool, name: str, value: object, allowed: str) -> None:
    if not cond:
        raise ValueError(f"{name}={value!r} is invalid; allowed: {allowed}")


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent generator for one kind of unspoken detail (seed + stream key)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=stream))


@dataclass(frozen=True, kw_only=True)
class CharacterSpec:
    """One character: ``index`` (1-based, ``Character N``), colour, shape, pattern, base size."""

    index: int
    color: str
    shape: str
    pattern: str = "solid"
    size: float = 0.22  # fraction of min(width, height) at a wide shot

    def __post_init__(self) -> None:
        _check(self.index >= 1, "CharacterSpec.index", self.index, "an integer >= 1")
        _check(self.color in COLORS, "CharacterSpec.color", self.color, ", ".join(COLORS))
        _check(self.shape in SHAPES, "CharacterSpec.shape", self.shape, ", ".join(SHAPES))
        _check(self.pattern in PATTERNS, "CharacterSpec.pattern", self.pattern, ", ".join(PATTERNS))
        _check(0.02 <= self.size <= 1.0, "CharacterSpec.size", self.size, "0.02..1.0")

    @property
    def rgb(self) -> RGB:
        return COLORS[self.color]

    @property
    def shade_rgb(self) -> RGB:
        return pattern_shade(self.color)

    @property
    def description(self) -> str:
        return character_description(self.color, self.shape)


@dataclass(frozen=True, kw_only=True)
class Decor:
    """A décor shape at a fixed world position, in the setting colour at ``shade`` brightness."""

    shape: str
    x: float
    y: float
    size: float
    shade: float


@dataclass(frozen=True, kw_only=True)
class Dressing:
    """Set dressing: ground band height (world units from the bottom), its shade, décor shapes."""

    ground: float
    ground_shade: float
    decor: tuple[Decor, ...] = ()

    def __post_init__(self) -> None:
        _check(0.0 <= self.ground <= 0.5, "Dressing.ground", self.ground, "0..0.5")
        _check(len(self.decor) <= 3, "Dressing.decor", len(self.decor), "0-3 décor shapes")


@dataclass(frozen=True, kw_only=True)
class Prop:
    """A small static object in a palette colour; its box label is ``'<colour> <shape>'``."""

    color: str
    shape: str
    x: float
    y: float
    size: float

    def __post_init__(self) -> None:
        _check(self.color in COLORS, "Prop.color", self.color, ", ".join(COLORS))
        _check(self.shape in SHAPES, "Prop.shape", self.shape, ", ".join(SHAPES))

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def rgb(self) -> RGB:
        return COLORS[self.color]


@dataclass(frozen=True, kw_only=True)
class SpokenCharacter:
    """What a global prompt says about a character."""

    index: int
    color: str
    shape: str


@dataclass(frozen=True, kw_only=True)
class SpokenShot:
    """What a per-shot prompt (plus frames/cut) says: shot type, events by character (subject first)."""

    shot_type: str
    events: dict[int, str]
    frames: int
    cut: bool = True


@dataclass(frozen=True, kw_only=True)
class ShotSpec:
    """One shot. ``events`` maps character index -> event, subject first; present = its keys.

    Unspoken: ``anchors`` (world position per present character: its resting point, or the middle
    of its move), ``sides`` (-1 left / +1 right, where enter/exit cross the frame edge) and ``pan``
    (camera travel in world units over the shot, 0 = static). ``cut=False`` continues the
    previous shot as one long take.
    """

    shot_type: str
    events: dict[int, str]
    frames: int
    cut: bool = True
    pan: float = 0.0
    anchors: dict[int, tuple[float, float]] = field(default_factory=dict)
    sides: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.shot_type in SHOT_TYPES, "ShotSpec.shot_type", self.shot_type, ", ".join(SHOT_TYPES))
        for n, e in self.events.items():
            _check(e in EVENTS, f"ShotSpec.events[{n}]", e, ", ".join(EVENTS))
            _check(n in self.anchors, f"ShotSpec.anchors[{n}]", None, "an (x, y) world position per present character")
        _check(self.frames >= 1, "ShotSpec.frames", self.frames, "an integer >= 1")
        _check(abs(self.pan) <= 1.0, "ShotSpec.pan", self.pan, "-1..1 world units")

    @property
    def subject(self) -> int | None:
        """The character the shot is about (named first), or None for an empty shot."""
        return next(iter(self.events), None)

    @property
    def present(self) -> tuple[int, ...]:
        return tuple(self.events)

    @property
    def caption(self) -> str:
        """The per-shot prompt without the ``[SHOT CUT]`` prefix."""
        return shot_caption(self.shot_type, self.events)


@dataclass(frozen=True, kw_only=True)
class SceneSpec:
    """A complete StoryWorld scene. ``resolution`` is ``(width, height)``; ``frames`` is the default
    frames per shot (individual shots may differ). ``origin`` says how to reproduce the scene."""

    seed: int
    characters: tuple[CharacterSpec, ...]
    setting: str
    dressing: Dressing
    shots: tuple[ShotSpec, ...]
    resolution: tuple[int, int] = (64, 64)
    fps: int = 8
    frames: int = 16
    story: str = ""
    props: tuple[Prop, ...] = ()
    origin: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check(self.seed >= 0, "SceneSpec.seed", self.seed, "an integer >= 0")
        _check(self.setting in SETTINGS, "SceneSpec.setting", self.setting, ", ".join(SETTINGS))
        w, h = self.resolution
        lo, hi = RESOLUTION_RANGE
        _check(lo <= w <= hi and lo <= h <= hi, "SceneSpec.resolution", self.resolution, f"(width, height) in {lo}..{hi}")
        _check(self.fps >= 1, "SceneSpec.fps", self.fps, "an integer >= 1")
        _check(self.frames >= 1, "SceneSpec.frames", self.frames, "an integer >= 1")
        _check(len(self.shots) >= 1, "SceneSpec.shots", len(self.shots), "at least one shot")
        idx = [c.index for c in self.characters]
        _check(len(set(idx)) == len(idx), "SceneSpec.characters", idx, "distinct character indices")
        cols = [c.color for c in self.characters]
        _check(len(set(cols)) == len(cols), "SceneSpec.characters", cols, "distinct colours (one colour per character)")
        for i, s in enumerate(self.shots):
            for n in s.events:
                _check(n in idx, f"SceneSpec.shots[{i}].events", n, f"character indices {idx}")

    def character(self, index: int) -> CharacterSpec:
        """The character called ``Character index``."""
        for c in self.characters:
            if c.index == index:
                return c
        raise KeyError(f"no Character {index}; this scene has {[c.index for c in self.characters]}")

    @property
    def setting_rgb(self) -> RGB:
        return SETTINGS[self.setting]

    def global_prompt(self) -> str:
        from storyreel.world.describe import global_prompt

        return global_prompt(self)

    def shot_prompt(self, i: int) -> str:
        from storyreel.world.describe import shot_prompt

        return shot_prompt(self, i)

    def to_metadata(self) -> dict[str, Any]:
        """JSON-able description: prompts, character table (with patterns), shots, dressing, props,
        and how to reproduce the scene (``origin``: the seed and sampler arguments)."""
        setting_rgb = self.setting_rgb
        return {
            "generator": "storyworld-1",
            "seed": self.seed,
            "origin": self.origin or {"function": "storyreel.world.scene_from_script"},
            "resolution": list(self.resolution),
            "fps": self.fps,
            "frames": self.frames,
            "setting": self.setting,
            "setting_rgb": list(setting_rgb),
            "story": self.story,
            "global_prompt": self.global_prompt(),
            "characters": [
                {
                    "index": c.index,
                    "label": f"Character {c.index}",
                    "description": c.description,
                    "color": c.color,
                    "shape": c.shape,
                    "pattern": c.pattern,
                    "size": c.size,
                    "rgb": list(c.rgb),
                    "pattern_rgb": list(c.shade_rgb),
                }
                for c in self.characters
            ],
            "dressing": {
                "ground": self.dressing.ground,
                "ground_rgb": list(shade(setting_rgb, self.dressing.ground_shade)),
                "decor": [
                    {**dataclasses.asdict(d), "rgb": list(shade(setting_rgb, d.shade))} for d in self.dressing.decor
                ],
            },
            "props": [{**dataclasses.asdict(p), "label": p.label, "rgb": list(p.rgb)} for p in self.props],
            "shots": [
                {
                    "prompt": self.shot_prompt(i),
                    "caption": s.caption,
                    "shot_type": s.shot_type,
                    "subject": s.subject,
                    "events": {str(n): e for n, e in s.events.items()},
                    "present": list(s.present),
                    "frames": s.frames,
                    "cut": s.cut,
                    "pan": s.pan,
                    "anchors": {str(n): list(a) for n, a in s.anchors.items()},
                    "sides": {str(n): v for n, v in s.sides.items()},
                }
                for i, s in enumerate(self.shots)
            ],
        }


# ----------------------------------------------------------------------------------------------
# unspoken details


def _draw_character(seed: int, sc: SpokenCharacter) -> CharacterSpec:
    rng = _rng(seed, 1, sc.index)
    pattern = ("solid", "dots", "stripes")[int(rng.integers(3))]
    size = round(float(rng.uniform(0.18, 0.26)), 4)
    return CharacterSpec(index=sc.index, color=sc.color, shape=sc.shape, pattern=pattern, size=size)


def _draw_dressing(seed: int, setting: str) -> Dressing:
    rng = _rng(seed, 2)
    ground = round(float(rng.uniform(0.12, 0.3)), 4)
    shades = decor_shades(setting)
    n = int(rng.integers(1, 4))
    # spread décor over a world wider than one frame so that pans reveal and hide it
    slots = rng.permutation(4)[:n]
    decor = []
    for slot in sorted(slots.tolist()):
        decor.append(
            Decor(
                shape=DECOR_SHAPES[int(rng.integers(len(DECOR_SHAPES)))],
                x=round(float(-0.35 + 0.45 * slot + rng.uniform(0.0, 0.35)), 4),
                y=round(float(rng.uniform(0.12, 0.6)), 4),
                size=round(float(rng.uniform(0.14, 0.3)), 4),
                shade=float(shades[int(rng.integers(len(shades)))]),
            )
        )
    return Dressing(ground=ground, ground_shade=ground_shade(setting), decor=tuple(decor))


def _draw_props(seed: int, used_colors: set[str]) -> tuple[Prop, ...]:
    rng = _rng(seed, 3)
    if rng.random() >= 0.35:
        return ()
    free = [c for c in COLORS if c not in used_colors]
    n = min(int(rng.integers(1, 3)), len(free))
    colors = rng.permutation(len(free))[:n]
    props = []
    for j, ci in enumerate(colors.tolist()):
        props.append(
            Prop(
                color=free[ci],
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                x=round(float(rng.uniform(0.08 + 0.5 * j, 0.42 + 0.5 * j)), 4),
                y=round(float(rng.uniform(0.72, 0.9)), 4),
                size=round(float(rng.uniform(0.08, 0.12)), 4),
            )
        )
    return tuple(props)


def _draw_shot(seed: int, i: int, sp: SpokenShot) -> ShotSpec:
    rng = _rng(seed, 4, i)
    present = list(sp.events)
    k = max(len(present), 1)
    lanes = rng.permutation(k)
    anchors: dict[int, tuple[float, float]] = {}
    sides: dict[int, int] = {}
    for j, n in enumerate(present):
        lo = 0.3 + 0.4 * lanes[j] / k
        hi = 0.3 + 0.4 * (lanes[j] + 1) / k
        anchors[n] = (round(float(rng.uniform(lo, hi)), 4), round(float(rng.uniform(0.38, 0.62)), 4))
        sides[n] = int(rng.choice((-1, 1)))
    pan = 0.0
    if sp.shot_type != "close-up" and rng.random() < 0.3:
        pan = round(float(rng.choice((-1.0, 1.0)) * rng.uniform(0.15, 0.3)), 4)
    if not sp.cut:
        pan = 0.0  # a long take keeps its camera; only re-framing on the subject moves it
    return ShotSpec(
        shot_type=sp.shot_type,
        events=dict(sp.events),
        frames=sp.frames,
        cut=sp.cut,
        pan=pan,
        anchors=anchors,
        sides=sides,
    )


def assemble_scene(
    *,
    seed: int,
    characters: list[SpokenCharacter],
    setting: str,
    story: str,
    shots: list[SpokenShot],
    resolution: tuple[int, int] = (64, 64),
    fps: int = 8,
    frames: int = 16,
    origin: dict[str, Any] | None = None,
) -> SceneSpec:
    """Complete a spoken scene with its unspoken details, drawn from ``seed`` alone.

    Each kind of detail has its own generator (character N, dressing, props, shot i), so the same
    seed and the same spoken content always give the same scene, however it was produced.
    """
    _check(isinstance(seed, int | np.integer) and seed >= 0, "seed", seed, "an integer >= 0")
    chars = tuple(_draw_character(seed, c) for c in characters)
    return SceneSpec(
        seed=int(seed),
        characters=chars,
        setting=setting,
        dressing=_draw_dressing(seed, setting),
        shots=tuple(_draw_shot(seed, i, s) for i, s in enumerate(shots)),
        resolution=(int(resolution[0]), int(resolution[1])),
        fps=int(fps),
        frames=int(frames),
        story=story,
        props=_draw_props(seed, {c.color for c in characters}),
        origin=origin or {},
    )


# ----------------------------------------------------------------------------------------------
# spoken story


def _sample_shots(
    rng: np.random.Generator, n_chars: int, n_shots: int, frames: int, long_take_prob: float
) -> list[SpokenShot]:
    shot_types = list(SHOT_TYPES)
    seen: set[int] = set()
    shots: list[SpokenShot] = []
    on_screen: dict[int, bool] = {}
    scale: dict[int, float] = {}
    last_move: dict[int, str] = {}
    for i in range(n_shots):
        cont = i > 0 and rng.random() < long_take_prob
        if cont:
            prev = shots[-1]
            shot_type = prev.shot_type if rng.random() < 0.7 else shot_types[int(rng.integers(3))]
            chars = list(prev.events)
            if len(chars) > 1 and rng.random() < 0.5:
                chars = chars[::-1]  # the other character becomes the subject
            events: dict[int, str] = {}
            for n in chars:
                if not on_screen[n]:
                    events[n] = "enter"
                    continue
                options = [e for e in EVENTS if e != "enter" and e != last_move.get(n)]
                if scale[n] >= 1.4:
                    options.remove("grow")
                if scale[n] <= 0.75:
                    options.remove("shrink")
                events[n] = options[int(rng.integers(len(options)))]
        else:
            shot_type = shot_types[int(rng.choice(3, p=[0.45, 0.3, 0.25]))]
            unseen = [n for n in range(1, n_chars + 1) if n not in seen]
            pool = unseen or list(range(1, n_chars + 1))
            subject = pool[int(rng.integers(len(pool)))]
            chars = [subject]
            if n_chars > 1 and shot_type != "close-up" and rng.random() < 0.5:
                others = [n for n in range(1, n_chars + 1) if n != subject]
                chars.append(others[int(rng.integers(len(others)))])
            events = {}
            for j, n in enumerate(chars):
                scale[n] = 1.0
                last_move.pop(n, None)
                if j > 0 and rng.random() < 0.4:
                    events[n] = "stay"
                else:
                    events[n] = EVENTS[int(rng.integers(len(EVENTS)))]
        for n, e in events.items():
            seen.add(n)
            on_screen[n] = e != "exit"
            scale[n] = scale.get(n, 1.0) * {"grow": 1.5, "shrink": 2 / 3}.get(e, 1.0)
            if e.startswith("move"):
                last_move[n] = e
        shots.append(SpokenShot(shot_type=shot_type, events=events, frames=frames, cut=not cont))
    return shots


def sample_scene(
    seed: int,
    *,
    n_shots: int | None = None,
    resolution: tuple[int, int] = (64, 64),
    frames: int = 16,
    fps: int = 8,
    long_take_prob: float = 0.0,
    max_characters: int = 3,
) -> SceneSpec:
    """Sample a StoryWorld scene. Same arguments ⇒ the same scene, bit for bit.

    Args:
        seed: integer >= 0; the spoken story comes from ``numpy.random.default_rng(seed)``, the
            unspoken details from generators derived from ``seed`` (see :func:`assemble_scene`).
        n_shots: shots in the scene (default: 2–8, drawn).
        resolution: ``(width, height)`` in pixels, each 32..256.
        frames: frames per shot (>= 1); fps: frames per second.
        long_take_prob: chance that a shot (after the first) continues the previous one without a
            cut (a long take).
        max_characters: 1..10 (colours are distinct within a scene).
    """
    _check(isinstance(seed, int | np.integer) and seed >= 0, "seed", seed, "an integer >= 0")
    _check(n_shots is None or n_shots >= 1, "n_shots", n_shots, "None (2-8 drawn) or an integer >= 1")
    _check(0.0 <= long_take_prob <= 1.0, "long_take_prob", long_take_prob, "0..1")
    _check(1 <= max_characters <= len(COLORS), "max_characters", max_characters, f"1..{len(COLORS)}")
    _check(frames >= 1, "frames", frames, "an integer >= 1")
    rng = np.random.default_rng(seed)
    weights = np.array([0.2, 0.5, 0.3] + [0.1] * (max_characters - 3))[:max_characters]
    n_chars = int(rng.choice(max_characters, p=weights / weights.sum())) + 1
    color_names = list(COLORS)
    colors = rng.permutation(len(color_names))[:n_chars]
    characters = [
        SpokenCharacter(index=j + 1, color=color_names[c], shape=SHAPES[int(rng.integers(len(SHAPES)))])
        for j, c in enumerate(colors.tolist())
    ]
    setting = list(SETTINGS)[int(rng.integers(len(SETTINGS)))]
    n = int(rng.integers(2, 9)) if n_shots is None else int(n_shots)
    stories = _STORIES[min(n_chars, 3)]
    story = stories[int(rng.integers(len(stories)))].format(setting=setting)
    if n_chars > 3:
        story = f"Character 1 meets {', '.join(f'Character {k}' for k in range(2, n_chars))} and Character {n_chars}."
    shots = _sample_shots(rng, n_chars, n, frames, long_take_prob)
    origin = {
        "function": "storyreel.world.sample_scene",
        "kwargs": {
            "seed": int(seed),
            "n_shots": n_shots,
            "resolution": [int(resolution[0]), int(resolution[1])],
            "frames": frames,
            "fps": fps,
            "long_take_prob": long_take_prob,
            "max_characters": max_characters,
        },
    }
    return assemble_scene(
        seed=int(seed),
        characters=characters,
        setting=setting,
        story=story,
        shots=shots,
        resolution=resolution,
        fps=fps,
        frames=frames,
        origin=origin,
    )
