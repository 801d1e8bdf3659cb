"""Training checkpoints: weights (+ EMA) as safetensors, optimiser, scheduler, RNG and data position.

Layout of a run folder::

    <run>/checkpoints/step-000020/
        model/config.json + model.safetensors    (a ``from_pretrained`` folder: the raw weights)
        ema/config.json + model.safetensors      (the EMA weights, what pipelines should load)
        optimizer.pt                             (optimiser state, parameter names as keys)
        trainer_state.json                       (step, scheduler, python/numpy RNG, data sampler, recipe)
        rng.pt                                   (torch CPU/CUDA RNG states)
    <run>/checkpoints/latest                      (text: the name of the newest complete checkpoint)

A checkpoint is written into a hidden temporary folder and renamed into place when complete; the
``latest`` pointer is rewritten (atomically) only after that, so a crash at any moment leaves the
previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from storyreel.pretrained import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, config_to_dict, state_mismatches
from storyreel.utils import atomic_path, atomic_write

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "capture_rng",
    "check_config_matches",
    "check_state_matches",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights",
    "resolve_checkpoint",
    "restore_rng",
    "save_checkpoint",
    "write_model_folder",
]

LATEST = "latest"
STATE_NAME = "trainer_state.json"
OPTIM_NAME = "optimizer.pt"
RNG_NAME = "rng.pt"
FORMAT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """Global RNG states: ``{"python", "numpy"}`` (JSON-able) and ``{"torch", "cuda"}`` (tensors)."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states are restored only where devices exist)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def write_model_folder(
    directory: Path, state: dict[str, torch.Tensor], model_config: Any, *, class_name: str, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in the ``PretrainedMixin`` format (loadable by ``from_pretrained``)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"class": class_name})
    payload = {"_class": class_name, **config_to_dict(model_config), **({"_extra": extra} if extra else {})}
    with atomic_write(directory / CONFIG_NAME, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
    return directory


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    *,
    step: int,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None,
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any] | None,
    data_state: dict[str, Any],
    model_config: Any,
    class_name: str,
    recipe: dict[str, Any],
    extra: dict[str, Any] | None = None,
    keep_last: int | None = None,
    name: str | None = None,
    update_latest: bool = True,
) -> Path:
    """Write one complete checkpoint atomically under ``run_dir/checkpoints``; returns its folder.

    ``model_state`` / ``ema_state`` must be FULL (unsharded) state dicts. ``name`` defaults to
    ``step-{step:06d}``. With ``keep_last`` only that many ``step-*`` checkpoints are kept.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = name or f"step-{step:06d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        meta_extra = dict(extra or {})
        write_model_folder(tmp / "model", model_state, model_config, class_name=class_name, extra=meta_extra)
        if ema_state is not None:
            write_model_folder(tmp / "ema", ema_state, model_config, class_name=class_name, extra=meta_extra)
        torch.save(optimizer_state, tmp / OPTIM_NAME)
        rng = capture_rng()
        torch.save({"torch": rng["torch"], "cuda": rng["cuda"]}, tmp / RNG_NAME)
        state = {
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "scheduler": scheduler_state,
            "rng": {"python": rng["python"], "numpy": rng["numpy"]},
            "data": data_state,
            "recipe": recipe,
            "class": class_name,
            "torch_version": torch.__version__,
            **({"extra": meta_extra} if meta_extra else {}),
        }
        with open(tmp / STATE_NAME, "w") as fh:
            json.dump(state, fh, indent=1)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if update_latest:
        with atomic_write(root / LATEST, "w") as fh:
            fh.write(name + "\n")
    if keep_last is not None:
        protect = {name}
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if old.name not in protect:
                shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete ``step-*`` checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_NAME).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint folder from a run folder (its ``latest``), a ``checkpoints`` folder, or a checkpoint itself."""
    p = Path(path)
    if (p / STATE_NAME).is_file():
        return p
    for root in (p / "checkpoints", p):
        pointer = root / LATEST
        if pointer.is_file():
            name = pointer.read_text().strip()
            target = root / name
            if not (target / STATE_NAME).is_file():
                raise CheckpointError(
                    f"{pointer} points at {name!r}, but {target / STATE_NAME} does not exist; the checkpoint was "
                    "deleted or is incomplete. Pass a specific checkpoint folder (e.g. RUN/checkpoints/step-000100)."
                )
            return target
    if not p.exists():
        raise CheckpointError(f"checkpoint path {p} does not exist; pass a run folder or RUN/checkpoints/step-NNNNNN")
    raise CheckpointError(
        f"{p} holds no checkpoint: expected {STATE_NAME} in it, or a 'latest' pointer in {p}/checkpoints; "
        "pass the run's output folder or one of its checkpoints/step-* folders"
    )


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a corrupt or truncated file raises CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}; the checkpoint is incomplete, pick another one")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}. The file is corrupt or truncated; resume from an older checkpoint.") from err


@dataclass(kw_only=True)
class LoadedCheckpoint:
    """Everything :func:`save_checkpoint` wrote, read back on CPU."""

    path: Path
    step: int
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    data_state: dict[str, Any]
    rng: dict[str, Any]
    recipe: dict[str, Any]
    model_config: dict[str, Any]
    class_name: str


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"missing {path}; the checkpoint is incomplete, resume from another one")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the file is corrupt, resume from an older checkpoint") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object; the file is corrupt, resume from an older checkpoint")
    return data


def load_checkpoint(path: str | os.PathLike[str], *, with_optimizer: bool = True) -> LoadedCheckpoint:
    """Read a checkpoint (run folder, ``latest`` or a specific ``step-*`` folder); CheckpointError on damage."""
    ckpt = resolve_checkpoint(path)
    state = _read_json(ckpt / STATE_NAME)
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt / STATE_NAME} has format_version {version!r}, this storyreel reads {FORMAT_VERSION}; "
            "resume with the storyreel version that wrote it"
        )
    for key in ("step", "data", "rng", "recipe"):
        if key not in state:
            raise CheckpointError(f"{ckpt / STATE_NAME} lacks the field {key!r}; the file is corrupt, resume from an older checkpoint")
    model_cfg = _read_json(ckpt / "model" / CONFIG_NAME)
    class_name = str(model_cfg.pop("_class", state.get("class", "")))
    model_cfg.pop("_extra", None)
    model_state = load_weights(ckpt / "model" / WEIGHTS_NAME)
    ema_state = load_weights(ckpt / "ema" / WEIGHTS_NAME) if (ckpt / "ema").is_dir() else None
    optim = None
    rng_t: dict[str, Any] = {}
    if with_optimizer:
        optim = _torch_load(ckpt / OPTIM_NAME)
    if (ckpt / RNG_NAME).is_file():
        rng_t = _torch_load(ckpt / RNG_NAME)
    return LoadedCheckpoint(
        path=ckpt,
        step=int(state["step"]),
        model_state=model_state,
        ema_state=ema_state,
        optimizer_state=optim,
        scheduler_state=state.get("scheduler"),
        data_state=state["data"],
        rng={**state["rng"], **rng_t},
        recipe=state["recipe"],
        model_config=model_cfg,
        class_name=class_name,
    )


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"missing {path}; the checkpoint is incomplete, resume from another one")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, zipfile errors)
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"cannot read {path}: {type(err).__name__}: {first} The file is corrupt; resume from an older checkpoint.") from err


def check_state_matches(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], *, source: Path, what: str = "model"
) -> None:
    """Raise CheckpointError naming ``source`` when keys or shapes differ from ``expected``."""
    missing, unexpected, shapes = state_mismatches(state, expected, source_word="checkpoint", target_word=what)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s) {unexpected[:5]}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:5]}")
        raise CheckpointError(
            f"{source} does not match the {what} being trained: " + "; ".join(parts)
            + ". The checkpoint was written for another model config; resume with the recipe that wrote it."
        )


def check_config_matches(saved: dict[str, Any], current: Any, *, source: Path) -> None:
    """Raise CheckpointError listing the model-config fields that differ between a checkpoint and the run."""
    now = config_to_dict(current)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs recipe {now.get(k)!r}" for k in sorted(set(now) | set(saved)) if saved.get(k) != now.get(k)]
    if diffs:
        raise CheckpointError(
            f"{source} was written for a different model config: " + "; ".join(diffs)
            + ". Resume with the recipe (and --set overrides) that wrote it."
        )
