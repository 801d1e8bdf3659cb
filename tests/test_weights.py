"""The shipped weights stay within the repository's budget (developers' brief: safetensors + config.json under
``storyreel/weights/``, at most 16 MiB per file and 48 MiB in all) and every model folder a pipeline names holds
its config and weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storyreel.pretrained import MAX_SHARD_BYTES, has_weights, weight_files

WEIGHTS = Path(__file__).resolve().parents[1] / "storyreel" / "weights"


def shipped_files() -> list[Path]:
    return sorted(p for p in WEIGHTS.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_shipped_weights_fit_the_budget():
    files = shipped_files()
    assert files, f"nothing shipped under {WEIGHTS}"
    too_big = [(str(p.relative_to(WEIGHTS)), p.stat().st_size) for p in files if p.stat().st_size > 16 * 2**20]
    assert not too_big, f"files over 16 MiB (save with save_pretrained, which shards at {MAX_SHARD_BYTES} bytes): {too_big}"
    total = sum(p.stat().st_size for p in files)
    assert total <= 48 * 2**20, f"shipped weights take {total / 2**20:.1f} MiB, over the 48 MiB budget"
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert weights and all(p.suffix in (".safetensors", ".json") for p in files), "only safetensors + json are shipped"


@pytest.mark.parametrize("pipeline", sorted(WEIGHTS.glob("*/pipeline.json")), ids=lambda p: p.parent.name)
def test_every_model_folder_of_a_shipped_pipeline_is_complete(pipeline):
    meta = json.loads(pipeline.read_text())
    names = [meta["scene"]]
    if meta.get("causal") and meta["causal"] != "shared":
        names.append(meta["causal"])
    if isinstance(meta.get("autoencoder"), dict) and "path" in meta["autoencoder"]:
        names.append(meta["autoencoder"]["path"])
    for name in names:
        folder = pipeline.parent / name
        assert has_weights(folder), f"{folder} lacks config.json or its weights"
        assert all(p.stat().st_size > 0 for p in weight_files(folder))
