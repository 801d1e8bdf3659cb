"""StoryWorld captions and scene-script conversion.

Caption format after LCT — Guo et al. 2025, "Long Context Tuning for Video Generation" (global
prompt + per-shot prompts with a shot-cut marker). Captions follow LCT's form: a global prompt ``Character 1: a red circle. Setting: a slate room.
Story: ...`` and per-shot prompts ``[SHOT CUT] Close-up of Character 1 moving right.`` (long-take
segments omit ``[SHOT CUT]``). Patterns, set dressing and props are never mentioned.

:func:`scene_to_script` writes the spoken content of a scene into a :class:`SceneScript`;
:func:`scene_from_script` parses it back (tolerantly) and draws the unspoken details from
``script.settings.seed``, so ``scene_from_script(scene_to_script(spec))`` equals ``spec``.
"""

from __future__ import annotations

import re

from storyreel.script import Character, GlobalPrompt, SceneScript, Settings, Shot
from storyreel.world.render import RenderedScene, render_scene
from storyreel.world.sampler import SceneSpec, SpokenCharacter, SpokenShot, assemble_scene
from storyreel.world.vocab import COLORS, SETTINGS, SHAPES, VocabularyError

__all__ = [
    "SHOT_CUT",
    "global_prompt",
    "parse_description",
    "parse_setting",
    "parse_shot_prompt",
    "render_script",
    "scene_from_script",
    "scene_to_script",
    "shot_prompt",
]

SHOT_CUT = "[SHOT CUT]"
_ARTICLES = {"a", "an", "the"}


def global_prompt(spec: SceneSpec) -> str:
    """``Character 1: a red circle. Character 2: a blue square. Setting: a slate room. Story: ...``"""
    parts = [f"Character {c.index}: {c.description}." for c in spec.characters]
    parts.append(f"Setting: a {spec.setting}.")
    if spec.story:
        story = spec.story.strip()
        parts.append(f"Story: {story if story.endswith('.') else story + '.'}")
    return " ".join(parts)


def shot_prompt(spec: SceneSpec, i: int) -> str:
    """Per-shot prompt of shot ``i`` (0-based): ``[SHOT CUT] Wide shot of Character 1 jumping.``;
    shots continuing a long take (``cut=False``) have no ``[SHOT CUT]`` prefix."""
    shot = spec.shots[i]
    return f"{SHOT_CUT} {shot.caption}" if shot.cut else shot.caption


# ----------------------------------------------------------------------------------------------
# parsing


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower())


def parse_description(text: str, *, field: str = "description") -> tuple[str, str]:
    """``'a red circle'`` -> ``('red', 'circle')`` (case-insensitive, article optional).

    Raises:
        VocabularyError: not exactly one known colour followed by one known shape.
    """
    words = [w for w in _words(text) if w not in _ARTICLES]
    if len(words) == 2 and words[0] in COLORS and words[1] in SHAPES:
        return words[0], words[1]
    raise VocabularyError(
        field,
        text,
        {"colours": list(COLORS), "shapes": list(SHAPES)},
        "Describe each character as 'a <colour> <shape>', e.g. 'a red circle'.",
    )


def parse_setting(text: str, *, field: str = "setting") -> str:
    """``'a Slate Room.'`` -> ``'slate room'``. Raises :class:`VocabularyError` if unknown."""
    words = _words(text)
    if words and words[0] in _ARTICLES:
        words = words[1:]
    name = " ".join(words)
    if name in SETTINGS:
        return name
    raise VocabularyError(
        field, text, {"settings": list(SETTINGS)}, "Use one of the StoryWorld settings, e.g. 'slate room'."
    )


def _shot_type(text: str) -> str:
    if re.search(r"close[\s-]*ups?\b", text):
        return "close-up"
    if re.search(r"\bmedium\b", text):
        return "medium"
    return "wide"


def _event(phrase: str) -> str:
    words = set(_words(phrase))

    def has(*stems: str) -> bool:
        return any(w.startswith(s) for w in words for s in stems)

    if has("enter", "arriv", "appear", "come", "coming"):
        return "enter"
    if has("exit", "leav", "depart", "disappear"):
        return "exit"
    if has("jump", "hop", "leap", "bounc"):
        return "jump"
    if has("grow", "expand", "enlarg"):
        return "grow"
    if has("shrink", "shrunk", "shrank", "contract"):
        return "shrink"
    if has("still", "stay", "stand", "wait", "rest", "idle"):
        return "stay"
    for d in ("left", "right", "up", "down"):
        if d in words:
            return f"move {d}"
    return "stay"


def parse_shot_prompt(prompt: str, *, known: set[int] | None = None, field: str = "prompt") -> tuple[str, dict[int, str]]:
    """Parse a per-shot prompt into ``(shot_type, {character: event})``, subject first.

    Tolerant: case-insensitive, ``[SHOT CUT]`` optional, ``close up``/``close-up``,
    ``moves right``/``moving right``; a missing shot type means wide and an unknown verb means
    ``stay``. Raises :class:`VocabularyError` for a character not in ``known``.
    """
    text = prompt.lower().replace(SHOT_CUT.lower(), " ")
    shot_type = _shot_type(text)
    events: dict[int, str] = {}
    marks = list(re.finditer(r"\bcharacter\s*(\d+)", text))
    for j, mk in enumerate(marks):
        n = int(mk.group(1))
        end = marks[j + 1].start() if j + 1 < len(marks) else len(text)
        if known is not None and n not in known:
            raise VocabularyError(
                field,
                prompt,
                {"characters": [f"Character {k}" for k in sorted(known)]},
                f"Character {n} is not in the global prompt; add it there or use a listed character.",
            )
        if n not in events:
            events[n] = _event(text[mk.end() : end])
    return shot_type, events


# ----------------------------------------------------------------------------------------------
# script conversion


def scene_to_script(spec: SceneSpec) -> SceneScript:
    """The spoken content of ``spec`` as a :class:`SceneScript` (seed, resolution, fps, frames in
    ``settings``); per-shot prompts are stored without the ``[SHOT CUT]`` prefix (``cut`` says it),
    so ``script.global_prompt_text()`` and ``script.shot_prompt_text(i)`` equal the spec's prompts.
    The script schema wants width and height in multiples of 8."""
    return SceneScript(
        title=f"StoryWorld scene {spec.seed}",
        global_=GlobalPrompt(
            characters=[Character(id=c.index, description=c.description) for c in spec.characters],
            setting=f"a {spec.setting}",  # so that script.global_prompt_text() == global_prompt(spec)
            story=spec.story,
        ),
        shots=[Shot(prompt=s.caption, frames=s.frames, cut=s.cut) for s in spec.shots],
        settings=Settings(seed=spec.seed, resolution=spec.resolution, fps=spec.fps, frames=spec.frames),
    )


def scene_from_script(script: SceneScript) -> SceneSpec:
    """Build a :class:`SceneSpec` from a script: colours/shapes/setting/story from the global prompt,
    shot type/characters/events from each prompt, frames/cut/resolution/fps from the script, and
    the unspoken details (patterns, dressing, positions, props) from ``script.settings.seed``.

    Raises:
        VocabularyError: a description, setting or character outside StoryWorld's vocabulary
            (the message names the field, e.g. ``global.characters[1].description``).
    """
    g = script.global_
    characters: list[SpokenCharacter] = []
    used: dict[str, int] = {}
    for j, c in enumerate(g.characters):
        fieldname = f"global.characters[{j}].description"
        color, shape = parse_description(c.description, field=fieldname)
        if color in used:
            free = [k for k in COLORS if k not in used]
            raise VocabularyError(
                fieldname,
                c.description,
                {"colours": free},
                f"Character {used[color]} is already {color}; every character needs its own colour.",
            )
        if any(sc.index == c.id for sc in characters):
            raise VocabularyError(
                f"global.characters[{j}].id",
                c.id,
                {"ids": [str(k) for k in range(1, len(g.characters) + 1)]},
                "Give every character a distinct id.",
            )
        used[color] = c.id
        characters.append(SpokenCharacter(index=c.id, color=color, shape=shape))
    setting = parse_setting(g.setting, field="global.setting")
    known = {c.index for c in characters}
    st = script.settings
    shots = []
    for i, s in enumerate(script.shots):
        shot_type, events = parse_shot_prompt(s.prompt, known=known, field=f"shots[{i}].prompt")
        frames = s.frames if s.frames is not None else st.frames
        shots.append(SpokenShot(shot_type=shot_type, events=events, frames=int(frames), cut=bool(s.cut)))
    if st.seed < 0:
        raise ValueError(f"settings.seed={st.seed} is invalid for StoryWorld; use an integer >= 0")
    return assemble_scene(
        seed=int(st.seed),
        characters=characters,
        setting=setting,
        story=g.story,
        shots=shots,
        resolution=(int(st.resolution[0]), int(st.resolution[1])),
        fps=int(st.fps),
        frames=int(st.frames),
        origin={"function": "storyreel.world.scene_from_script", "script": script.model_dump(mode="json", by_alias=True)},
    )


def render_script(script: SceneScript) -> RenderedScene:
    """Render a scene script directly (:func:`scene_from_script` then :func:`render_scene`)."""
    return render_scene(scene_from_script(script))

