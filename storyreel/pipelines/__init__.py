"""Generation pipelines. ``ScenePipeline`` (``pipelines/scene.py``) generates multi-shot scenes from a script in
the joint, autoregressive, causal (KV-cached) and extend modes; see ``docs/generation.md``."""

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
    shot_seed,
)

__all__ = [
    "DEFAULT_PIPELINE_DIR",
    "GenerationError",
    "GenerationEvent",
    "GenerationPlan",
    "PipelineDefaults",
    "ScenePipeline",
    "SceneResult",
    "generate_to_dir",
    "resolve_device",
    "shot_seed",
]
