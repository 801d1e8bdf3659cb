"""Depth growth: start a deeper MMDiT from a trained shallower one without changing its function.

The trained blocks are spread evenly over the deeper stack (the first stays first and the last, whose text stream
only provides keys and values, stays last). Every block in between is a copy of the trained block before it with
its residual gates set to zero: adaLN-Zero gates scale the attention and MLP updates of both streams, so a block
with zero gates passes its inputs through unchanged and the grown model computes exactly what the trained one did.
Training then opens the gates (the gate rows of the modulation still get gradients), with the copied attention
and MLP weights as a starting point rather than noise (after progressive stacking, Gong et al. 2019, and the
function-preserving growth of Net2Net, Chen et al. 2016).
"""

from __future__ import annotations

import re

from torch import Tensor

__all__ = ["block_placement", "grow_state"]

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_GATES = (2, 5)  # chunks of a full stream's 6-way modulation (shift1, scale1, gate1, shift2, scale2, gate2)


def block_placement(old_depth: int, new_depth: int) -> list[int]:
    """New index of every old block: evenly spread, first → 0 and last → ``new_depth - 1``."""
    if old_depth < 1 or new_depth < old_depth:
        raise ValueError(f"depth growth needs 1 <= old depth <= new depth, got {old_depth} -> {new_depth}")
    if old_depth == 1:
        return [new_depth - 1]
    return [round(i * (new_depth - 1) / (old_depth - 1)) for i in range(old_depth)]


def _depth(state: dict[str, Tensor]) -> int:
    ids = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
    if not ids:
        raise ValueError("the state dict holds no 'blocks.<i>.' tensors; depth growth needs an MMDiT state")
    return max(ids) + 1


def grow_state(state: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict shaped like ``target`` (the deeper model's) from ``state`` (a shallower model of the same width).

    Non-block tensors are taken as they are. A new block copies the nearest trained block before it that has the
    same tensors (a final, text-pre-only block is never the source of an inner one; tensors with no source keep
    ``target``'s values), and the gate rows of its modulation are zeroed so that it starts as an identity.
    """
    old_depth, new_depth = _depth(state), _depth(target)
    place = block_placement(old_depth, new_depth)
    source_of: dict[int, int] = {new: old for old, new in enumerate(place)}
    names = [{k[len(f"blocks.{o}."):] for k in state if k.startswith(f"blocks.{o}.")} for o in range(old_depth)]
    out = dict(target)
    for key, value in state.items():
        if not _BLOCK.match(key):
            if key not in target or target[key].shape != value.shape:
                raise ValueError(f"{key}: {tuple(value.shape)} in the trained model, "
                                 f"{tuple(target[key].shape) if key in target else 'absent'} in the deeper one")
            out[key] = value.clone()
    for new in range(new_depth):
        prefix = f"blocks.{new}."
        own = {k[len(prefix):] for k in target if k.startswith(prefix)}
        if new in source_of:
            src, fresh = source_of[new], False
        else:  # the nearest trained block before it with the same tensors (an inner block, not the final one)
            before = [o for o in range(old_depth) if place[o] < new and names[o] == own]
            src, fresh = (before[-1] if before else None), True
        for name in own:
            key = prefix + name
            if src is not None and f"blocks.{src}.{name}" in state:
                got = state[f"blocks.{src}.{name}"]
                if got.shape != target[key].shape:
                    raise ValueError(f"{key}: width differs ({tuple(got.shape)} vs {tuple(target[key].shape)}); "
                                     "depth growth keeps the width")
                out[key] = got.clone()
            elif not fresh:
                raise ValueError(f"{key} has no counterpart blocks.{src}.{name} in the trained model")
        if fresh:
            for stream in ("txt", "vid"):
                for part in ("weight", "bias"):
                    key = f"{prefix}{stream}.ada.linear.{part}"
                    if key not in out:
                        continue
                    rows = out[key].clone()
                    chunk = rows.shape[0] // 6
                    if rows.shape[0] != 6 * chunk:
                        raise ValueError(f"{key}: a new inner block needs a 6-way modulation, got {rows.shape[0]} rows")
                    for g in _GATES:
                        rows[g * chunk:(g + 1) * chunk] = 0
                    out[key] = rows
    return out
