"""StoryWorld's fixed vocabulary: colours, shapes, settings, shot types, events, patterns.

The RGB values and names below are part of StoryWorld's contract (see ``shared/storyworld.md``):
other parts of storyreel and outside checks rely on them, so they must never change silently.
This module also holds the caption grammar (pure string functions), so that the sampler, the
renderer and the script converter all speak the same sentences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

__all__ = [
    "COLORS",
    "DECOR_SHADE_RANGE",
    "DECOR_SHAPES",
    "EVENTS",
    "EVENT_PHRASES",
    "MIN_SHADE_CLEARANCE",
    "PATTERNS",
    "PATTERN_SHADE",
    "SETTINGS",
    "SETTING_MIN_COLOR_DISTANCE",
    "SETTING_MIN_SHADE_DISTANCE",
    "SHAPES",
    "SHOT_PHRASES",
    "SHOT_TYPES",
    "RGB",
    "VocabularyError",
    "check_settings",
    "character_description",
    "ground_shade",
    "decor_shades",
    "pattern_shade",
    "shade",
    "shot_caption",
]

RGB = tuple[int, int, int]

#: Character colours, name -> RGB (saturated, solid fill).
COLORS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 215, 40),
    "magenta": (215, 45, 205),
    "cyan": (40, 200, 210),
    "orange": (245, 140, 30),
    "purple": (130, 60, 200),
    "pink": (245, 130, 180),
    "white": (245, 245, 245),
}

#: Character (and prop) shapes. ``ring`` is a hollow circle.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "ring", "cross")

#: Settings (backgrounds), name -> RGB. Low saturation, far from every character colour.
SETTINGS: dict[str, RGB] = {
    "slate room": (95, 108, 130),
    "night sky": (25, 25, 60),
    "forest floor": (55, 75, 50),
    "sand dunes": (190, 175, 135),
    "stone hall": (95, 95, 85),
    "snow field": (185, 195, 210),
}

#: Shot type -> zoom factor of the world (character scale relative to a wide shot).
SHOT_TYPES: dict[str, float] = {"wide": 1.0, "medium": 1.6, "close-up": 2.5}

#: Per-shot events of a character.
EVENTS: tuple[str, ...] = (
    "enter",
    "exit",
    "move left",
    "move right",
    "move up",
    "move down",
    "jump",
    "grow",
    "shrink",
    "stay",
)

#: Event -> phrase used in per-shot prompts.
EVENT_PHRASES: dict[str, str] = {
    "enter": "entering",
    "exit": "exiting",
    "move left": "moving left",
    "move right": "moving right",
    "move up": "moving up",
    "move down": "moving down",
    "jump": "jumping",
    "grow": "growing",
    "shrink": "shrinking",
    "stay": "standing still",
}

#: Shot type -> phrase that opens a per-shot prompt.
SHOT_PHRASES: dict[str, str] = {"wide": "Wide shot", "medium": "Medium shot", "close-up": "Close-up"}

#: Pattern -> fraction of the character's body drawn in the pattern shade.
PATTERNS: dict[str, float] = {"solid": 0.0, "dots": 0.15, "stripes": 0.45}

#: Pattern pixels are the character colour at this brightness.
PATTERN_SHADE = 0.55

#: Décor shapes are drawn in the setting colour at a brightness inside this range.
DECOR_SHADE_RANGE: tuple[float, float] = (0.70, 0.85)
_DECOR_SHADE_STEPS: tuple[float, ...] = (0.70, 0.75, 0.80, 0.85)

#: Shapes used for set dressing (never mentioned in captions).
DECOR_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

#: Distance rules of the spec (RGB Euclidean).
SETTING_MIN_COLOR_DISTANCE = 60.0
SETTING_MIN_SHADE_DISTANCE = 45.0
#: Extra rule of ours: ground and décor shades keep at least this distance from every character
#: colour and pattern shade, so that exact-colour checks can never confuse set dressing with a
#: character.
MIN_SHADE_CLEARANCE = 30.0


class VocabularyError(ValueError):
    """A script uses a word outside StoryWorld's vocabulary.

    Attributes: ``field`` (e.g. ``global.characters[1].description``), ``value`` (what was
    given) and ``allowed`` (the words that would have been accepted).
    """

    def __init__(self, field: str, value: object, allowed: Mapping[str, Sequence[str]], hint: str) -> None:
        self.field = field
        self.value = value
        self.allowed = {k: list(v) for k, v in allowed.items()}
        lists = "; ".join(f"allowed {k}: {', '.join(v)}" for k, v in self.allowed.items())
        super().__init__(f"{field}: {value!r} is not in the StoryWorld vocabulary ({lists}). {hint}")


def shade(rgb: Sequence[int], factor: float) -> RGB:
    """``rgb`` at ``factor`` brightness, rounded half up to integers."""
    return tuple(int(math.floor(c * factor + 0.5)) for c in rgb)  # type: ignore[return-value]


def pattern_shade(color: str | Sequence[int]) -> RGB:
    """The pattern shade (55% brightness) of a character colour name or RGB triple."""
    rgb = COLORS[color] if isinstance(color, str) else color
    return shade(rgb, PATTERN_SHADE)


def _distance(a: Sequence[int], b: Sequence[int]) -> float:
    return math.sqrt(sum((int(x) - int(y)) ** 2 for x, y in zip(a, b, strict=True)))


def _clearance(rgb: Sequence[int]) -> float:
    """Smallest distance from ``rgb`` to any character colour or pattern shade."""
    return min(min(_distance(rgb, c), _distance(rgb, pattern_shade(c))) for c in COLORS.values())


@lru_cache(maxsize=None)
def _allowed_shade_factors(setting: str) -> tuple[float, ...]:
    base = SETTINGS[setting]
    return tuple(f for f in _DECOR_SHADE_STEPS if _clearance(shade(base, f)) >= MIN_SHADE_CLEARANCE)


def ground_shade(setting: str) -> float:
    """Brightness factor of the setting's ground band (the lightest allowed darker shade)."""
    return max(_allowed_shade_factors(setting))


def decor_shades(setting: str) -> tuple[float, ...]:
    """Brightness factors (within 70–85%) that décor of ``setting`` may use.

    The ground band's factor is excluded when another one is available, so décor standing on the
    ground stays visible.
    """
    allowed = _allowed_shade_factors(setting)
    rest = tuple(f for f in allowed if f != ground_shade(setting))
    return rest or allowed


def check_settings() -> list[str]:
    """Check the settings against the spec's distance rules; return a list of violations.

    Rules: a setting is never within 60 (RGB Euclidean) of a character colour, nor within 45 of a
    pattern shade; ground and décor shades lie within 70–85% brightness and keep 30 from both.
    """
    problems: list[str] = []
    for name, rgb in SETTINGS.items():
        for cname, crgb in COLORS.items():
            d = _distance(rgb, crgb)
            if d < SETTING_MIN_COLOR_DISTANCE:
                problems.append(f"setting {name!r} is {d:.1f} from colour {cname!r} (< {SETTING_MIN_COLOR_DISTANCE})")
            d = _distance(rgb, pattern_shade(crgb))
            if d < SETTING_MIN_SHADE_DISTANCE:
                problems.append(
                    f"setting {name!r} is {d:.1f} from the pattern shade of {cname!r} (< {SETTING_MIN_SHADE_DISTANCE})"
                )
        factors = {ground_shade(name), *decor_shades(name)}
        for f in factors:
            if not DECOR_SHADE_RANGE[0] <= f <= DECOR_SHADE_RANGE[1]:
                problems.append(f"setting {name!r} uses shade factor {f} outside {DECOR_SHADE_RANGE}")
            c = _clearance(shade(rgb, f))
            if c < MIN_SHADE_CLEARANCE:
                problems.append(f"setting {name!r} shade {f} is only {c:.1f} from a character colour/shade")
    return problems


def character_description(color: str, shape: str) -> str:
    """``'a <colour> <shape>'`` (``'an orange ...'``), the description used in global prompts."""
    article = "an" if color[:1] in "aeiou" else "a"
    return f"{article} {color} {shape}"


def shot_caption(shot_type: str, events: Mapping[int, str]) -> str:
    """Per-shot prompt without the ``[SHOT CUT]`` prefix.

    ``events`` maps character index -> event, subject first: ``Close-up of Character 1 moving
    right and Character 2 standing still.`` A shot without characters reads ``Wide shot of the
    empty scene.``
    """
    head = SHOT_PHRASES[shot_type]
    if not events:
        return f"{head} of the empty scene."
    parts = [f"Character {n} {EVENT_PHRASES[e]}" for n, e in events.items()]
    return f"{head} of {' and '.join(parts)}."
