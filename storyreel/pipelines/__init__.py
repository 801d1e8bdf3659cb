"""Generation pipelines. ``ScenePipeline`` (``pipelines/scene.py``) generates multi-shot scenes from a script in
the joint, autoregressive, causal (KV-cached) and extend modes; see ``docs/generation.md``. ``BackbonePipeline``
(``pipelines/backbone.py``) does the same on Wan / CogVideoX weights through diffusers; see ``docs/backbones.md``."""

from storyreel.pipelines.scene import (
    DEFAULT_PIPELINE_DIR,
    GenerationError,
    GenerationEvent,
    GenerationPlan,
    PipelineDefaults,
    ScenePipeline,
    SceneResult,
    generate_to_dir,
    resolve_device,
    resolve_dtype,
    shot_seed,
)
from storyreel.pipelines.backbone import BackboneDefaults, BackbonePipeline, generate_backbone
from storyreel.pipelines.backbone_weights import BackboneFolderError, check_weights_dir

__all__ = [
    "DEFAULT_PIPELINE_DIR",
    "BackboneDefaults",
    "BackboneFolderError",
    "BackbonePipeline",
    "GenerationError",
    "GenerationEvent",
    "GenerationPlan",
    "PipelineDefaults",
    "ScenePipeline",
    "SceneResult",
    "check_weights_dir",
    "generate_backbone",
    "generate_to_dir",
    "resolve_device",
    "resolve_dtype",
    "shot_seed",
]
