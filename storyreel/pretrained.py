"""Save/load for every storyreel model: ``config.json`` + ``model.safetensors`` in one folder.

A model class opts in by inheriting :class:`PretrainedMixin` and setting ``config_class`` to its
keyword-only config dataclass; the instance keeps that config in ``self.config``.
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


class PretrainedMixin:
    """Adds ``save_pretrained(dir)`` / ``from_pretrained(dir)`` to an ``nn.Module`` with a dataclass config."""

    config_class: ClassVar[type]
    config: Any

    def save_pretrained(self, directory: str | os.PathLike[str], *, extra: dict[str, Any] | None = None,
                        dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` atomically into ``directory``.

        ``dtype`` (e.g. ``torch.float16``) stores floating-point tensors in that type to save space;
        ``from_pretrained`` loads them back into the model's own (fp32) parameters."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch dtype (e.g. torch.float16), got {dtype}")
        state = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous().cpu()
                 for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        with atomic_path(out / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"class": type(self).__name__})
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
        """Build the model from ``directory/config.json`` and load ``model.safetensors`` strictly."""
        config = cls.load_config(directory)
        model = cls(config)  # type: ignore[call-arg]
        weights = Path(directory) / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"missing weights file {weights}; the folder holds a config but no {WEIGHTS_NAME}.")
        try:
            state = load_file(str(weights), device=str(device))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot read {weights}: {err}. The file is corrupt or truncated; re-save it.") from err
        missing, unexpected, shape_bad = state_mismatches(state, model.state_dict())  # type: ignore[attr-defined]
        if missing or unexpected or shape_bad:
            raise CheckpointError(
                f"{weights} does not match {cls.__name__}({config}): "
                f"missing={missing[:8]} unexpected={unexpected[:8]} shape mismatches={shape_bad[:8]}"
            )
        model.load_state_dict(state)  # type: ignore[attr-defined]
        return model.to(device)  # type: ignore[attr-defined]
