"""Save/load for every storyreel model: ``config.json`` + ``model.safetensors`` in one folder.

A model class opts in by inheriting :class:`PretrainedMixin` and setting ``config_class`` to its
keyword-only config dataclass; the instance keeps that config in ``self.config``.

Weights larger than :data:`MAX_SHARD_BYTES` (16 MiB, the per-file limit of shipped weights) are split into
``model-00001-of-0000N.safetensors`` … with a ``model.safetensors.index.json`` that maps every tensor to its file
(the layout Hugging Face libraries use); :func:`load_folder_state` reads either form.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from storyreel.utils import atomic_path, atomic_write

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
#: Largest weights file ``save_pretrained`` writes; bigger states are sharded.
MAX_SHARD_BYTES = 16 * 2**20

T = TypeVar("T", bound="PretrainedMixin")


class CheckpointError(RuntimeError):
    """A model folder is missing, corrupt or does not match the model it is loaded into."""


def config_to_dict(config: Any) -> dict[str, Any]:
    """Dataclass config → JSON-able dict (tuples become lists)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass config, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(config_class: type, data: dict[str, Any], *, source: str = "config") -> Any:
    """Build ``config_class`` from a dict, turning lists back into tuples where the default is one."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CheckpointError(
            f"{source}: unknown field(s) {unknown} for {config_class.__name__}; allowed: {sorted(fields)}. "
            "The folder was probably written by a newer storyreel: upgrade, or remove those keys."
        )
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default
        if isinstance(value, list) and isinstance(default, tuple):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    return config_class(**kwargs)


def state_mismatches(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], *, source_word: str = "file", target_word: str = "model"
) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, shape mismatches)`` between a loaded state dict and the one a model expects."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {source_word} {tuple(state[k].shape)} vs {target_word} {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, shapes


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def shard_state(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split ``state`` into groups of at most ``max_bytes`` of tensor data (in key order; a tensor larger than
    ``max_bytes`` gets a file of its own). One group when everything fits."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        n = _tensor_bytes(state[key])
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = state[key]
        size += n
    return shards


def shard_name(i: int, n: int) -> str:
    """File name of shard ``i`` (0-based) of ``n``."""
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def weight_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The weights files of a model folder: ``model.safetensors``, or the shards its index names. Raises
    :class:`CheckpointError` naming what is missing."""
    root = Path(directory)
    index = root / INDEX_NAME
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{index} is not a valid shard index ({err}); re-save the model.") from err
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard(s) {missing} that are not in {root}; copy the whole folder again.")
        return [root / n for n in names]
    if (root / WEIGHTS_NAME).is_file():
        return [root / WEIGHTS_NAME]
    raise CheckpointError(f"missing weights file {root / WEIGHTS_NAME}; the folder holds no {WEIGHTS_NAME} and no {INDEX_NAME}.")


def weights_path(directory: str | os.PathLike[str]) -> Path:
    """What names a model folder's weights in messages and records: its ``model.safetensors``, or the shard index."""
    files = weight_files(directory)
    return files[0] if len(files) == 1 else Path(directory) / INDEX_NAME


def has_weights(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds ``config.json`` and weights (single file or shard index)."""
    root = Path(directory)
    return (root / CONFIG_NAME).is_file() and ((root / WEIGHTS_NAME).is_file() or (root / INDEX_NAME).is_file())


def load_folder_state(directory: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a model folder (single file or shards); a corrupt file raises :class:`CheckpointError`."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        try:
            part = load_file(str(path), device=str(device))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"cannot read {path}: {err}. The file is corrupt or truncated; re-save it.") from err
        dup = sorted(set(part) & set(state))
        if dup:
            raise CheckpointError(f"{path} repeats tensors of another shard ({dup[:4]}); re-save the model.")
        state.update(part)
    return state


def write_state(directory: str | os.PathLike[str], state: dict[str, torch.Tensor], *, metadata: dict[str, str] | None = None,
                max_shard_bytes: int = MAX_SHARD_BYTES) -> list[Path]:
    """Write ``state`` into ``directory`` as ``model.safetensors`` or, if larger than ``max_shard_bytes``, as shards
    plus an index; each file atomically, the index (or single file) last, then weights files of an earlier save
    that the new one does not use are removed. Returns the files written."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    shards = shard_state(state, max_shard_bytes)
    written: list[Path] = []
    if len(shards) == 1:
        with atomic_path(root / WEIGHTS_NAME) as tmp:
            save_file(shards[0], str(tmp), metadata=metadata)
        written.append(root / WEIGHTS_NAME)
    else:
        weight_map = {}
        for i, part in enumerate(shards):
            name = shard_name(i, len(shards))
            with atomic_path(root / name) as tmp:
                save_file(part, str(tmp), metadata=metadata)
            written.append(root / name)
            weight_map.update(dict.fromkeys(part, name))
        total = sum(_tensor_bytes(t) for t in state.values())
        with atomic_write(root / INDEX_NAME, "w") as fh:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, fh, indent=1)
        written.append(root / INDEX_NAME)
    stale = [p for p in (root / WEIGHTS_NAME, root / INDEX_NAME, *root.glob("model-*-of-*.safetensors")) if p not in written]
    for p in stale:
        p.unlink(missing_ok=True)
    return written


class PretrainedMixin:
    """Adds ``save_pretrained(dir)`` / ``from_pretrained(dir)`` to an ``nn.Module`` with a dataclass config."""

    config_class: ClassVar[type]
    config: Any

    def save_pretrained(self, directory: str | os.PathLike[str], *, extra: dict[str, Any] | None = None,
                        dtype: torch.dtype | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
        """Write ``config.json`` and ``model.safetensors`` atomically into ``directory`` (shards and an index when
        the weights exceed ``max_shard_bytes``, see :func:`write_state`).

        ``dtype`` (e.g. ``torch.float16``) stores floating-point tensors in that type to save space;
        ``from_pretrained`` loads them back into the model's own (fp32) parameters."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch dtype (e.g. torch.float16), got {dtype}")
        state = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous().cpu()
                 for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        write_state(out, state, metadata={"class": type(self).__name__}, max_shard_bytes=max_shard_bytes)
        payload = {"_class": type(self).__name__, **config_to_dict(self.config), **({"_extra": extra} if extra else {})}
        with atomic_write(out / CONFIG_NAME, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True)
        return out

    @classmethod
    def load_config(cls, directory: str | os.PathLike[str]) -> Any:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(
                f"no {CONFIG_NAME} in {Path(directory)}: not a storyreel model folder. "
                f"Pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME} (written by save_pretrained)."
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path} is not valid JSON ({err}); re-save the model or restore the file.") from err
        saved_class = data.pop("_class", cls.__name__)
        data.pop("_extra", None)
        if saved_class != cls.__name__:
            raise CheckpointError(
                f"{path} describes a {saved_class}, but it is being loaded as a {cls.__name__}; "
                f"load it with {saved_class}.from_pretrained instead."
            )
        return config_from_dict(cls.config_class, data, source=str(path))

    @classmethod
    def from_pretrained(cls: type[T], directory: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> T:
        """Build the model from ``directory/config.json`` and load its weights (one file or shards) strictly."""
        config = cls.load_config(directory)
        model = cls(config)  # type: ignore[call-arg]
        weights = weights_path(directory)
        state = load_folder_state(directory, device=device)
        missing, unexpected, shape_bad = state_mismatches(state, model.state_dict())  # type: ignore[attr-defined]
        if missing or unexpected or shape_bad:
            raise CheckpointError(
                f"{weights} does not match {cls.__name__}({config}): "
                f"missing={missing[:8]} unexpected={unexpected[:8]} shape mismatches={shape_bad[:8]}"
            )
        model.load_state_dict(state)  # type: ignore[attr-defined]
        return model.to(device)  # type: ignore[attr-defined]
