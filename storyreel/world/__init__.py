"""StoryWorld: storyreel's procedural multi-shot world (sampler, renderer, captions, scripts).

See ``shared/storyworld.md``. Typical use::

    from storyreel.world import sample_scene, render_scene
    spec = sample_scene(7)
    scene = render_scene(spec)          # scene.shots[i].frames: uint8 [T, H, W, 3]
    spec.global_prompt(), spec.shot_prompt(0), spec.to_metadata()
"""

from storyreel.world.describe import (
    global_prompt,
    parse_description,
    parse_setting,
    parse_shot_prompt,
    render_script,
    scene_from_script,
    scene_to_script,
    shot_prompt,
)
from storyreel.world.render import Box, RenderedScene, RenderedShot, ShotPlan, plan_scene, render_scene
from storyreel.world.sampler import (
    CharacterSpec,
    Decor,
    Dressing,
    Prop,
    SceneSpec,
    ShotSpec,
    SpokenCharacter,
    SpokenShot,
    assemble_scene,
    sample_scene,
)
from storyreel.world.vocab import (
    COLORS,
    EVENTS,
    PATTERNS,
    SETTINGS,
    SHAPES,
    SHOT_TYPES,
    VocabularyError,
    check_settings,
    pattern_shade,
)

__all__ = [
    "COLORS",
    "EVENTS",
    "PATTERNS",
    "SETTINGS",
    "SHAPES",
    "SHOT_TYPES",
    "Box",
    "CharacterSpec",
    "Decor",
    "Dressing",
    "Prop",
    "RenderedScene",
    "RenderedShot",
    "SceneSpec",
    "ShotPlan",
    "ShotSpec",
    "SpokenCharacter",
    "SpokenShot",
    "VocabularyError",
    "assemble_scene",
    "check_settings",
    "global_prompt",
    "parse_description",
    "parse_setting",
    "parse_shot_prompt",
    "pattern_shade",
    "plan_scene",
    "render_scene",
    "render_script",
    "sample_scene",
    "scene_from_script",
    "scene_to_script",
    "shot_prompt",
]
