"""Adapters that run diffusers' stock production backbones on storyreel's multi-shot layouts.

``WanSceneAdapter`` (``WanTransformer3DModel``) and ``CogVideoXSceneAdapter`` (``CogVideoXTransformer3DModel``) share
``MultiShotMMDiT.forward``'s contract — ``forward(x, t, context, layout, *, policy, backend, kv_cache, cache_write)``
— with each backbone's own timestep convention (``adapter.prediction``: Wan ``"flow"`` with t = σ·1000,
CogVideoX ``"v"`` with DDPM steps 0..999). ``load_backbone(kind, dir_or_config)`` builds one from local weights.
Needs the ``backbones`` extra (diffusers).
"""

try:
    import diffusers  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "storyreel's backbone adapters need diffusers; install the extra: pip install 'storyreel[backbones]'"
    ) from err

from storyreel.models.adapters._common import Restricted, SceneAdapterBase
from storyreel.models.adapters.cogvideox import CogVideoXSceneAdapter
from storyreel.models.adapters.loading import BACKBONES, BackboneWeightsError, find_transformer_dir, load_backbone
from storyreel.models.adapters.wan import WAN_TEXT_LEN, WanSceneAdapter

__all__ = [
    "BACKBONES",
    "WAN_TEXT_LEN",
    "BackboneWeightsError",
    "CogVideoXSceneAdapter",
    "Restricted",
    "SceneAdapterBase",
    "WanSceneAdapter",
    "find_transformer_dir",
    "load_backbone",
]
