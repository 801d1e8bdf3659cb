"""Sampling strategies as pure functions over a ``model_fn`` (design.md Principle 2)."""

from storyreel.sampling.guidance import classifier_free_guidance
from storyreel.sampling.joint import sample_flow

__all__ = ["classifier_free_guidance", "sample_flow"]
