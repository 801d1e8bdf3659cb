"""SceneWriter: the run-folder layout, shot verification, failure isolation and finalize."""

from __future__ import annotations

import json

import numpy as np
import pytest

from storyreel.media import read_image, read_video, video_info
from storyreel.outputs import SceneWriter, sha256_file


def shot(k: int, t: int = 4, size: int = 32) -> np.ndarray:
    """A flat-colour clip whose colour depends on k: uint8 [T, size, size, 3]."""
    frames = np.zeros((t, size, size, 3), np.uint8)
    frames[...] = ((60 * k + 40) % 256, (90 * k + 80) % 256, 200)
    return frames


def test_paths_are_one_based_two_digits(tmp_path):
    w = SceneWriter(tmp_path, fps=8)
    assert w.shot_path(0) == tmp_path / "shots" / "01.mp4"
    assert w.shot_path(11) == tmp_path / "shots" / "12.mp4"
    assert w.sidecar_path(2) == tmp_path / "shots" / "03.json"
    with pytest.raises(ValueError, match="non-negative"):
        w.shot_path(-1)
    with pytest.raises(ValueError, match="fps"):
        SceneWriter(tmp_path, fps=0)


def test_shots_are_recognised_after_write(tmp_path):
    w = SceneWriter(tmp_path / "run", fps=8)
    assert w.finished_shots() == []
    side = w.write_shot(0, shot(0), prompt="[SHOT CUT] Wide shot.", meta={"k": 1})
    w.write_shot(2, shot(2), prompt="Third.")
    assert w.finished_shots() == [0, 2]
    assert side["sha256"] == sha256_file(w.shot_path(0)) and side["frames"] == 4
    on_disk = json.loads(w.sidecar_path(0).read_text())
    assert on_disk["prompt"] == "[SHOT CUT] Wide shot." and on_disk["meta"] == {"k": 1}
    # a fresh writer on the same folder sees the same state (resume)
    assert SceneWriter(tmp_path / "run", fps=8).finished_shots() == [0, 2]
    back = w.read_shot(2)
    assert back.shape == (4, 32, 32, 3)
    assert np.abs(back.astype(int) - shot(2)).mean() < 3


def test_corrupt_or_partial_shots_are_not_counted(tmp_path):
    w = SceneWriter(tmp_path, fps=8)
    for i in range(4):
        w.write_shot(i, shot(i), prompt=f"shot {i}")
    data = w.shot_path(0).read_bytes()
    w.shot_path(0).write_bytes(data[:-10] + b"0123456789")  # corrupted mp4
    w.sidecar_path(1).unlink()  # mp4 without sidecar (crash between the two writes)
    w.shot_path(2).unlink()  # sidecar without mp4
    assert w.finished_shots() == [3]
    with pytest.raises(FileNotFoundError, match="01.mp4.*write it again"):
        w.read_shot(0)
    w.sidecar_path(3).write_text("{not json")
    assert w.finished_shots() == []


def test_failure_in_later_shot_leaves_earlier_shots_identical(tmp_path):
    w = SceneWriter(tmp_path, fps=8)
    w.write_shot(0, shot(0), prompt="a")
    w.write_shot(1, shot(1), prompt="b")
    before = {p.name: p.read_bytes() for p in (tmp_path / "shots").iterdir()}
    with pytest.raises(ValueError, match="even"):
        w.write_shot(2, np.zeros((4, 31, 32, 3), np.uint8), prompt="c")  # odd size fails in the encoder step
    with pytest.raises(ValueError, match="JSON"):
        w.write_shot(2, shot(2), prompt="c", meta={"x": object()})
    after = {p.name: p.read_bytes() for p in (tmp_path / "shots").iterdir()}
    assert after == before
    assert w.finished_shots() == [0, 1]
    # rewriting shot 1 touches neither shot 0's files nor anything else
    w.write_shot(1, shot(5), prompt="b2")
    assert (tmp_path / "shots" / "01.mp4").read_bytes() == before["01.mp4"]
    assert (tmp_path / "shots" / "01.json").read_bytes() == before["01.json"]
    assert w.finished_shots() == [0, 1]


def test_finalize_writes_scene_storyboard_and_json(tmp_path):
    w = SceneWriter(tmp_path, fps=8)
    prompts = ["[SHOT CUT] Wide shot of Character 1.", "[SHOT CUT] Close-up of Character 2.", "Character 2 jumps."]
    for i, t in enumerate((4, 6, 2)):
        w.write_shot(i, shot(i, t=t), prompt=prompts[i])
    scene = w.finalize(prompts=prompts, meta={"title": "Meeting", "seed": 3})
    for name in ("scene.mp4", "storyboard.png", "scene.json"):
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "scene.json").read_text()) == scene
    assert scene["title"] == "Meeting" and scene["seed"] == 3 and scene["fps"] == 8
    assert [s["index"] for s in scene["shots"]] == [0, 1, 2]
    assert [s["frames"] for s in scene["shots"]] == [4, 6, 2]
    assert [s["file"] for s in scene["shots"]] == ["shots/01.mp4", "shots/02.mp4", "shots/03.mp4"]
    assert [s["prompt"] for s in scene["shots"]] == prompts
    assert all(s["sha256"] == sha256_file(tmp_path / s["file"]) for s in scene["shots"])
    assert scene["created"] and scene["total_frames"] == 12
    assert video_info(tmp_path / "scene.mp4") == {"frames": 12, "fps": 8, "width": 32, "height": 32}
    full = read_video(tmp_path / "scene.mp4")
    assert np.abs(full[4:10].astype(int) - shot(1, t=6)).mean() < 3  # shots concatenated in order
    board = read_image(tmp_path / "storyboard.png")
    assert board.shape[0] > 3 * 32 and board.std() > 10


def test_finalize_refuses_missing_shots_and_reserved_keys(tmp_path):
    w = SceneWriter(tmp_path, fps=8)
    w.write_shot(0, shot(0), prompt="a")
    with pytest.raises(ValueError, match=r"shots \[1\] \(02.mp4\)"):
        w.finalize(prompts=["a", "b"], meta={})
    with pytest.raises(ValueError, match="reserved"):
        w.finalize(prompts=["a"], meta={"shots": []})
    assert not (tmp_path / "scene.json").exists()
    scene = w.finalize(meta={})  # prompts=None: every finished shot with its recorded prompt
    assert [s["prompt"] for s in scene["shots"]] == ["a"]


def test_failed_finalize_keeps_shots(tmp_path):
    w = SceneWriter(tmp_path, fps=8)
    w.write_shot(0, shot(0), prompt="a")
    w.write_shot(1, shot(1, size=16), prompt="b")  # different size: scene.mp4 cannot be made
    before = {p.name: p.read_bytes() for p in (tmp_path / "shots").iterdir()}
    with pytest.raises(ValueError, match="resolution"):
        w.finalize(prompts=["a", "b"], meta={})
    assert {p.name: p.read_bytes() for p in (tmp_path / "shots").iterdir()} == before
    assert not (tmp_path / "scene.mp4").exists() and not (tmp_path / "scene.json").exists()
