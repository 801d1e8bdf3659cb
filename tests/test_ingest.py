"""Real-video ingestion on videos made here: StoryWorld shots joined by hard cuts, a fade through
black, letterbox/pillarbox bars, odd sizes and broken files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from storyreel.data import SceneDataset, read_manifest
from storyreel.ingest import (
    CaptionEntry,
    IngestConfig,
    ShotSpan,
    VideoInputError,
    assign_captions,
    content_box,
    crop_to_aspect,
    detect_shots,
    ingest_videos,
    plan_clip,
    probe_video,
    resize_clip,
    scenedetect_cli_args,
)
from storyreel.media import read_video, write_video
from storyreel.train.scenes import SceneIndex
from storyreel.world import render_scene, sample_scene

FPS = 12
LENGTHS = [20, 24, 18, 22, 20]  # frames per shot of the film
TRUE_CUTS = [20, 44, 62, 84]  # the cut into shot 3 is a fade through black (frame 61 is black)
CFG = dict(clip_frames=8, fps=6, size=(64, 64), max_shots=3, min_shots=2)  # a clip spans 15 source frames
SCENEDETECT = Path(sys.executable).parent / "scenedetect"


def _shot(seed: int, frames: int, resolution: tuple[int, int] = (128, 96)) -> np.ndarray:
    spec = sample_scene(seed, n_shots=1, resolution=resolution, frames=frames, fps=FPS)
    return render_scene(spec).shots[0].frames  # [T, H, W, 3]


def _settings_seeds() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for seed in range(40):
        out.setdefault(sample_scene(seed, n_shots=1).setting, []).append(seed)
    return out


def _film_shots() -> list[np.ndarray]:
    by = _settings_seeds()
    names = list(by)
    seeds = [by[names[k % len(names)]][k // len(names)] for k in range(len(LENGTHS))]  # consecutive settings differ
    shots = [_shot(s, n) for s, n in zip(seeds, LENGTHS)]
    out2, in3 = shots[2].astype(np.float32), shots[3].astype(np.float32)
    for i in range(6):  # shot 2 fades out to black, shot 3 fades in
        out2[-6 + i] *= (5 - i) / 6
        in3[i] *= (i + 1) / 7
    shots[2], shots[3] = out2.round().astype(np.uint8), in3.round().astype(np.uint8)
    return shots


def write_ffv1(path: Path, frames: np.ndarray, fps: int, *, pts: list[int] | None = None, time_base: Fraction | None = None) -> Path:
    """Lossless FFV1/Matroska writer (any frame size, optional explicit timestamps)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        tb = time_base or Fraction(1, fps)
        s.codec_context.time_base = tb
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            frame.pts, frame.time_base = (i if pts is None else pts[i]), tb
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    shots = _film_shots()
    film = np.concatenate(shots)  # [104, 96, 128, 3]
    letterbox = np.zeros((film.shape[0], 128, 128, 3), np.uint8)
    letterbox[:, 16:112] = film  # 16-pixel bars above and below
    out = {"film": write_video(root / "film.mp4", letterbox, FPS)}
    by = _settings_seeds()
    names = list(by)
    pillar = np.concatenate([_shot(by[names[k]][1], 18, (96, 64)) for k in (0, 2, 4)])  # [54, 64, 96, 3]
    boxed = np.zeros((pillar.shape[0], 64, 128, 3), np.uint8)
    boxed[:, :, 16:112] = pillar  # pillarbox bars left and right
    out["pillar"] = write_video(root / "pillar.mp4", boxed, FPS)
    same = [by[names[0]][k] for k in range(3)] + [by[names[3]][k] for k in range(2)]
    out["similar"] = write_video(root / "similar.mp4", np.concatenate([_shot(s, 18, (96, 64)) for s in same]), FPS)
    odd = np.concatenate([_shot(by[names[k]][2], 18, (100, 76)) for k in (1, 3)])[:, :75, :99]  # odd size 99x75
    out["odd"] = write_ffv1(root / "odd.mkv", odd, FPS)
    return out


def _cuts(shots: list[ShotSpan]) -> list[int]:
    return [s.start for s in shots[1:]]


# ---- shot detection ------------------------------------------------------------------------------


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_cuts_within_one_frame_and_equal_to_scenedetect_cli(videos, tmp_path, detector):
    cfg = IngestConfig(detectors=(detector,), **CFG)
    shots = detect_shots(videos["film"], cfg)
    found = _cuts(shots)
    for true in (20, 44, 84):  # every hard cut, within one frame
        assert any(abs(f - true) <= 1 for f in found), (detector, found)
    for f in found:  # and nothing else
        assert any(abs(f - true) <= 1 for true in TRUE_CUTS), (detector, found)
    if detector == "content":  # ContentDetector also catches the 6-frame fade (AdaptiveDetector is for fast cuts)
        assert len(found) == len(TRUE_CUTS)
    assert shots[0].start == 0 and shots[-1].end == sum(LENGTHS)
    # the peer tool itself, same settings: scene starts (1-based frames in its CSV) equal ours
    settings = {"content": ["detect-content", "-t", "27"], "adaptive": ["detect-adaptive", "-t", "3", "-c", "15", "-f", "2"]}
    cmd = [str(SCENEDETECT), "-q", "-i", str(videos["film"]), "-b", "pyav", "-m", "15", *settings[detector],
           "list-scenes", "-s", "-o", str(tmp_path), "-f", "scenes.csv"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    with open(tmp_path / "scenes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    cli = [(int(r["Start Frame"]) - 1, int(r["End Frame"])) for r in rows]
    assert cli == [(s.start, s.end) for s in shots]
    assert scenedetect_cli_args(cfg)[:4] == ["-b", "pyav", "-m", "15"]


def test_fade_detector_merges_with_content(videos):
    shots = detect_shots(videos["film"], IngestConfig(detectors=("content", "threshold"), **CFG))
    fade = [s.start for s in shots if 60 <= s.start <= 63]
    assert fade and all(abs(c - 62) <= 1 for c in fade)


# ---- frames --------------------------------------------------------------------------------------


def test_plan_clip_contains_mid_shot_keyframe():
    shot = ShotSpan(index=0, start=10, end=40)  # mid = 25
    plan = plan_clip(shot, src_fps=24, fps=8, clip_frames=8, hold=False)
    assert plan.indices[plan.keyframe_index] == 25 and plan.keyframe_index == 4
    assert np.all(np.diff(plan.indices) == 3) and plan.indices[0] >= 10 and plan.indices[-1] <= 39
    tight = plan_clip(ShotSpan(index=0, start=0, end=25), src_fps=24, fps=8, clip_frames=8, hold=False)  # mid = 12
    assert tight.indices == (0, 3, 6, 9, 12, 15, 18, 21) and tight.keyframe_index == 4
    assert plan_clip(ShotSpan(index=0, start=0, end=23), src_fps=24, fps=8, clip_frames=8, hold=False) is None
    assert plan_clip(ShotSpan(index=0, start=0, end=10), src_fps=24, fps=8, clip_frames=8, hold=False) is None
    held = plan_clip(ShotSpan(index=0, start=0, end=10), src_fps=24, fps=8, clip_frames=8, hold=True)
    assert held.held and min(held.indices) == 0 and max(held.indices) == 9 and held.indices[held.keyframe_index] == 5


def test_content_box_and_crop():
    frames = np.zeros((2, 60, 100, 3), np.uint8)
    frames[:, 10:50, 5:95] = 120
    frames[1, 30, 2] = 255  # one bright pixel in the left bar is not enough to count as picture
    assert content_box(frames, threshold=20, max_border=0.3) == (5, 10, 95, 50)
    assert content_box(frames, threshold=0, max_border=0.3) == (0, 0, 100, 60)
    assert content_box(frames, threshold=20, max_border=0.05) == (5, 3, 95, 57)  # capped at 5% per side
    assert crop_to_aspect((5, 10, 95, 50), (64, 64)) == (30, 10, 70, 50)
    # anamorphic pixels (SAR 1/2): 100 px wide = 50 display units, so a square display crop is 100x50 px
    assert crop_to_aspect((0, 0, 100, 60), (64, 64), sar=Fraction(1, 2)) == (0, 5, 100, 55)


# ---- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def film_dataset(videos, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    caps = {
        "film.mp4": {
            "global": {"characters": [{"id": 1, "description": "a red circle"}], "setting": "a slate room",
                       "story": "Character 1 wanders."},
            "scenes": [{"start": 5.0, "end": 9.0, "global": "Setting: a stone hall."}],  # the second scene's own
            "shots": [
                {"start": 0.1, "end": 0.8, "text": "Wide shot of Character 1."},
                {"start": 0.9, "end": 1.5, "text": "It waits."},  # same shot 0: joined after the first
                {"time": 2.5, "text": "Close-up of Character 1."},  # shot 1
                {"start": 5.5, "end": 7.4, "text": "Character 1 jumps."},  # mostly shot 3 (5.08-7.0 s)
                {"start": 30.0, "end": 31.0, "text": "After the end."},  # matches nothing
            ],
        }
    }
    (root / "captions.json").write_text(json.dumps(caps))
    report = ingest_videos([videos["film"]], root / "out", config=IngestConfig(**CFG), captions=root / "captions.json",
                           progress=False)
    assert report.count("done") == 1 and report.results[0].warnings
    return root / "out"


def test_ingested_dataset_reads_with_existing_readers(film_dataset):
    manifest = read_manifest(film_dataset)
    assert manifest["source"] == "ingest" and manifest["complete"] and manifest["scene_count"] == 2
    items = list(SceneDataset(film_dataset))
    assert [it["key"] for it in items] == ["film-0000", "film-0001"]
    assert [len(it["frames"]) for it in items] == [3, 2]
    for it in items:
        assert all(tuple(f.shape) == (8, 3, 64, 64) and f.dtype == torch.uint8 for f in it["frames"])
        assert it["fps"] == 6 and all(it["cuts"]) and all(len(b) == 8 for b in it["boxes"])
    index = SceneIndex(film_dataset)
    assert len(index) == 2 and index.frames(0) == (8, 8, 8)
    assert index.load(1).meta["source"] == "ingest"


def test_borders_removed_and_keyframes_at_mid_shot(film_dataset, videos):
    decoded = read_video(videos["film"])  # [104, 128, 128, 3], the same decoder
    bounds = [0, *TRUE_CUTS, sum(LENGTHS)]
    index = SceneIndex(film_dataset)
    shots = [(s, m) for i in range(len(index)) for s, m in zip(index.load(i).frames, index.load(i).meta["shots"])]
    assert len(shots) == 5
    for n, (frames, meta) in enumerate(shots):
        x0, y0, x1, y1 = meta["content_box"]
        assert (x0, x1) == (0, 128) and abs(y0 - 16) <= 1 and abs(y1 - 112) <= 1  # letterbox bars found
        start, end = meta["frames"]
        assert abs(start - bounds[n]) <= 1 and abs(end - bounds[n + 1]) <= 1
        assert meta["keyframe_frame"] == start + (end - start) // 2
        k = meta["keyframe_index"]
        assert meta["clip_frames"][k] == meta["keyframe_frame"]
        expect = resize_clip(decoded[meta["keyframe_frame"]][None], tuple(meta["crop"]), (64, 64))[0]
        np.testing.assert_array_equal(frames[k], expect)
        luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # [T, 64, 64]
        edges = [luma[:, 0].mean(), luma[:, -1].mean(), luma[:, :, 0].mean(), luma[:, :, -1].mean()]
        assert min(edges) > 20, edges  # no black bar left on any side


def test_pillarbox_and_odd_size(videos, tmp_path):
    report = ingest_videos([videos["pillar"], videos["odd"]], tmp_path / "ds", config=IngestConfig(**CFG), progress=False)
    assert [r.status for r in report.results] == ["done", "done"]
    details = json.loads((tmp_path / "ds" / "videos" / "pillar.json").read_text())
    boxes = [s["content_box"] for s in details["shots"] if "content_box" in s]
    assert boxes and all(abs(b[0] - 16) <= 1 and abs(b[2] - 112) <= 1 and b[1] == 0 and b[3] == 64 for b in boxes)
    odd = json.loads((tmp_path / "ds" / "videos" / "odd.json").read_text())
    assert odd["probe"]["width"] == 99 and odd["probe"]["height"] == 75
    assert all(tuple(f.shape[1:]) == (3, 64, 64) for it in SceneDataset(tmp_path / "ds") for f in it["frames"])


def test_caption_join(film_dataset):
    items = list(SceneDataset(film_dataset))
    assert items[0]["global_prompt"] == "Character 1: a red circle. Setting: a slate room. Story: Character 1 wanders."
    assert items[1]["global_prompt"] == "Setting: a stone hall."
    prompts = items[0]["shot_prompts"] + items[1]["shot_prompts"]
    assert prompts == ["[SHOT CUT] Wide shot of Character 1. It waits.", "[SHOT CUT] Close-up of Character 1.", "",
                       "[SHOT CUT] Character 1 jumps.", ""]
    metas = items[0]["meta"]["shots"] + items[1]["meta"]["shots"]
    assert [m["captioned"] for m in metas] == [True, True, False, True, False]
    assert items[0]["meta"]["uncaptioned_shots"] == [2] and items[1]["meta"]["uncaptioned_shots"] == [1]
    record = read_manifest(film_dataset)["videos"][0]
    assert record["uncaptioned_shots"] == 2 and any("match no shot" in w for w in record["warnings"])


def test_caption_csv_equals_json_and_assignment(tmp_path):
    rows = [["video", "start", "end", "text", "kind"], ["clip.mp4", "", "", "Character 1: a cat. Setting: a roof.", ""],
            ["clip.mp4", "0.1", "0.4", "A.", ""], ["clip.mp4", "1.2", "", "B.", "shot"], ["clip.mp4", "0.5", "0.7", "C.", ""],
            ["clip.mp4", "1.0", "2.0", "Character 1: a cat. Setting: a garden.", "global"]]
    with open(tmp_path / "c.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    from storyreel.ingest import load_captions

    caps = load_captions(tmp_path / "c.csv").lookup(tmp_path / "sub" / "clip.mp4")
    assert caps.global_prompt == "Character 1: a cat. Setting: a roof."
    assert caps.global_for(0.0, 1.0) == caps.global_prompt and caps.global_for(0.9, 2.0).endswith("a garden.")
    (tmp_path / "c.json").write_text(json.dumps({"videos": {"clip.mp4": {
        "global": {"characters": {"1": "a cat"}, "setting": "a roof"},
        "scenes": [{"start": 1.0, "end": 2.0, "global": "Character 1: a cat. Setting: a garden."}],
        "shots": [{"start": 0.1, "end": 0.4, "text": "A."}, {"time": 1.2, "text": "B."}, {"start": 0.5, "end": 0.7, "text": "C."}]}}}))
    from_json = load_captions(tmp_path / "c.json").lookup("clip")
    assert from_json == caps  # the same captions from either format
    with pytest.raises(ValueError, match="setting"):
        (tmp_path / "bad.json").write_text(json.dumps({"clip.mp4": {"global": {"characters": {"1": "a cat"}}}}))
        load_captions(tmp_path / "bad.json")
    shots = [ShotSpan(index=0, start=0, end=12), ShotSpan(index=1, start=12, end=24)]  # 0-1 s, 1-2 s at 12 fps
    texts, unmatched = assign_captions(shots, caps.entries, fps=12)
    assert texts == ["A. C.", "B."] and unmatched == []
    texts, unmatched = assign_captions(shots, [CaptionEntry(0.8, 1.9, "X")], fps=12)
    assert texts == ["", "X"]  # the larger overlap wins


def test_similarity_threshold_splits_scenes(videos, tmp_path):
    cfg = dict(CFG, max_shots=8, content_threshold=6.0)
    one = ingest_videos([videos["similar"]], tmp_path / "a", config=IngestConfig(**cfg), progress=False)
    two = ingest_videos([videos["similar"]], tmp_path / "b", config=IngestConfig(**cfg, similarity_threshold=0.5), progress=False)
    assert one.scene_count == 1 and two.scene_count == 2
    assert [len(it["frames"]) for it in SceneDataset(tmp_path / "b")] == [3, 2]


def test_latents_and_text_states_cached(videos, tmp_path):
    from storyreel.autoencoders import PatchAutoencoder
    from storyreel.text import HashingEncoder

    ingest_videos([videos["film"]], tmp_path / "ds", config=IngestConfig(**CFG), autoencoder="patch", text_encoder="hashing",
                  progress=False)
    item = next(iter(SceneDataset(tmp_path / "ds")))
    lat = item["latents"]
    assert item["meta"]["cache"]["autoencoder"] == "patch" and item["meta"]["cache"]["spatial_factor"] == 2
    video = torch.stack([f.permute(1, 0, 2, 3) for f in item["frames"]]).float() / 127.5 - 1  # [N, 3, T, H, W]
    expect = PatchAutoencoder().encode(video).numpy()
    for i in range(len(item["frames"])):
        np.testing.assert_array_equal(lat[f"latent_{i:02d}"], expect[i])
    states = HashingEncoder().encode([item["global_prompt"], *item["shot_prompts"]])
    np.testing.assert_array_equal(lat["text_global"], states.states[0].numpy())
    np.testing.assert_array_equal(lat["text_mask_01"], states.mask[2].numpy())


def test_diffusers_style_encoder_output(videos, tmp_path):
    from storyreel.autoencoders import PatchAutoencoder

    class Dist:
        def __init__(self, z):
            self.z = z

        def mode(self):
            return self.z

    class DiffusersLike:  # diffusers VAEs return an object with .latent_dist
        spatial_factor = 2

        def encode(self, x):
            return type("Out", (), {"latent_dist": Dist(PatchAutoencoder().encode(x) * 2)})()

    ingest_videos([videos["film"]], tmp_path / "ds", config=IngestConfig(**CFG, latent_dtype="float16"),
                  autoencoder=DiffusersLike(), progress=False)
    item = next(iter(SceneDataset(tmp_path / "ds")))
    assert item["latents"]["latent_00"].dtype == np.float16 and item["latents"]["latent_00"].shape == (12, 8, 32, 32)
    assert item["meta"]["cache"]["autoencoder"] == "DiffusersLike"


# ---- resume and bad input ------------------------------------------------------------------------


def test_resume_skips_finished_videos_and_survives_crashes(videos, tmp_path, monkeypatch):
    import storyreel.ingest.manifest as manifest_mod
    import storyreel.ingest.pipeline as pipeline_mod

    out = tmp_path / "ds"
    cfg = IngestConfig(**CFG)
    first = ingest_videos([videos["film"], videos["pillar"]], out, config=cfg, progress=False)
    assert [r.status for r in first.results] == ["done", "done"]

    class Boom:  # a crash (not a bad video) while the third video is processed
        def caption_shot(self, keyframe, clip):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_videos([videos["film"], videos["pillar"], videos["odd"]], out, config=cfg, captioner=Boom(), progress=False)
    partial = read_manifest(out, allow_incomplete=True)
    assert not partial["complete"] and partial["scene_count"] == first.scene_count

    # a crash inside the commit, after the open shard was rewritten and before the manifest was
    real = manifest_mod.IngestWriter._write_manifest
    calls = {"n": 0}

    def crash_on_commit(self):
        calls["n"] += 1
        if calls["n"] == 2:  # 1: start(), 2: the commit of the first processed video
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(manifest_mod.IngestWriter, "_write_manifest", crash_on_commit)
    with pytest.raises(KeyboardInterrupt):
        ingest_videos([videos["odd"]], out, config=cfg, progress=False)
    monkeypatch.setattr(manifest_mod.IngestWriter, "_write_manifest", real)
    on_disk = json.loads((out / "manifest.json").read_text())  # the commit did not happen ...
    assert on_disk["scene_count"] == first.scene_count and len(on_disk["videos"]) == 2
    shard = out / on_disk["shards"][-1]["file"]
    assert shard.stat().st_size != on_disk["shards"][-1]["size"]  # ... though the open shard was rewritten
    manifest_mod.IngestWriter(out, params=on_disk["params"], scenes_per_shard=cfg.scenes_per_shard)  # reopening repairs it
    assert read_manifest(out, allow_incomplete=True)["scene_count"] == first.scene_count  # sizes and sha256 match again

    seen: list[str] = []
    real_detect = pipeline_mod.detect_shots
    monkeypatch.setattr(pipeline_mod, "detect_shots", lambda path, *a, **k: seen.append(Path(path).name) or real_detect(path, *a, **k))
    again = ingest_videos([videos["film"], videos["pillar"], videos["odd"]], out, config=cfg, progress=False)
    assert seen == ["odd.mkv"]
    assert [r.status for r in again.results] == ["skipped", "skipped", "done"]
    keys = [it["key"] for it in SceneDataset(out)]
    assert len(keys) == len(set(keys)) == again.scene_count and any(k.startswith("odd-") for k in keys)
    with pytest.raises(ValueError, match="other settings"):
        ingest_videos([videos["film"]], out, config=IngestConfig(**dict(CFG, fps=4)), progress=False)


def test_bad_inputs_are_recorded_and_the_run_continues(videos, tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video at all" * 50)
    rng = np.random.default_rng(0)
    pts = [int(p) for p in np.cumsum([0] + [40, 120] * 15)[:30]]
    write_ffv1(tmp_path / "vfr.mkv", rng.integers(0, 255, (30, 64, 64, 3), dtype=np.uint8), 12, pts=pts,
               time_base=Fraction(1, 1000))
    write_ffv1(tmp_path / "stamps.mkv", rng.integers(0, 255, (20, 64, 64, 3), dtype=np.uint8), 12, pts=[0] * 20)
    write_video(tmp_path / "tiny.mp4", rng.integers(0, 255, (20, 24, 32, 3), dtype=np.uint8), 12)
    (tmp_path / "captions.json").write_text(json.dumps({"other.mp4": {"global": "Setting: a roof.", "shots": []}}))
    inputs = [tmp_path / "missing.mp4", tmp_path / "empty.mp4", tmp_path / "junk.mp4", tmp_path / "vfr.mkv",
              tmp_path / "stamps.mkv", tmp_path / "tiny.mp4", videos["film"]]
    report = ingest_videos(inputs, tmp_path / "ds", config=IngestConfig(**CFG), captions=tmp_path / "captions.json",
                           progress=False)
    assert [r.status for r in report.results] == ["failed"] * 6 + ["done"]
    records = {Path(v["path"]).name: v for v in read_manifest(tmp_path / "ds")["videos"]}
    assert "not found" in records["missing.mp4"]["reason"]
    assert "empty file" in records["empty.mp4"]["reason"]
    assert "unreadable" in records["junk.mp4"]["reason"]
    assert "variable frame rate" in records["vfr.mkv"]["reason"] and "ffmpeg" in records["vfr.mkv"]["reason"]
    assert "broken timestamps" in records["stamps.mkv"]["reason"]
    assert "too small" in records["tiny.mp4"]["reason"] and "--size" in records["tiny.mp4"]["reason"]
    film = records["film.mp4"]
    assert film["status"] == "done" and any("missing caption entries" in w for w in film["warnings"])
    items = list(SceneDataset(tmp_path / "ds"))
    assert sum(len(it["frames"]) for it in items) == 5  # uncaptioned shots are kept, never dropped
    assert all(p == "" for it in items for p in it["shot_prompts"])
    # failed videos are skipped on a re-run unless they changed (or --retry-failed)
    again = ingest_videos(inputs, tmp_path / "ds", config=IngestConfig(**CFG), progress=False)
    assert [r.status for r in again.results] == ["skipped"] * 7
    with pytest.raises(VideoInputError, match="empty"):
        probe_video(tmp_path / "empty.mp4")


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"detectors=\('bogus',\)"):
        IngestConfig(detectors=("bogus",))
    with pytest.raises(ValueError, match="min_shots"):
        IngestConfig(min_shots=5, max_shots=3)
    with pytest.raises(ValueError, match="size"):
        IngestConfig(size=(64,))
    with pytest.raises(ValueError, match="spatial factor"):
        ingest_videos([], tmp_path / "ds", config=IngestConfig(size=(65, 64)), autoencoder="patch", progress=False)
    assert not (tmp_path / "ds").exists()  # refused before anything was written


def test_cli_command(videos, tmp_path):
    import typer
    from typer.testing import CliRunner

    from storyreel.ingest.cli import ingest_command

    app = typer.Typer()
    app.command("ingest")(ingest_command)
    app.command("other")(lambda: None)  # two commands: `ingest` is a sub-command as under `storyreel data`
    runner = CliRunner()
    help_text = runner.invoke(app, ["ingest", "--help"]).output
    for option in ("--out", "--captions", "--detector", "--threshold", "--similarity", "--latents", "--retry-failed"):
        assert option in help_text
    result = runner.invoke(app, ["ingest", str(videos["film"]), "--out", str(tmp_path / "ds"), "--fps", "6", "--frames", "8",
                                 "--max-shots", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "1 video(s) ingested" in result.output and len(list(SceneDataset(tmp_path / "ds"))) == 2
    bad = runner.invoke(app, ["ingest", str(videos["film"]), "--out", str(tmp_path / "x"), "--detector", "bogus"])
    assert bad.exit_code == 2 and "detectors" in bad.output


def test_debug_training_recipe_runs_on_ingested_data(videos, tmp_path):
    from storyreel.train import load_recipe, run_recipe

    ingest_videos([videos["film"], videos["pillar"]], tmp_path / "ds", config=IngestConfig(**dict(CFG, size=(32, 32), clip_frames=6)),
                  progress=False)
    recipe = load_recipe("debug", [f"data.path={tmp_path / 'ds'}", "data.synth=null", f"output.dir={tmp_path / 'run'}",
                                   "train.device=cpu", "train.steps=10"])
    result = run_recipe(recipe)
    assert result.step == 10 and (Path(result.model_dir) / "config.json").is_file()


@pytest.mark.slow
def test_diffusers_vae_folder_caches_latents(videos, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True])
    vae.save_pretrained(tmp_path / "vae")
    ingest_videos([videos["film"]], tmp_path / "ds", config=IngestConfig(**CFG), autoencoder=str(tmp_path / "vae"),
                  progress=False)
    item = next(iter(SceneDataset(tmp_path / "ds")))
    assert item["meta"]["cache"]["spatial_factor"] == 8 and item["meta"]["cache"]["latent_channels"] == 4
    video = torch.stack([f.permute(1, 0, 2, 3) for f in item["frames"]]).float() / 127.5 - 1  # [N, 3, T, H, W]
    with torch.no_grad():
        expect = vae.eval().encode(video).latent_dist.mode().numpy()  # [N, 4, T', 8, 8]
    for i in range(len(item["frames"])):
        np.testing.assert_allclose(item["latents"][f"latent_{i:02d}"], expect[i], rtol=1e-5, atol=1e-5)
