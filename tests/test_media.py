"""Video/image I/O, storyboard and frame/tensor conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from storyreel.media import (
    MediaError,
    frames_to_tensor,
    make_storyboard,
    read_image,
    read_video,
    tensor_to_frames,
    video_info,
    write_image,
    write_storyboard,
    write_video,
)

COLOURS = [(220, 40, 40), (40, 80, 230), (40, 190, 60), (95, 108, 130)]


def quadrant_clip(t: int = 6, h: int = 48, w: int = 64) -> np.ndarray:
    """Four flat-colour quadrants whose colours rotate every frame: uint8 [T, H, W, 3]."""
    frames = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        for q in range(4):
            ys = slice(0, h // 2) if q < 2 else slice(h // 2, h)
            xs = slice(0, w // 2) if q % 2 == 0 else slice(w // 2, w)
            frames[i, ys, xs] = COLOURS[(q + i) % 4]
    return frames


def interiors(frames: np.ndarray, margin: int = 6) -> np.ndarray:
    """Pixels of each quadrant at least ``margin`` away from colour edges: [T, N, 3]."""
    h, w = frames.shape[1:3]
    parts = []
    for ys in (slice(margin, h // 2 - margin), slice(h // 2 + margin, h - margin)):
        for xs in (slice(margin, w // 2 - margin), slice(w // 2 + margin, w - margin)):
            parts.append(frames[:, ys, xs].reshape(frames.shape[0], -1, 3))
    return np.concatenate(parts, axis=1)


def test_video_round_trip_keeps_count_size_and_colours(tmp_path):
    clip = quadrant_clip()
    path = write_video(tmp_path / "clip.mp4", clip, fps=8)
    back = read_video(path)
    assert back.shape == clip.shape and back.dtype == np.uint8
    err = np.abs(interiors(back).astype(np.int16) - interiors(clip).astype(np.int16)).mean()
    assert err < 6, err
    # frames stay in order: each frame's top-left quadrant has its own colour
    for i in range(clip.shape[0]):
        got = back[i, 10:14, 10:14].reshape(-1, 3).mean(0)
        assert np.abs(got - np.array(COLOURS[i % 4])).max() < 10
    assert video_info(path) == {"frames": 6, "fps": 8, "width": 64, "height": 48}
    assert not list(tmp_path.glob(".*tmp*")), "temporary files must not remain"


def test_write_video_is_deterministic(tmp_path):
    clip = quadrant_clip(t=3, h=32, w=32)
    a = write_video(tmp_path / "a.mp4", clip, 8).read_bytes()
    b = write_video(tmp_path / "b.mp4", clip, 8).read_bytes()
    assert a == b


def test_odd_size_is_refused_with_fix(tmp_path):
    with pytest.raises(ValueError, match=r"63x48.*even.*62x48"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 48, 63, 3), np.uint8), fps=8)
    assert not (tmp_path / "odd.mp4").exists()


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 3), np.uint8), r"\[T, H, W, 3\]"),
        (np.zeros((0, 8, 8, 3), np.uint8), "at least one frame"),
    ],
)
def test_bad_frames_are_refused(tmp_path, frames, match):
    with pytest.raises(ValueError, match=match):
        write_video(tmp_path / "x.mp4", frames, fps=8)


def test_bad_fps_and_crf(tmp_path):
    clip = quadrant_clip(t=1, h=8, w=8)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "x.mp4", clip, fps=0)
    with pytest.raises(ValueError, match="crf"):
        write_video(tmp_path / "x.mp4", clip, fps=8, crf=99)


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"definitely not a video" * 10)
    with pytest.raises(MediaError, match="junk.mp4.*re-create"):
        read_video(junk)
    with pytest.raises(MediaError):
        video_info(junk)


def test_truncated_video_is_an_error_or_short(tmp_path):
    path = write_video(tmp_path / "clip.mp4", quadrant_clip(t=8), fps=8)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(MediaError):
        read_video(path)


def test_image_round_trip(tmp_path):
    img = quadrant_clip(t=1, h=20, w=30)[0]
    path = write_image(tmp_path / "img.png", img)
    assert np.array_equal(read_image(path), img)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    back = read_image(write_image(tmp_path / "g.png", grey))
    assert back.shape == (3, 4, 3) and np.array_equal(back[..., 1], grey)
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "nope.png")


def test_storyboard_size_and_content(tmp_path):
    shots = [quadrant_clip(t=8, h=32, w=32), quadrant_clip(t=2, h=32, w=32)]
    prompts = ["[SHOT CUT] Wide shot of Character 1 moving right across the whole slate room. " * 2, "Close-up."]
    board = make_storyboard(shots, prompts, frames_per_shot=4, cell=64, title="Meeting")
    h, w, c = board.shape
    assert c == 3 and board.dtype == np.uint8
    assert w >= 4 * 64 and h >= 2 * 64
    # every selected frame of shot 1 is pasted: its cells hold exactly the 4 quadrant colours
    colours = {tuple(p) for p in board.reshape(-1, 3)}
    assert all(col in colours for col in COLOURS)
    assert board.std() > 10, "storyboard must not be blank"
    # prompt text is drawn (light pixels exist that are not part of any frame)
    assert (board.min(axis=-1) > 200).sum() > 50
    # a longer prompt produces a taller board (wrapping)
    short = make_storyboard(shots, ["a", "b"], frames_per_shot=4, cell=64)
    assert short.shape[1] == w and short.shape[0] < h
    path = write_storyboard(tmp_path / "sb.png", shots, prompts, cell=64)
    assert read_image(path).shape[1] == w


def test_storyboard_nearest_neighbour_and_spacing():
    clip = np.zeros((5, 4, 4, 3), np.uint8)
    for i in range(5):
        clip[i] = i * 50  # frame i has grey level 50 i
    board = make_storyboard([clip], ["x"], frames_per_shot=3, cell=32)
    levels = {int(v) for v in np.unique(board[..., 0])}
    assert {0, 100, 200} <= levels  # frames 0, 2, 4 picked (evenly spaced)
    assert 50 not in levels and 150 not in levels  # nearest neighbour: no blended greys


def test_storyboard_validation():
    clip = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="one entry per shot"):
        make_storyboard([clip], ["a", "b"])
    with pytest.raises(ValueError, match="at least one shot"):
        make_storyboard([], [])
    with pytest.raises(ValueError, match="frames_per_shot"):
        make_storyboard([clip], ["a"], frames_per_shot=0)


def test_frames_tensor_round_trip():
    frames = np.random.default_rng(0).integers(0, 256, (3, 6, 10, 3), dtype=np.uint8)
    x = frames_to_tensor(frames)
    assert x.shape == (3, 3, 6, 10) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[1, 2, 3, 4], torch.tensor(frames[1, 3, 4, 2] / 127.5 - 1, dtype=torch.float32))
    assert np.array_equal(tensor_to_frames(x), frames)
    assert np.array_equal(tensor_to_frames(x + 1e-3), frames)  # rounding, not truncation
    clipped = tensor_to_frames(torch.full((1, 3, 2, 2), 5.0))
    assert clipped.dtype == np.uint8 and (clipped == 255).all()
    assert (tensor_to_frames(torch.full((1, 3, 2, 2), -5.0)) == 0).all()
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        tensor_to_frames(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="uint8"):
        frames_to_tensor(np.zeros((1, 2, 2, 3), np.float32))
