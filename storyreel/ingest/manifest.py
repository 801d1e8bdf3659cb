"""The ingestion dataset writer: storyreel's standard manifest + tar shards, committed per video.

The folder is an ordinary scene dataset (``docs/data.md``: ``format: storyreel-scenes``,
``source: ingest``) that every reader opens unchanged. On top of the standard fields the manifest
holds ``videos``: one record per input video (``status`` ``done``/``failed``, the ``reason`` of a
failure, counts, warnings) and a per-video detail file ``videos/<id>.json`` (every detected shot,
kept or dropped with its reason, the scenes made of it).

Crash safety: a video's scenes become part of the dataset only when its record is committed.
Shards fill across videos; the last, partly filled shard is rewritten (atomically) with the next
video's scenes at commit, and full shards are written as they fill but listed only at commit.
The manifest, rewritten atomically after each video, is the commit point; a crash loses at most
the video in progress, whose half-written files are replaced on the next run.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

from storyreel.data.shards import FORMAT, FORMAT_VERSION, SceneSample, encode_scene, iter_shard_raw, shard_name
from storyreel.utils import atomic_path, atomic_write, sha256_file, utc_now

__all__ = ["IngestWriter"]

MANIFEST = "manifest.json"
DETAILS_DIR = "videos"
_SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")




def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Write a deterministic USTAR tar atomically; returns its manifest entry (without ``scenes``/``keys``)."""
    with atomic_path(path, suffix=".tar") as tmp:
        with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                info.mtime = 0
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(payload))
    return {"file": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def _members(files: dict[str, bytes]) -> list[tuple[str, bytes]]:
    return list(files.items())


class IngestWriter:
    """Write ingested scenes into a dataset folder, one committed video at a time.

    Args:
        out_dir: the dataset folder (created if needed).
        params: JSON-able ingestion settings; resuming requires them to be equal.
        scenes_per_shard: scenes per tar shard.
    """

    def __init__(self, out_dir: str | os.PathLike[str], *, params: dict[str, Any], scenes_per_shard: int) -> None:
        self.root = Path(out_dir)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"--out {self.root} exists and is not a folder; choose a folder path")
        self.params: dict[str, Any] = json.loads(json.dumps(params))
        self.scenes_per_shard = int(scenes_per_shard)
        self._shards: list[dict[str, Any]] = []
        self._videos: dict[str, dict[str, Any]] = {}
        self._created = utc_now()
        self._complete = False
        self._open_extra: list[dict[str, bytes]] = []  # scenes that will extend the open (last) shard
        self._pending: list[dict[str, Any]] = []  # full new shards written this video, not yet listed
        self._tail: list[dict[str, bytes]] = []  # scenes of the next new shard
        self._keys: set[str] = set()
        self._load()

    # ---- state on disk -----------------------------------------------------------------------

    def _load(self) -> None:
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            if self.root.is_dir() and any(self.root.glob("shard-*.tar")):
                raise ValueError(f"{self.root} holds shard files but no {MANIFEST}; choose another --out folder or empty this one")
            return
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{manifest} is not valid JSON ({err}); choose another --out folder or delete this one") from err
        if old.get("format") != FORMAT or old.get("format_version") != FORMAT_VERSION or old.get("source") != "ingest":
            raise ValueError(
                f"{self.root} holds a dataset that is not an ingestion dataset of this format "
                f"(format={old.get('format')!r} v{old.get('format_version')!r}, source={old.get('source')!r}); "
                "choose another --out folder"
            )
        mine, theirs = self.params, old.get("params") or {}
        diff = [f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        if old.get("scenes_per_shard") != self.scenes_per_shard:
            diff.append(f"scenes_per_shard: {old.get('scenes_per_shard')!r} -> {self.scenes_per_shard!r}")
        if diff:
            raise ValueError(
                f"{self.root} was ingested with other settings ({'; '.join(diff)}); re-run with the original settings to "
                "add videos or resume, or choose another --out folder"
            )
        self._created = old.get("created", self._created)
        shards = list(old.get("shards", []))
        for i, entry in enumerate(shards):
            path = self.root / entry["file"]
            if not path.is_file():
                raise ValueError(f"shard {path} listed in {manifest} is missing; restore it or ingest into a new --out folder")
            if i < len(shards) - 1 and path.stat().st_size != entry["size"]:
                raise ValueError(f"shard {path} has changed size since it was written; restore it or ingest into a new --out folder")
        if shards:
            self._repair_last(shards[-1])
        self._shards = shards
        for rec in old.get("videos", []):
            self._videos[rec["path"]] = rec
        for entry in self._shards:
            self._keys.update(entry.get("keys", []))
        self._complete = bool(old.get("complete"))

    def _repair_last(self, entry: dict[str, Any]) -> None:
        """The last shard may hold scenes of an uncommitted video (crash during a commit): keep the listed ones."""
        path = self.root / entry["file"]
        if path.stat().st_size == entry["size"] and sha256_file(path) == entry["sha256"]:
            return
        listed = list(entry.get("keys", []))
        groups = {k: f for k, f in iter_shard_raw(path) if k in set(listed)}
        if set(groups) != set(listed):
            raise ValueError(f"shard {path} lacks scenes its manifest entry lists (corrupt); ingest into a new --out folder")
        members = [(f"{k}{suffix}", data) for k in listed for suffix, data in groups[k].items()]
        new = _write_tar(path, members)
        if new["sha256"] != entry["sha256"]:
            raise ValueError(f"shard {path} cannot be restored to its committed content; ingest into a new --out folder")

    def _write_manifest(self) -> None:
        from storyreel import __version__

        videos = list(self._videos.values())
        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": "ingest",
            "complete": self._complete,
            "scene_count": sum(int(e["scenes"]) for e in self._shards),
            "n_scenes": None,
            "scenes_per_shard": self.scenes_per_shard,
            "shards": self._shards,
            "params": self.params,
            "videos": videos,
            "video_counts": {
                "done": sum(v["status"] == "done" for v in videos),
                "failed": sum(v["status"] == "failed" for v in videos),
            },
            "storyreel_version": __version__,
            "created": self._created,
            "updated": utc_now(),
        }
        with atomic_write(self.root / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, ensure_ascii=False)
            fh.write("\n")

    # ---- queries -------------------------------------------------------------------------------

    def record(self, path: str) -> dict[str, Any] | None:
        """The committed record of the video at resolved ``path``, if any."""
        return self._videos.get(path)

    def used_ids(self) -> set[str]:
        """Video ids already taken (scene keys are ``<id>-NNNN``)."""
        return {v["id"] for v in self._videos.values()}

    @property
    def scene_count(self) -> int:
        return sum(int(e["scenes"]) for e in self._shards)

    # ---- writing -------------------------------------------------------------------------------

    def start(self) -> None:
        """Mark the dataset as being written (``complete: false``) and remove leftovers of a crash."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._complete = False
        self._write_manifest()
        self._remove_orphans()

    def add(self, sample: SceneSample) -> None:
        """Queue one scene of the current video (listed in the manifest only at :meth:`commit`)."""
        if sample.key in self._keys:
            raise ValueError(f"duplicate scene key {sample.key!r}")
        self._keys.add(sample.key)
        files = encode_scene(sample)
        room = self.scenes_per_shard - int(self._shards[-1]["scenes"]) if self._shards else 0
        if not self._pending and not self._tail and len(self._open_extra) < room:
            self._open_extra.append(files)
            return
        self._tail.append(files)
        if len(self._tail) >= self.scenes_per_shard:
            self._pending.append(self._new_shard(self._tail))
            self._tail = []

    def _new_shard(self, scenes: list[dict[str, bytes]]) -> dict[str, Any]:
        index = len(self._shards) + len(self._pending)
        members = [m for files in scenes for m in _members(files)]
        entry = _write_tar(self.root / shard_name(index), members)
        entry["scenes"] = len(scenes)
        entry["keys"] = [next(iter(files)).removesuffix(".json") for files in scenes]
        return entry

    def commit(self, record: dict[str, Any], details: dict[str, Any]) -> None:
        """Make the current video's scenes part of the dataset and store its record (atomic)."""
        with atomic_write(self.root / DETAILS_DIR / f"{record['id']}.json", "w", encoding="utf-8") as fh:
            json.dump(details, fh, indent=1, ensure_ascii=False)
            fh.write("\n")
        shards = [dict(e) for e in self._shards]
        if self._open_extra:
            last = shards[-1]
            path = self.root / last["file"]
            old = [(f"{k}{suffix}", data) for k, group in iter_shard_raw(path) for suffix, data in group.items()]
            new = [m for files in self._open_extra for m in _members(files)]
            entry = _write_tar(path, old + new)
            keys = last["keys"] + [next(iter(files)).removesuffix(".json") for files in self._open_extra]
            shards[-1] = {**entry, "scenes": len(keys), "keys": keys}
        shards += self._pending
        if self._tail:
            self._pending.append(self._new_shard(self._tail))
            shards.append(self._pending[-1])
        record = dict(record)
        record["details"] = f"{DETAILS_DIR}/{record['id']}.json"
        self._shards = shards
        self._videos[record["path"]] = record
        self._open_extra, self._pending, self._tail = [], [], []
        self._write_manifest()

    def rollback(self) -> None:
        """Forget the current video's queued scenes (after it failed)."""
        for entry in self._pending:
            with_path = self.root / entry["file"]
            if with_path.is_file():
                with_path.unlink()
        dropped = [f for group in (self._open_extra, self._tail) for f in group]
        for files in dropped:
            self._keys.discard(next(iter(files)).removesuffix(".json"))
        for entry in self._pending:
            self._keys.difference_update(entry["keys"])
        self._open_extra, self._pending, self._tail = [], [], []

    def fail(self, record: dict[str, Any]) -> None:
        """Record a failed video (its queued scenes are dropped)."""
        self.rollback()
        self._videos[record["path"]] = dict(record)
        self._write_manifest()

    def finish(self) -> None:
        """Mark the dataset complete (every video of this run processed)."""
        self._complete = True
        self._write_manifest()
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        listed = {e["file"] for e in self._shards}
        for path in self.root.glob("shard-*.tar"):
            if _SHARD_RE.match(path.name) and path.name not in listed:
                path.unlink()
        for path in self.root.glob(".shard-*.tmp-*"):
            path.unlink()
