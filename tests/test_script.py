"""Scene-script schema: loading, dumping, derived prompt text and validation messages."""

from __future__ import annotations

import copy
import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from storyreel.script import (
    SceneScript,
    ScriptError,
    ScriptIssue,
    Settings,
    character_descriptions,
    dump_script,
    expand_character_refs,
    load_script,
    parse_script,
    parse_script_text,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def valid() -> dict[str, Any]:
    return {
        "title": "The meeting",
        "global": {
            "characters": [{"id": 1, "description": "a red circle"}, {"id": 2, "description": "a blue square"}],
            "setting": "a slate room",
            "story": "Character 1 meets Character 2.",
        },
        "shots": [
            {"prompt": "Wide shot of Character 1 moving right."},
            {"prompt": "Close-up of Character 2.", "frames": 12},
            {"prompt": "Wide shot of Character 1 moving right.", "cut": False},
        ],
        "settings": {"seed": 7, "resolution": [64, 64], "fps": 8, "frames": 16},
    }


def issues_of(data: Any, **kw: Any) -> list[ScriptIssue]:
    with pytest.raises(ScriptError) as info:
        parse_script(data, **kw)
    return info.value.errors


def the_issue(issues: list[ScriptIssue], loc: str) -> ScriptIssue:
    found = [i for i in issues if i.loc == loc]
    assert found, f"no issue at {loc!r}; got {[str(i) for i in issues]}"
    return found[0]


# ---------------------------------------------------------------------------------------------
# Schema, derived text, round trips


def test_parse_valid_and_derived_text() -> None:
    s = parse_script(valid())
    assert isinstance(s, SceneScript) and s.n_shots == 3
    assert s.global_prompt_text() == (
        "Character 1: a red circle. Character 2: a blue square. Setting: a slate room. "
        "Story: Character 1 meets Character 2."
    )
    assert s.shot_prompt_text(0) == "[SHOT CUT] Wide shot of Character 1 moving right."
    assert s.shot_prompt_text(2) == "Wide shot of Character 1 moving right."
    assert [s.shot_frames(i) for i in range(3)] == [16, 12, 16]
    assert s.characters_in_shot(0) == [1] and s.characters_in_shot(1) == [2]
    with pytest.raises(IndexError, match="out of range"):
        s.shot_frames(3)


def test_global_prompt_text_punctuation_order_and_empty_story() -> None:
    d = valid()
    d["global"]["characters"] = [{"id": 2, "description": "a blue square."}, {"id": 1, "description": "a red circle"}]
    d["global"]["setting"] = "a slate room."
    d["global"]["story"] = ""
    assert parse_script(d).global_prompt_text() == (
        "Character 1: a red circle. Character 2: a blue square. Setting: a slate room."
    )


def test_characters_in_shot_order_and_resolution_hw() -> None:
    d = valid()
    d["shots"][0]["prompt"] = "Wide shot of Character 2 jumping and Character 1 moving left near Character 2."
    d["settings"]["resolution"] = [96, 64]
    s = parse_script(d)
    assert s.characters_in_shot(0) == [2, 1]
    assert s.resolution_hw == (64, 96)


def test_character_expansion() -> None:
    d = valid()
    d["shots"][0]["prompt"] = "Wide shot of Character 2 jumping and Character 1 moving left near Character 2."
    s = parse_script(d)
    descs = {c.id: c.description for c in s.global_.characters}
    expanded = s.shot_prompt_text(0, expand_characters=True)
    for n, desc in descs.items():
        assert expanded.count(f"Character {n} ({desc})") == s.shot_prompt_text(0).count(f"Character {n}")
    assert s.shot_prompt_text(0) == "[SHOT CUT] " + d["shots"][0]["prompt"]  # off by default
    # the descriptions parse back out of the global prompt the models see (how training expands StoryWorld data)
    assert character_descriptions(s.global_prompt_text()) == descs
    assert expand_character_refs(s.shot_prompt_text(0), character_descriptions(s.global_prompt_text())) == expanded
    # idempotent; unknown ids and prompts without characters are left alone
    assert expand_character_refs(expanded, descs) == expanded
    assert expand_character_refs("Character 7 waits. A wide shot.", descs) == "Character 7 waits. A wide shot."
    assert character_descriptions("A dog runs.") == {}


def _rich_script(tmp_path: Path) -> SceneScript:
    (tmp_path / "key.png").write_bytes(b"\x89PNG fake")
    d = valid()
    d["shots"][1].update(keyframe="key.png", history=[1],
                         layout=[{"label": "Character 2", "box": [0.1, 0.2, 0.6, 0.9], "frame": 3}])
    d["settings"].update(steps=10, guidance=4.5, mode="causal")
    return parse_script(d, base_dir=tmp_path)


@pytest.mark.parametrize("name", ["out.yaml", "out.yml", "out.json"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    s = _rich_script(tmp_path)
    assert s.shots[1].keyframe == tmp_path / "key.png"
    dump_script(s, tmp_path / name)
    text = (tmp_path / name).read_text()
    raw = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    assert "global" in raw and "global_" not in raw
    assert raw["shots"][1]["keyframe"] == "key.png"  # relative to the script's folder
    assert load_script(tmp_path / name) == s
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_dump_elsewhere_keeps_keyframe_absolute(tmp_path: Path) -> None:
    s = _rich_script(tmp_path)
    dump_script(s, tmp_path / "sub" / "s.yaml")
    assert load_script(tmp_path / "sub" / "s.yaml") == s


def test_dump_rejects_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match=r"\.yaml, \.yml or \.json"):
        dump_script(parse_script(valid()), tmp_path / "s.txt")
    assert not (tmp_path / "s.txt").exists()


@pytest.mark.parametrize("name", ["meeting-2shots.yaml", "meeting-4shots.yaml", "chase-8shots.yaml"])
def test_examples_load_and_use_storyworld_vocabulary(name: str) -> None:
    s = load_script(EXAMPLES / name)
    grammar = re.compile(
        r"^(Wide shot|Medium shot|Close-up) of Character \d+( (?P<ev>entering|exiting|moving (left|right|up|down)|jumping"
        r"|growing|shrinking|standing still))?( and Character \d+ (entering|exiting|moving (left|right|up|down)|jumping"
        r"|growing|shrinking|standing still))?\.$"
    )
    colours = "red|green|blue|yellow|magenta|cyan|orange|purple|pink|white"
    shapes = "circle|square|triangle|diamond|star|ring|cross"
    for shot in s.shots:
        assert grammar.match(shot.prompt), shot.prompt
    for c in s.global_.characters:
        assert re.fullmatch(rf"a ({colours}) ({shapes})", c.description)
    assert len({c.description.split()[1] for c in s.global_.characters}) == len(s.global_.characters)
    assert s.global_.setting in {"a slate room", "a night sky", "a forest floor", "a sand dunes", "a stone hall",
                                 "a snow field"}
    assert (s.settings.resolution, s.settings.fps, s.settings.frames) == ((64, 64), 8, 16)
    assert (EXAMPLES / name).read_text().startswith("#")
    expected = {"meeting-2shots.yaml": (2, 2), "meeting-4shots.yaml": (4, 2), "chase-8shots.yaml": (8, 3)}[name]
    assert (s.n_shots, len(s.global_.characters)) == expected
    if name == "chase-8shots.yaml":
        assert any(not shot.cut for shot in s.shots[1:])


# ---------------------------------------------------------------------------------------------
# One case per validation error: (mutation, loc, fragments that must appear in the message)


def _set(path: str, value: Any):
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
        node: Any = d
        for p in parents:
            node = node[p]
        node[last] = value
    return mutate


def _del(path: str):
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
        node: Any = d
        for p in parents:
            node = node[p]
        del node[last]
    return mutate


CASES = {
    "undefined character in prompt": (_set("shots/1/prompt", "Close-up of Character 3."), "shots[1].prompt",
                                      ["Character 3", "Character 1, Character 2", "global.characters"]),
    "undefined character in story": (_set("global/story", "Character 3 waits."), "global.story",
                                     ["Character 3", "id: 3"]),
    "undefined character in layout label": (
        _set("shots/0/layout", [{"label": "Character 9", "box": [0, 0, 1, 1]}]), "shots[0].layout[0].label",
        ["Character 9"]),
    "empty shot list": (_set("shots", []), "shots", ["no shots", "prompt:"]),
    "zero shot frames": (_set("shots/1/frames", 0), "shots[1].frames", ["at least 1", "settings.frames"]),
    "negative settings frames": (_set("settings/frames", -4), "settings.frames", ["at least 1", "-4"]),
    "unknown key in shot": (_set("shots/0/frame", 3), "shots[0].frame",
                            ["unknown key 'frame'", "did you mean 'frames'", "prompt, frames, cut"]),
    "unknown top-level key": (_set("scenes", []), "scenes", ["unknown key", "title, global, shots, settings"]),
    "unknown settings key": (_set("settings/speed", 2), "settings.speed", ["unknown key", "fps"]),
    "duplicate character ids": (_set("global/characters/1/id", 1), "global.characters",
                                ["duplicate", "id 1", "own number"]),
    "missing prompt": (_del("shots/0/prompt"), "shots[0].prompt", ["missing", "prompt: ...", "Wide shot of"]),
    "missing global": (_del("global"), "global", ["missing", "global: ...", "`setting`"]),
    "missing setting": (_del("global/setting"), "global.setting", ["missing", "a slate room"]),
    "frames given as text": (_set("shots/0/frames", "ten"), "shots[0].frames", ["whole number", "'ten'"]),
    "cut given as text": (_set("shots/1/cut", "no"), "shots[1].cut", ["true or false"]),
    "prompt given as number": (_set("shots/0/prompt", 5), "shots[0].prompt", ["expected text", "quotes"]),
    "shots not a list": (_set("shots", {"prompt": "x"}), "shots", ["expected a list"]),
    "blank prompt": (_set("shots/0/prompt", "   "), "shots[0].prompt", ["empty"]),
    "box outside unit square": (_set("shots/0/layout", [{"label": "Character 1", "box": [0.1, 0.2, 1.5, 0.8]}]),
                                "shots[0].layout[0].box", ["x1=1.5", "outside [0, 1]", "0 <= x0 < x1 <= 1"]),
    "box x0 >= x1": (_set("shots/0/layout", [{"label": "Character 1", "box": [0.6, 0.2, 0.4, 0.8]}]),
                     "shots[0].layout[0].box", ["x0=0.6 is not left of x1=0.4"]),
    "box y0 >= y1": (_set("shots/0/layout", [{"label": "Character 1", "box": [0.1, 0.5, 0.4, 0.5]}]),
                     "shots[0].layout[0].box", ["y0=0.5 is not above y1=0.5"]),
    "box wrong length": (_set("shots/0/layout", [{"label": "Character 1", "box": [0.1, 0.5]}]),
                         "shots[0].layout[0].box", ["4 numbers"]),
    "layout frame past shot end": (_set("shots/1/layout", [{"label": "Character 2", "box": [0, 0, 1, 1], "frame": 12}]),
                                   "shots[1].layout[0].frame", ["past the end", "0..11"]),
    "history not earlier": (_set("shots/1/history", [2]), "shots[1].history[0]",
                            ["shot 2 is not earlier", "EARLIER", "1..1"]),
    "history zero": (_set("shots/2/history", [0]), "shots[2].history[0]", ["start at 1", "1..2"]),
    "history on first shot": (_set("shots/0/history", [1]), "shots[0].history[0]", ["first shot", "remove"]),
    "history duplicate": (_set("shots/2/history", [1, 1]), "shots[2].history[1]", ["listed twice"]),
    "first shot cut false": (_set("shots/0/cut", False), "shots[0].cut", ["first shot", "cut: true"]),
    "shot cut tag in prompt": (_set("shots/0/prompt", "[SHOT CUT] Wide shot of Character 1."), "shots[0].prompt",
                               ["[SHOT CUT]", "cut: false"]),
    "resolution not multiple of 8": (_set("settings/resolution", [65, 64]), "settings.resolution",
                                     ["width 65 is not a multiple of 8", "64 or 72"]),
    "resolution zero": (_set("settings/resolution", [64, 0]), "settings.resolution", ["height 0", "8..4096"]),
    "resolution too large": (_set("settings/resolution", [8192, 64]), "settings.resolution", ["8192", "4096"]),
    "resolution three numbers": (_set("settings/resolution", [64, 64, 64]), "settings.resolution",
                                 ["got 3", "[width, height]"]),
    "fps too high": (_set("settings/fps", 121), "settings.fps", ["at most 120", "1 to 120"]),
    "fps zero": (_set("settings/fps", 0), "settings.fps", ["at least 1", "1 to 120"]),
    "steps zero": (_set("settings/steps", 0), "settings.steps", ["at least 1", "e.g. 24"]),
    "guidance negative": (_set("settings/guidance", -0.5), "settings.guidance", ["at least 0", ">= 0"]),
    "guidance nan": (_set("settings/guidance", float("nan")), "settings.guidance", ["finite"]),
    "bad mode": (_set("settings/mode", "fast"), "settings.mode", ["'fast'", "joint, autoregressive, causal, extend"]),
    "negative seed": (_set("settings/seed", -1), "settings.seed", ["at least 0"]),
    "non-text key": (_set("settings/7", 1), "settings", ["7", "not text"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_error(case: str) -> None:
    mutate, loc, fragments = CASES[case]
    d = valid()
    mutate(d)
    issue = the_issue(issues_of(d), loc)
    for frag in fragments:
        assert frag in issue.message, (frag, str(issue))


def test_missing_keyframe_names_resolved_path(tmp_path: Path) -> None:
    d = valid()
    d["shots"][0]["keyframe"] = "frames/first.png"
    issue = the_issue(issues_of(d, base_dir=tmp_path), "shots[0].keyframe")
    assert str(tmp_path / "frames" / "first.png") in issue.message and "not found" in issue.message
    d["shots"][0]["keyframe"] = "."
    assert "not a non-empty file" in the_issue(issues_of(d, base_dir=tmp_path), "shots[0].keyframe").message


def test_all_problems_collected_in_one_error() -> None:
    d = valid()
    d["shots"][0]["frames"] = "ten"  # a type error ...
    d["shots"][1]["prompt"] = "Close-up of Character 3."  # ... does not hide the cross-field checks
    d["shots"][2]["history"] = [3]
    d["settings"]["fps"] = 500
    with pytest.raises(ScriptError) as info:
        parse_script(d)
    locs = [i.loc for i in info.value.errors]
    assert set(locs) == {"shots[0].frames", "shots[1].prompt", "shots[2].history[0]", "settings.fps"}
    assert str(info.value).splitlines() == [f"{i.loc}: {i.message}" for i in info.value.errors]
    assert isinstance(info.value, ValueError)
    assert pickle.loads(pickle.dumps(info.value)).errors == info.value.errors


def test_direct_construction_checks_cross_fields_too() -> None:
    d = valid()
    d["shots"][0]["cut"] = False
    with pytest.raises(ValidationError, match="first shot"):
        SceneScript.model_validate(d)


def test_numpy_integers_accepted_but_not_text_or_bools() -> None:
    s = Settings(seed=np.int64(3), resolution=(np.int32(96), np.int64(64)), frames=np.int16(4))
    assert (s.seed, s.resolution, s.frames) == (3, (96, 64), 4) and type(s.seed) is int
    for bad in ("3", True, 3.0):
        with pytest.raises(ValidationError):
            Settings(seed=bad)


# ---------------------------------------------------------------------------------------------
# Files and syntax


def test_yaml_syntax_error_has_line_number(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("title: x\nglobal:\n  setting: [a slate room\nshots: []\n")
    with pytest.raises(ScriptError) as info:
        load_script(p)
    (issue,) = info.value.errors
    assert issue.loc.startswith(f"{p}:") and "YAML syntax error" in issue.message
    assert re.search(r"line \d+, column \d+", issue.message) and "indentation" in issue.message


def test_json_syntax_error_has_line_number(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text('{\n  "title": "x",\n  "shots": [,]\n}\n')
    with pytest.raises(ScriptError) as info:
        load_script(p)
    (issue,) = info.value.errors
    assert issue.loc == f"{p}:3:13" and "line 3" in issue.message and "commas" in issue.message


@pytest.mark.parametrize("fmt,text", [("yaml", "title: a\ntitle: b\n"), ("json", '{"title": "a", "title": "b"}')])
def test_duplicate_keys_are_errors(fmt: str, text: str) -> None:
    with pytest.raises(ScriptError, match="duplicate key 'title'"):
        parse_script_text(text, fmt=fmt)


@pytest.mark.parametrize("text,fragment", [("- a\n- b\n", "a list"), ("", "empty"), ("42", "42")])
def test_top_level_not_a_mapping(text: str, fragment: str) -> None:
    with pytest.raises(ScriptError) as info:
        parse_script_text(text)
    (issue,) = info.value.errors
    assert issue.loc == "<root>" and "must be a mapping" in issue.message and fragment in issue.message


def test_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="file not found: .*nope.yaml; check the path"):
        load_script(tmp_path / "nope.yaml")
    (tmp_path / "s.toml").write_text("x = 1")
    with pytest.raises(ScriptError, match=r"unsupported file type '\.toml'.*\.yaml, \.yml or \.json"):
        load_script(tmp_path / "s.toml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ScriptError, match="is a folder"):
        load_script(tmp_path / "dir.yaml")
    (tmp_path / "latin.yaml").write_bytes("title: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ScriptError, match="UTF-8"):
        load_script(tmp_path / "latin.yaml")


def test_bad_yaml_tag_value_is_a_script_error() -> None:
    with pytest.raises(ScriptError, match="could not be read"):
        parse_script_text("title: !!int abc\n")


# ---------------------------------------------------------------------------------------------
# Property tests: bad input of any kind gives a SceneScript or a ScriptError, nothing else

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.text(max_size=8) | st.integers(), c, max_size=4), max_leaves=12)
_keys = st.sampled_from(["title", "global", "characters", "id", "description", "setting", "story", "shots",
                         "prompt", "frames", "cut", "keyframe", "layout", "label", "box", "frame", "history",
                         "settings", "seed", "steps", "guidance", "mode", "resolution", "fps", "bogus"])


def _outcome(fn, *args: Any, **kw: Any) -> None:
    try:
        result = fn(*args, **kw)
    except ScriptError as exc:
        assert exc.errors and all(i.loc and i.message and "\n" not in i.message for i in exc.errors)
    else:
        assert isinstance(result, SceneScript)


@settings(max_examples=200)
@given(st.text(alphabet=st.sampled_from(list("abc :-[]{}\n#'\"!&*,?|>0129.Character shotsglobal")), max_size=80),
       st.sampled_from(["yaml", "json"]))
def test_arbitrary_text_never_crashes(text: str, fmt: str) -> None:
    _outcome(parse_script_text, text, fmt=fmt)


@settings(max_examples=200)
@given(st.dictionaries(_keys | st.text(max_size=6), _values, max_size=5))
def test_arbitrary_dicts_never_crash(data: dict[Any, Any]) -> None:
    _outcome(parse_script, data)


@settings(max_examples=200)
@given(st.data())
def test_mutated_valid_scripts_never_crash(data: st.DataObject) -> None:
    d = copy.deepcopy(valid())
    d["shots"][1]["layout"] = [{"label": "Character 2", "box": [0.1, 0.1, 0.5, 0.5], "frame": 2}]
    d["shots"][2]["history"] = [1]
    for _ in range(data.draw(st.integers(1, 3))):
        node: Any = d
        while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(node, key=str) if isinstance(node, dict) else range(len(node))))
            if not isinstance(node[key], (dict, list)):
                break
            node = node[key]
        if isinstance(node, dict):
            action = data.draw(st.sampled_from(["set", "delete", "add"]))
            if action == "add" or not node:
                node[data.draw(_keys)] = data.draw(_values)
            else:
                key = data.draw(st.sampled_from(sorted(node, key=str)))
                if action == "delete":
                    del node[key]
                else:
                    node[key] = data.draw(_values)
        elif isinstance(node, list):
            if node and data.draw(st.booleans()):
                node[data.draw(st.integers(0, len(node) - 1))] = data.draw(_values)
            else:
                node.append(data.draw(_values))
    _outcome(parse_script, d)
    _outcome(parse_script_text, yaml.safe_dump(d), fmt="yaml")
