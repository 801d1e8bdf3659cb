"""Scene datasets: the shard format, a streaming reader and StoryWorld synthesis.

``manifest.json`` + ``shard-NNNNNN.tar`` (plain tar of ``<key>.json`` / ``<key>.npz`` pairs) is the
one dataset format of storyreel; see ``docs/data.md``.
"""

from storyreel.data.dataset import SceneDataset, select_shots, split_for_worker
from storyreel.data.shards import (
    FORMAT,
    FORMAT_VERSION,
    DatasetError,
    SceneSample,
    ShardWriter,
    decode_scene,
    encode_scene,
    iter_shard,
    iter_shard_raw,
    read_manifest,
    shard_name,
)
from storyreel.data.synth import scene_seed, synth_storyworld

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DatasetError",
    "SceneDataset",
    "SceneSample",
    "ShardWriter",
    "decode_scene",
    "encode_scene",
    "iter_shard",
    "iter_shard_raw",
    "read_manifest",
    "scene_seed",
    "select_shots",
    "shard_name",
    "split_for_worker",
    "synth_storyworld",
]
