"""Backbones. ``MultiShotMMDiT`` is the shared multi-shot diffusion transformer (see ``models/mmdit.py``)."""

from storyreel.models.mmdit import MODELS, MMDiTConfig, MultiShotMMDiT, get_model_config

__all__ = ["MODELS", "MMDiTConfig", "MultiShotMMDiT", "get_model_config"]
