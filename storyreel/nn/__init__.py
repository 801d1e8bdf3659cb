"""Shared multi-shot numerics: sequence layouts, interleaved 3D RoPE, mask policies, attention, KV cache.

Every multi-shot mechanism reads one :class:`SequenceLayout` (design.md, Principle 1) and calls one
attention entry point, :func:`attention` with a plan from :func:`plan_attention` (Principle 3).
"""

from storyreel.nn.attention import BACKENDS, AttentionPlan, attention, clear_plan_cache, plan_attention
from storyreel.nn.kvcache import KVCache, KVCachePool
from storyreel.nn.layout import Modality, Segment, SequenceLayout
from storyreel.nn.masks import (
    POLICY_NAMES,
    MaskPolicy,
    TokenMeta,
    dense_mask,
    get_policy,
    layer_policies,
    segment_mask,
)
from storyreel.nn.rope import apply_rope, rope_axes_dims, rope_cos_sin

__all__ = [
    "BACKENDS",
    "POLICY_NAMES",
    "AttentionPlan",
    "KVCache",
    "KVCachePool",
    "MaskPolicy",
    "Modality",
    "Segment",
    "SequenceLayout",
    "TokenMeta",
    "apply_rope",
    "attention",
    "clear_plan_cache",
    "dense_mask",
    "get_policy",
    "layer_policies",
    "plan_attention",
    "rope_axes_dims",
    "rope_cos_sin",
    "segment_mask",
]
