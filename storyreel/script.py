"""Scene scripts: the document a user writes (global prompt, shots, settings).

A script is YAML or JSON with ``title``, ``global`` (characters, setting, story), ``shots`` and
``settings``; see ``examples/meeting-4shots.yaml``. ``load_script`` / ``parse_script`` /
``parse_script_text`` check everything before any compute and collect *all* problems into one
:class:`ScriptError` whose issues name the field path (``shots[2].prompt``, list indices 0-based),
what was wrong and what is allowed. ``history`` holds 1-based shot numbers (shot 1 = ``shots[0]``).
"""

from __future__ import annotations

import difflib
import functools
import json
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, ValidationInfo
from pydantic import field_validator, model_validator

from storyreel.utils import atomic_write

__all__ = ["MODES", "Character", "GlobalPrompt", "LayoutBox", "SceneScript", "ScriptError", "ScriptIssue", "Settings",
           "Shot", "character_descriptions", "dump_script", "expand_character_refs", "load_script", "parse_script",
           "parse_script_text"]

MODES = ("joint", "autoregressive", "causal", "extend")
SHOT_CUT = "[SHOT CUT]"
MAX_SIDE = 4096
MAX_SEED = 2**63 - 1
_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}
_CHAR_REF = re.compile(r"\bcharacter\s+(\d{1,9})\b", re.IGNORECASE)
_CHAR_DEF = re.compile(r"\bCharacter (\d{1,9}): ([^.!?]+)[.!?]")  # "Character 2: an orange star." in a global prompt
_CHAR_MENTION = re.compile(r"\b(Character (\d{1,9}))\b(?! \()")  # a mention not already followed by "(...)"
_CTX_PARSING = "_storyreel_parsing"  # validation-context flag: parse_script runs the cross-field checks itself
_CTX_BASE_DIR = "_storyreel_base_dir"

def _plain_int(value: Any) -> Any:
    """NumPy/torch integer scalars -> int (bool and text stay as they are and fail the strict check)."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)) else value


_SInt = Annotated[int, Strict(), BeforeValidator(_plain_int)]  # whole numbers only: no "16", 16.0 or true
_SFloat = Annotated[float, Strict(), AllowInfNan(False)]


# --- Errors


@dataclass(frozen=True)
class ScriptIssue:
    """One problem in a script: ``loc`` is the field path (``shots[2].prompt``), ``message`` says
    what was wrong and what is allowed."""

    loc: str
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}"


class ScriptError(ValueError):
    """Every problem found in a scene script; ``str()`` lists them one per line as ``loc: message``."""

    def __init__(self, errors: list[ScriptIssue] | ScriptIssue) -> None:
        self.errors: list[ScriptIssue] = [errors] if isinstance(errors, ScriptIssue) else list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    def __reduce__(self) -> tuple[Any, ...]:
        return (ScriptError, (self.errors,))


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only spaces")
    return value


# --- Schema (field names and shapes are fixed; see shared/design.md)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Character(_Strict):
    """One character of the scene, referred to as ``Character <id>`` in prompts."""

    id: _SInt = Field(ge=1, description="Character number, referred to as `Character N` in prompts.")
    description: str = Field(min_length=1, description="Appearance, e.g. 'a red circle'.")

    _blank = field_validator("description")(_not_blank)


class GlobalPrompt(_Strict):
    """Scene-level prompt: the character table, the setting and the story (LCT global prompt)."""

    characters: list[Character] = Field(default_factory=list)
    setting: str = Field(min_length=1)
    story: str = ""

    _blank = field_validator("setting")(_not_blank)

    @field_validator("characters")
    @classmethod
    def _unique_ids(cls, chars: list[Character]) -> list[Character]:
        first: dict[int, int] = {}
        dups = []
        for k, c in enumerate(chars):
            if c.id in first:
                dups.append(f"id {c.id} is used by characters[{first[c.id]}] and characters[{k}]")
            first.setdefault(c.id, k)
        if dups:
            raise ValueError("duplicate character ids: " + ", ".join(dups) + "; give every character its own number")
        return chars


class LayoutBox(_Strict):
    """A labelled box in normalised image coordinates, optionally for one frame only."""

    label: str = Field(min_length=1, description="Object label, e.g. 'Character 1' or 'red star'.")
    box: tuple[_SFloat, _SFloat, _SFloat, _SFloat] = Field(description="[x0, y0, x1, y1], normalised 0..1.")
    frame: _SInt | None = Field(default=None, ge=0, description="Frame index; None = every frame.")

    _blank = field_validator("label")(_not_blank)

    @field_validator("box")
    @classmethod
    def _check_box(cls, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        problems = [f"{n}={v:g} is outside [0, 1]" for n, v in zip(("x0", "y0", "x1", "y1"), box) if not 0 <= v <= 1]
        if x0 >= x1:
            problems.append(f"x0={x0:g} is not left of x1={x1:g}")
        if y0 >= y1:
            problems.append(f"y0={y0:g} is not above y1={y1:g}")
        if problems:
            raise ValueError(f"bad box {[float(v) for v in box]}: " + ", ".join(problems))
        return box


class Shot(_Strict):
    """One shot: its prompt, length, whether it starts with a cut, and optional conditioning."""

    prompt: str = Field(min_length=1)
    frames: _SInt | None = Field(default=None, ge=1, description="Frames (default: settings.frames).")
    cut: bool = Field(default=True, strict=True, description="True = new shot ([SHOT CUT]); False = long take.")
    keyframe: Path | None = None
    layout: list[LayoutBox] | None = None
    history: list[_SInt] | None = Field(default=None, description="1-based numbers of earlier shots to condition on.")

    _blank = field_validator("prompt")(_not_blank)

    @field_validator("keyframe")
    @classmethod
    def _resolve_keyframe(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None:
            return None
        base = (info.context or {}).get(_CTX_BASE_DIR)
        if base is not None and not path.is_absolute() and "\0" not in str(path):
            path = Path(os.path.abspath(Path(base) / path))
        shown = os.path.abspath(path) if "\0" not in str(path) else repr(str(path))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ValueError(f"keyframe file not found: {shown}; put the image there or fix the path") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"keyframe path {shown} cannot be used ({exc}); give a plain image file path") from None
        if not os.path.isfile(path) or st.st_size == 0:
            raise ValueError(f"keyframe path {shown} is not a non-empty file; point it at an image file")
        return path


class Settings(_Strict):
    """Generation settings. ``resolution`` is ``[width, height]``."""

    seed: _SInt = Field(default=0, ge=0, le=MAX_SEED)
    steps: _SInt = Field(default=24, ge=1)
    guidance: float = Field(default=3.0, ge=0, strict=True, allow_inf_nan=False)
    mode: Literal["joint", "autoregressive", "causal", "extend"] = "joint"
    resolution: tuple[_SInt, _SInt] = (64, 64)  # [width, height]
    fps: _SInt = Field(default=8, ge=1, le=120)
    frames: _SInt = Field(default=16, ge=1)

    @field_validator("resolution")
    @classmethod
    def _check_resolution(cls, res: tuple[int, int]) -> tuple[int, int]:
        problems = []
        for name, v in zip(("width", "height"), res):
            if not 8 <= v <= MAX_SIDE:
                problems.append(f"{name} {v} is outside 8..{MAX_SIDE}")
            elif v % 8:
                problems.append(f"{name} {v} is not a multiple of 8 (try {v // 8 * 8} or {v // 8 * 8 + 8})")
        if problems:
            raise ValueError(f"bad resolution {list(res)}: " + ", ".join(problems))
        return res


class SceneScript(_Strict):
    """A whole scene: title, global prompt, shots (at least one) and settings.

    Shot indices ``i`` of the methods below are 0-based; ``Shot.history`` numbers are 1-based.
    Constructing one directly runs every check too (raising pydantic's ``ValidationError``);
    :func:`parse_script` reports the same checks as a :class:`ScriptError`.
    """

    title: str = ""
    global_: GlobalPrompt = Field(alias="global")
    shots: list[Shot]
    settings: Settings = Field(default_factory=Settings)

    @field_validator("shots")
    @classmethod
    def _some_shots(cls, shots: list[Shot]) -> list[Shot]:
        if not shots:
            raise ValueError("the script has no shots; add at least one, e.g. `- prompt: Wide shot of Character 1.`")
        return shots

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> SceneScript:
        if not (info.context or {}).get(_CTX_PARSING):
            issues = _cross_issues(self.model_dump(by_alias=True))
            if issues:
                raise ValueError("; ".join(str(i) for i in issues))
        return self

    # -- derived text and numbers ------------------------------------------------------------

    @property
    def n_shots(self) -> int:
        """Number of shots."""
        return len(self.shots)

    @property
    def resolution_hw(self) -> tuple[int, int]:
        """``(height, width)`` of every frame (``settings.resolution`` is ``[width, height]``)."""
        width, height = self.settings.resolution
        return height, width

    def _shot(self, i: int) -> Shot:
        k = i.__index__() if hasattr(i, "__index__") and not isinstance(i, bool) else -1  # numpy ints too
        if not 0 <= k < len(self.shots):
            raise IndexError(f"shot index {i!r} is out of range: this script has shots 0..{len(self.shots) - 1}")
        return self.shots[k]

    def global_prompt_text(self) -> str:
        """The LCT global prompt, e.g. ``Character 1: a red circle. Setting: a slate room. Story: ...``.

        Characters are listed by id; a part that already ends in ``.``, ``!`` or ``?`` gets no
        second period; an empty story is left out.
        """
        chars = sorted(self.global_.characters, key=lambda c: c.id)
        parts = [f"Character {c.id}: {c.description.strip()}" for c in chars]
        parts.append(f"Setting: {self.global_.setting.strip()}")
        if self.global_.story.strip():
            parts.append(f"Story: {self.global_.story.strip()}")
        return " ".join(_sentence(p) for p in parts)

    def shot_prompt_text(self, i: int, *, expand_characters: bool = False) -> str:
        """Prompt of shot ``i`` as the models see it: ``[SHOT CUT] <prompt>`` when ``cut`` is true; with
        ``expand_characters`` each ``Character N`` it names is followed by its description from ``global.characters``
        (see :func:`expand_character_refs`)."""
        shot = self._shot(i)
        text = f"{SHOT_CUT} {shot.prompt.strip()}" if shot.cut else shot.prompt.strip()
        if expand_characters:
            text = expand_character_refs(text, {c.id: c.description.strip() for c in self.global_.characters})
        return text

    def shot_frames(self, i: int) -> int:
        """Frames of shot ``i``: ``shot.frames`` if given, else ``settings.frames``."""
        shot = self._shot(i)
        return shot.frames if shot.frames is not None else self.settings.frames

    def characters_in_shot(self, i: int) -> list[int]:
        """Ids named as ``Character N`` in shot ``i``'s prompt, in order of first mention, no repeats."""
        return list(dict.fromkeys(_char_refs(self._shot(i).prompt)))


def character_descriptions(global_prompt: str) -> dict[int, str]:
    """``{N: description}`` of the ``Character N: description.`` entries of an LCT-form global prompt (the form
    :meth:`SceneScript.global_prompt_text` and StoryWorld write); ``{}`` for a prompt without such entries."""
    return dict(_parse_characters(global_prompt))


@functools.lru_cache(maxsize=8192)
def _parse_characters(global_prompt: str) -> tuple[tuple[int, str], ...]:
    # the trainer asks for every shot of every window: parse each scene's global prompt once
    return tuple((int(n), d.strip()) for n, d in _CHAR_DEF.findall(global_prompt))


def expand_character_refs(prompt: str, descriptions: Mapping[int, str]) -> str:
    """``prompt`` with every ``Character N`` that ``descriptions`` defines followed by ``(description)``:
    ``"Close-up of Character 2 moving left."`` → ``"Close-up of Character 2 (an orange star) moving left."``.

    Repeating each named character's description in the shot prompt (as multi-shot systems that keep a character
    bank do) makes identity a local text condition: the model no longer has to look the reference up in the
    global prompt. Details no prompt states (StoryWorld's patterns) still come only from the other shots.
    Mentions already followed by ``(`` and ids without a description are left as they are.
    """
    if not descriptions:
        return prompt

    def sub(m: re.Match[str]) -> str:
        desc = descriptions.get(int(m.group(2)))
        return f"{m.group(1)} ({desc})" if desc else m.group(1)

    return _CHAR_MENTION.sub(sub, prompt)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text[-1] in ".!?" else text + "."


def _char_refs(text: str) -> list[int]:
    return [int(m) for m in _CHAR_REF.findall(text)]


# --- Cross-field checks. They run on plain data and skip anything whose type is wrong (pydantic
# reports that), so they can run on raw input too and every problem is found in one pass.


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _cross_issues(data: Mapping[Any, Any]) -> list[ScriptIssue]:
    issues: list[ScriptIssue] = []

    def add(loc: str, message: str) -> None:
        issues.append(ScriptIssue(loc, message))

    glob = data.get("global", data.get("global_"))
    glob = glob if isinstance(glob, Mapping) else {}
    chars = glob.get("characters", [])
    defined: set[int] | None = None
    if isinstance(chars, list) and all(isinstance(c, Mapping) and _is_int(c.get("id")) for c in chars):
        defined = {c["id"] for c in chars}
    have = ", ".join(f"Character {n}" for n in sorted(defined)) if defined else "none"

    def check_refs(text: Any, loc: str) -> None:
        if defined is None or not isinstance(text, str):
            return
        for n in dict.fromkeys(_char_refs(text)):
            if n not in defined:
                add(loc, f"names Character {n}, which global.characters does not define (defined: {have}); "
                         f"add `- {{id: {n}, description: ...}}` to global.characters or name a defined character")

    check_refs(glob.get("story"), "global.story")
    settings = data.get("settings")
    default_frames = settings.get("frames") if isinstance(settings, Mapping) else None
    default_frames = default_frames if _is_int(default_frames) and default_frames >= 1 else 16
    shots = data.get("shots")
    if not isinstance(shots, list):
        return issues
    for i, shot in enumerate(shots):
        if not isinstance(shot, Mapping):
            continue
        at = f"shots[{i}]"
        prompt = shot.get("prompt")
        check_refs(prompt, f"{at}.prompt")
        if isinstance(prompt, str) and SHOT_CUT.lower() in prompt.lower():
            add(f"{at}.prompt", f"contains '{SHOT_CUT}', which storyreel adds itself; remove it and use `cut: true` "
                                "(a new shot, the default) or `cut: false` (continue the previous shot)")
        if i == 0 and shot.get("cut") is False:
            add(f"{at}.cut", "the first shot cannot continue a previous shot (`cut: false`); remove `cut` or set "
                             "`cut: true`")
        history = shot.get("history")
        if isinstance(history, list):
            seen: set[int] = set()
            for j, h in enumerate(history):
                if not _is_int(h):
                    continue
                hloc = f"{at}.history[{j}]"
                if i == 0:
                    add(hloc, "the first shot has no earlier shots to condition on; remove `history` from shots[0]")
                elif not 1 <= h <= i:
                    why = "shot numbers start at 1" if h < 1 else f"shot {h} is not earlier than this one (shot {i + 1})"
                    add(hloc, f"{why}; history lists 1-based numbers of EARLIER shots, allowed here: 1..{i}")
                elif h in seen:
                    add(hloc, f"shot {h} is listed twice; list each earlier shot once")
                seen.add(h)
        frames = shot.get("frames")
        n_frames = frames if _is_int(frames) and frames >= 1 else default_frames
        layout = shot.get("layout")
        if isinstance(layout, list):
            for j, box in enumerate(layout):
                if not isinstance(box, Mapping):
                    continue
                check_refs(box.get("label"), f"{at}.layout[{j}].label")
                f = box.get("frame")
                if _is_int(f) and f >= n_frames:
                    add(f"{at}.layout[{j}].frame", f"frame {f} is past the end of this shot ({n_frames} frames: "
                        f"0..{n_frames - 1}); use a frame inside the shot or leave `frame` out to mean every frame")
    return issues


# --- pydantic errors -> ScriptIssue with friendly text

_MODEL_AT: dict[tuple[Any, ...], type[BaseModel]] = {
    (): SceneScript,
    ("global",): GlobalPrompt,
    ("global", "characters", int): Character,
    ("shots", int): Shot,
    ("shots", int, "layout", int): LayoutBox,
    ("settings",): Settings,
}

_HELP = {  # per field name: what is allowed, appended to every message about that field
    "title": "any text, e.g. `title: The meeting`",
    "global": "a mapping with `characters`, `setting` and an optional `story`",
    "shots": "a list of shots, each at least `- prompt: Wide shot of Character 1 moving right.`",
    "settings": "a mapping with any of: seed, steps, guidance, mode, resolution, fps, frames",
    "characters": "a list like `- {id: 1, description: a red circle}`",
    "id": "a whole number >= 1; prompts call it `Character N`", "description": "text such as `a red circle`",
    "setting": "text such as `a slate room`", "story": "text such as `Character 1 meets Character 2.`",
    "prompt": "text such as `Wide shot of Character 1 moving right.`", "frames": "a whole number >= 1, e.g. 16",
    "cut": "true (a new shot, [SHOT CUT]) or false (continue the previous shot as one long take)",
    "keyframe": "a path to an image file, relative to the script's folder",
    "layout": "a list of boxes like `- {label: Character 1, box: [0.1, 0.2, 0.5, 0.8]}`",
    "label": "text naming the object, e.g. `Character 1` or `red star`",
    "box": "[x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1",
    "frame": "a frame index >= 0 inside the shot, or leave it out for every frame",
    "history": "a list of 1-based numbers of EARLIER shots, e.g. [1, 2]",
    "seed": f"a whole number from 0 to {MAX_SEED}", "steps": "a whole number >= 1, e.g. 24",
    "guidance": "a number >= 0, e.g. 3.0", "mode": "one of " + ", ".join(MODES),
    "resolution": f"[width, height], two multiples of 8 from 8 to {MAX_SIDE}, e.g. [64, 64]",
    "fps": "a whole number from 1 to 120, e.g. 8",
}
_MAPPING = "a mapping of `key: value` pairs"
_EXPECT = {
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "a whole number"),
    **dict.fromkeys(("float_type", "float_parsing"), "a number"), "finite_number": "a finite number (not NaN/inf)",
    **dict.fromkeys(("bool_type", "bool_parsing"), "true or false"), "string_type": "text",
    **dict.fromkeys(("list_type", "tuple_type", "set_type"), "a list"), "path_type": "a file path (text)",
    **dict.fromkeys(("dict_type", "model_type", "model_attributes_type"), _MAPPING),
}


def _loc_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if _is_int(part) else (f".{part}" if out else str(part))
    return out or "<root>"


def _describe(value: Any) -> str:
    kind = {str: "text", bool: "a boolean", int: "a whole number", float: "a number", list: "a list",
            dict: "a mapping", type(None): "nothing (null)"}.get(type(value), type(value).__name__)
    text = {True: "true", False: "false"}[value] if isinstance(value, bool) else repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return kind if value is None else f"{text} ({kind})"


def _field_name(loc: tuple[Any, ...]) -> str | None:
    names = [p for p in loc if isinstance(p, str)]
    return names[-1] if names else None


def _help_for(loc: tuple[Any, ...], field: str | None) -> str:
    if field is None or field not in _HELP:
        return ""
    extra = " (or leave it out to use settings.frames)" if field == "frames" and loc[:1] == ("shots",) else ""
    return f"; allowed: {_HELP[field]}{extra}"


def _model_for(parent: tuple[Any, ...]) -> type[BaseModel] | None:
    return _MODEL_AT.get(tuple(int if _is_int(p) else p for p in parent))


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


_BOUNDS = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
           "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}


def _friendly(err: Mapping[str, Any]) -> ScriptIssue:
    loc = tuple(err.get("loc", ()))
    kind, value, ctx = err.get("type", ""), err.get("input"), err.get("ctx") or {}
    field = _field_name(loc)
    where, help_ = _loc_str(loc), _help_for(loc, field)
    if kind == "extra_forbidden":
        model = _model_for(loc[:-1])
        allowed = _allowed_keys(model) if model else []
        key = loc[-1]
        near = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        plain = isinstance(key, str) and re.fullmatch(r"[A-Za-z_][\w-]*", key)
        part = (f".{key}" if loc[:-1] else key) if plain else f"[{key!r}]"
        return ScriptIssue((_loc_str(loc[:-1]) if loc[:-1] else "") + part,
                           f"unknown key {key!r}{hint}; allowed keys here: {', '.join(allowed)}")
    if kind == "invalid_key":
        return ScriptIssue(_loc_str(loc[:-1]), f"key {loc[-1]!r} is not text; keys must be field names (text)")
    if kind == "missing" and loc and _is_int(loc[-1]) and field in ("box", "resolution"):
        need = "4 numbers" if field == "box" else "2 whole numbers"
        return ScriptIssue(_loc_str(loc[:-1]), f"needs exactly {need}, got fewer{help_}")
    if kind in _EXPECT:
        expected = _EXPECT[kind]
        if kind == "tuple_type" and field in ("box", "resolution"):
            expected = "a list of 4 numbers" if field == "box" else "a list of 2 whole numbers"
        msg = f"expected {expected}, got {_describe(value)}"
        if isinstance(value, str) and expected.startswith(("a whole", "a number", "true")):
            msg += "; write it without quotes"
        elif expected == "text" and not isinstance(value, (list, dict)):
            msg += "; put the text in quotes if it looks like a number or true/false"
        return ScriptIssue(where, msg + help_)
    if kind in _BOUNDS:
        word, key = _BOUNDS[kind]
        return ScriptIssue(where, f"must be {word} {ctx.get(key)}, got {_describe(value)}{help_}")
    if kind == "value_error":  # raised by our own validators: the text already says what is allowed
        reason = str(ctx.get("error", err.get("msg", "")))
        return ScriptIssue(where, reason + ("" if field in ("keyframe", "characters", "shots") else help_))
    message = {
        "missing": f"required field '{field}' is missing; add `{field}: ...`",
        "recursion_loop": "the document refers to itself (a YAML alias loop); remove the loop",
        "string_too_short": "must not be empty",
        "too_short": f"wrong number of items: got {ctx.get('actual_length')}",
        "too_long": f"wrong number of items: got {ctx.get('actual_length')}",
        "literal_error": f"{_describe(value)} is not allowed",
    }.get(kind, str(err.get("msg", "invalid value")))
    return ScriptIssue(where, message + help_)


_ORDER: dict[str, int] = {}  # issues are sorted into document order, field by field
for _model in (SceneScript, GlobalPrompt, Character, Shot, LayoutBox, Settings):
    for _name in _allowed_keys(_model):
        _ORDER.setdefault(_name, len(_ORDER))


def _sort_key(issue: ScriptIssue) -> list[tuple[int, int]]:
    toks = re.findall(r"[^.\[\]]+", issue.loc)
    return [(0, int(t)) if t.isascii() and t.isdigit() else (1, _ORDER.get(t, len(_ORDER))) for t in toks]


# --- Public entry points


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def parse_script(data: Any, *, base_dir: str | os.PathLike[str] | None = None) -> SceneScript:
    """Validate plain data (a mapping as loaded from YAML/JSON) into a :class:`SceneScript`.

    Relative keyframe paths are resolved against ``base_dir`` (the current folder when None) and
    must exist. Raises :class:`ScriptError` listing every problem; never any other exception
    for bad input.
    """
    if not isinstance(data, Mapping):
        what = "empty" if data is None else f"{_describe(data)}"
        raise ScriptError(ScriptIssue("<root>", f"the top level of a script must be a mapping with `global:` and "
                                                f"`shots:`, got {what}; see examples/meeting-2shots.yaml"))
    context = {_CTX_PARSING: True, _CTX_BASE_DIR: None if base_dir is None else Path(base_dir)}
    try:
        script = SceneScript.model_validate(data, context=context)
    except ValidationError as exc:
        issues = [_friendly(e) for e in exc.errors(include_url=False)]
        issues += _cross_issues(data)
    else:
        issues = _cross_issues(script.model_dump(by_alias=True))
    if issues:
        issues = list(dict.fromkeys(ScriptIssue(_one_line(i.loc), _one_line(i.message)) for i in issues))
        raise ScriptError(sorted(issues, key=_sort_key))
    return script


class _YamlLoader(yaml.SafeLoader):
    """Safe loader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], Any] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                k = (key_node.tag, key_node.value)
                if k in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r} (first used on line {seen[k].line + 1}); "
                        "each key may appear once per mapping", key_node.start_mark,
                    )
                seen[k] = key_node.start_mark
        return super().construct_mapping(node, deep)


class _DuplicateKey(Exception):
    pass


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _read_text(text: str, fmt: str, source: str) -> Any:
    def issue(line: int | None, col: int | None, message: str) -> ScriptError:
        where = source if line is None else f"{source}:{line}:{col}"
        at = "" if line is None else f" at line {line}, column {col}"
        return ScriptError(ScriptIssue(where, " ".join(f"{message}{at}".split())))

    if fmt == "json":
        try:
            return json.loads(text, object_pairs_hook=_json_pairs)
        except json.JSONDecodeError as exc:
            raise issue(exc.lineno, exc.colno, f"JSON syntax error: {exc.msg}; check commas, quotes and brackets"
                        ) from None
        except _DuplicateKey as exc:
            raise issue(None, None, f"duplicate key {exc.args[0]!r} in a JSON object; each key may appear once"
                        ) from None
        except RecursionError:
            raise issue(None, None, "JSON is nested too deeply; a script is only a few levels deep") from None
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - _YamlLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        hint = "" if "duplicate key" in problem else "; check indentation, colons, and quote text with ': ' or ' #'"
        raise issue(mark.line + 1 if mark else None, mark.column + 1 if mark else None,
                    f"YAML syntax error: {problem}{hint}") from None
    except RecursionError:
        raise issue(None, None, "YAML is nested too deeply; a script is only a few levels deep") from None
    except yaml.YAMLError as exc:
        raise issue(None, None, f"YAML error: {exc}; save the script as plain UTF-8 text") from None
    except Exception as exc:  # PyYAML's constructors raise plain ValueError/TypeError/... on bad tagged values
        raise issue(None, None, f"YAML value could not be read ({type(exc).__name__}: {exc}); "
                                "remove the explicit `!!tag` or fix the value") from None


def parse_script_text(text: str, *, fmt: Literal["yaml", "json"] = "yaml",
                      base_dir: str | os.PathLike[str] | None = None, source: str = "<text>") -> SceneScript:
    """Parse YAML or JSON text (e.g. from an editor) into a :class:`SceneScript`; see :func:`parse_script`."""
    if fmt not in ("yaml", "json"):
        raise ValueError(f"fmt must be 'yaml' or 'json', got {fmt!r}")
    return parse_script(_read_text(text, fmt, source), base_dir=base_dir)


def _format_of(path: Path) -> str:
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ScriptError(ScriptIssue(str(path), f"unsupported file type {path.suffix or '(no extension)'!r}; "
                                                 "scene scripts are .yaml, .yml or .json files"))
    return fmt


def load_script(path: str | os.PathLike[str]) -> SceneScript:
    """Read a ``.yaml``/``.yml``/``.json`` scene script; keyframe paths are relative to its folder.

    Raises :class:`ScriptError` (file missing or unreadable, syntax error with line number, or
    every schema problem).
    """
    path = Path(path)
    fmt = _format_of(path)
    shown = os.path.abspath(path)

    def fail(message: str) -> ScriptError:
        return ScriptError(ScriptIssue(str(path), message))

    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise fail(f"file not found: {shown}; check the path") from None
    except IsADirectoryError:
        raise fail(f"{shown} is a folder; give the script file inside it") from None
    except OSError as exc:
        raise fail(f"cannot read {shown}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (bad byte at position {exc.start}); save the file as UTF-8") from None
    return parse_script(_read_text(text, fmt, str(path)), base_dir=os.path.abspath(path.parent))


def _to_data(script: SceneScript, base_dir: Path) -> dict[str, Any]:
    data = script.model_dump(by_alias=True, mode="json", exclude_none=True)
    for shot, model in zip(data["shots"], script.shots):
        if shot.get("cut") is True:
            del shot["cut"]
        if model.keyframe is not None:
            absolute = Path(os.path.abspath(model.keyframe))
            try:
                shot["keyframe"] = absolute.relative_to(base_dir).as_posix()
            except ValueError:
                shot["keyframe"] = str(absolute)
    return data


def dump_script(script: SceneScript, path: str | os.PathLike[str]) -> None:
    """Write ``script`` as YAML or JSON (by extension) atomically, using the key ``global``.

    Keyframes inside the destination folder are written relative to it, others absolute, so that
    ``load_script(path)`` gives back an equal script.
    """
    if not isinstance(script, SceneScript):
        raise TypeError(f"dump_script needs a SceneScript, got {type(script).__name__}")
    path = Path(path)
    fmt = _format_of(path)
    data = _to_data(script, Path(os.path.abspath(path.parent)))
    if fmt == "json":
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    else:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)
