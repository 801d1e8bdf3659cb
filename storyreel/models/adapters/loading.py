"""Build a backbone adapter from a local diffusers directory, a config dict, or a transformer already in memory.

Nothing is downloaded: a directory must hold the transformer in diffusers' format (``config.json`` plus
``diffusion_pytorch_model.safetensors`` or a sharded ``*.safetensors.index.json`` with every shard). A pipeline
root (``model_index.json`` + ``transformer/``) is accepted too. An incomplete directory raises
:class:`BackboneWeightsError` listing the files expected and the files missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel
from torch import nn

from storyreel.models.adapters._common import SceneAdapterBase
from storyreel.models.adapters.cogvideox import CogVideoXSceneAdapter
from storyreel.models.adapters.wan import WanSceneAdapter
from storyreel.pretrained import CheckpointError

__all__ = ["BACKBONES", "BackboneWeightsError", "cast_like_diffusers", "find_transformer_dir", "load_backbone"]

#: kind -> (stock diffusers class, adapter class)
BACKBONES: dict[str, tuple[type[nn.Module], type[SceneAdapterBase]]] = {
    "wan": (WanTransformer3DModel, WanSceneAdapter),
    "cogvideox": (CogVideoXTransformer3DModel, CogVideoXSceneAdapter),
}
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_INDEX_NAMES = tuple(n + ".index.json" for n in _WEIGHT_NAMES)


class BackboneWeightsError(CheckpointError):
    """A backbone weights directory is missing, incomplete or holds another model."""


def _expected(kind: str) -> str:
    return (
        f"a diffusers {BACKBONES[kind][0].__name__} directory: config.json and {_WEIGHT_NAMES[0]} (or "
        f"{_INDEX_NAMES[0]} with every shard it lists), either directly in the folder or in its transformer/ "
        "subfolder of a pipeline checkout (e.g. `huggingface-cli download <repo> --local-dir DIR`)"
    )


def find_transformer_dir(kind: str, path: str | os.PathLike[str]) -> Path:
    """The folder holding the transformer's ``config.json`` and weights under ``path`` (checked complete).

    Raises:
        BackboneWeightsError: naming the expected files and what is missing.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BackboneWeightsError(f"{kind} weights directory {str(root)!r} does not exist; expected {_expected(kind)}")
    folder = root / "transformer" if (root / "transformer").is_dir() and not (root / "config.json").is_file() else root
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    missing: list[str] = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    index = next((folder / n for n in _INDEX_NAMES if (folder / n).is_file()), None)
    if index is not None:
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise BackboneWeightsError(f"{index} is not a valid shard index ({err}); re-download the {kind} weights") from err
        missing += [s for s in shards if not (folder / s).is_file()]
    elif not any((folder / n).is_file() for n in _WEIGHT_NAMES):
        missing.append(f"{_WEIGHT_NAMES[0]} (or {_INDEX_NAMES[0]} + its shards)")
    if missing:
        raise BackboneWeightsError(
            f"{kind} weights directory {str(folder)!r} is incomplete: missing {missing}; found {present or 'nothing'}. "
            f"Expected {_expected(kind)}."
        )
    try:
        cls_name = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError) as err:
        raise BackboneWeightsError(f"{folder / 'config.json'} is not valid JSON ({err}); re-download the {kind} weights") from err
    want = BACKBONES[kind][0].__name__
    if cls_name is not None and cls_name != want:
        other = [k for k, (c, _) in BACKBONES.items() if c.__name__ == cls_name]
        hint = f"use kind={other[0]!r}" if other else "point at the transformer of a supported model"
        raise BackboneWeightsError(f"{folder} holds a {cls_name}, not a {want} (kind={kind!r}); {hint}")
    return folder


def load_backbone(
    kind: str,
    path_or_config: str | os.PathLike[str] | Mapping[str, Any] | nn.Module,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    **adapter_kwargs: Any,
) -> SceneAdapterBase:
    """A :class:`WanSceneAdapter` / :class:`CogVideoXSceneAdapter` around a stock diffusers transformer.

    Args:
        kind: ``"wan"`` or ``"cogvideox"``.
        path_or_config: a local directory (transformer folder or pipeline root; never downloaded), a config dict
            (a randomly initialised model, e.g. for tests and benchmarks), or a transformer instance.
        dtype, device: where the weights live (e.g. ``torch.bfloat16``, ``"cuda"``).
        adapter_kwargs: passed to the adapter (``attn_policy``, Wan's ``cross_policy``, CogVideoX's ``ofs``).
    Raises:
        ValueError: unknown ``kind`` or an argument of the wrong type.
        BackboneWeightsError: a missing / incomplete directory (the message lists the expected files).
    """
    if kind not in BACKBONES:
        raise ValueError(f"unknown backbone kind {kind!r}; choose one of {sorted(BACKBONES)}")
    model_cls, adapter_cls = BACKBONES[kind]
    if isinstance(path_or_config, nn.Module):
        if not isinstance(path_or_config, model_cls):
            raise ValueError(f"kind={kind!r} needs a {model_cls.__name__}, got {type(path_or_config).__name__}")
        transformer = path_or_config
    elif isinstance(path_or_config, Mapping):
        config = {k: v for k, v in path_or_config.items() if not str(k).startswith("_")}
        try:
            transformer = model_cls.from_config(config)
        except TypeError as err:
            raise ValueError(f"config for {model_cls.__name__} is invalid: {err}") from err
    elif isinstance(path_or_config, (str, os.PathLike)):
        folder = find_transformer_dir(kind, path_or_config)
        transformer = model_cls.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    else:
        raise ValueError(
            f"path_or_config must be a directory, a config dict or a {model_cls.__name__}, got {type(path_or_config).__name__}"
        )
    transformer = cast_like_diffusers(transformer.to(device=device), dtype)
    return adapter_cls(transformer, **adapter_kwargs)


def cast_like_diffusers(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast floating parameters/buffers to ``dtype`` except the modules the model keeps in float32.

    ``from_pretrained(torch_dtype=...)`` keeps ``model._keep_in_fp32_modules`` (Wan: time embedder, modulation
    tables, norms) in float32; a model built from a config gets the same treatment here.
    """
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            target = torch.float32 if keep & set(name.split(".")) else dtype
            if tensor.dtype != target:
                tensor.data = tensor.data.to(target)
    return model
