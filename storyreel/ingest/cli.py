"""``storyreel data ingest``: the typer command (mounted by ``storyreel/cli.py``).

``ingest_command`` is a plain typer-compatible function; ``data_app.command("ingest")(ingest_command)``
mounts it. It validates every option before any video is opened and exits with code 2 and a
message naming the problem and the fix when something is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["VIDEO_SUFFIXES", "expand_videos", "ingest_command", "parse_size"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv")


def parse_size(text: str) -> tuple[int, int]:
    """``"64"`` → (64, 64); ``"96x64"`` → (96, 64) (width x height)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--size {text!r} is not N or WIDTHxHEIGHT (e.g. 64 or 96x64)") from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ValueError(f"--size {text!r} is not N or WIDTHxHEIGHT (e.g. 64 or 96x64)")


def expand_videos(paths: list[Path]) -> list[Path]:
    """Files as given; folders become their video files (by suffix, recursively, sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
        else:
            out.append(p)
    return out


def ingest_command(
    videos: Annotated[list[Path], typer.Argument(help="Video files or folders (folders: every video file inside, recursively).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder (manifest.json + shard-NNNNNN.tar + videos/<id>.json). Re-run into it to resume or add videos.")],
    captions: Annotated[Optional[Path], typer.Option("--captions", help="Caption file (.json or .csv) keyed by video and shot time; see docs/ingest.md.")] = None,
    captioner: Annotated[Optional[str], typer.Option("--captioner", help="Local captioner 'package.module:Class' for shots without a caption in --captions.")] = None,
    detector: Annotated[Optional[list[str]], typer.Option("--detector", help="content | adaptive | threshold (fades); repeat to merge several. Default: content.")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="ContentDetector threshold (scenedetect detect-content -t).")] = 27.0,
    adaptive_threshold: Annotated[float, typer.Option("--adaptive-threshold", help="AdaptiveDetector threshold (detect-adaptive -t).")] = 3.0,
    min_content_val: Annotated[float, typer.Option("--min-content-val", help="AdaptiveDetector min_content_val (detect-adaptive -c).")] = 15.0,
    adaptive_window: Annotated[int, typer.Option("--adaptive-window", help="AdaptiveDetector window in frames (detect-adaptive -f).")] = 2,
    fade_threshold: Annotated[float, typer.Option("--fade-threshold", help="ThresholdDetector brightness threshold (detect-threshold -t).")] = 12.0,
    min_scene_len: Annotated[int, typer.Option("--min-scene-len", help="Detectors' minimum shot length in frames (scenedetect -m).")] = 15,
    luma_only: Annotated[bool, typer.Option("--luma-only", help="Content/adaptive detectors use brightness only.")] = False,
    backend: Annotated[str, typer.Option("--backend", help="PySceneDetect decoder: pyav (same frame numbers as the kept frames) or opencv (faster).")] = "pyav",
    size: Annotated[str, typer.Option("--size", help="Stored frame size: N (square) or WIDTHxHEIGHT.")] = "64",
    fps: Annotated[int, typer.Option("--fps", help="Frame rate of the stored clips.")] = 8,
    frames: Annotated[int, typer.Option("--frames", help="Frames per stored shot clip.")] = 16,
    short_shots: Annotated[str, typer.Option("--short-shots", help="Shots shorter than a clip: drop, or hold (repeat edge frames).")] = "drop",
    min_shot_seconds: Annotated[float, typer.Option("--min-shot-seconds", help="Drop shots shorter than this.")] = 0.0,
    min_brightness: Annotated[float, typer.Option("--min-brightness", help="Drop shots whose keyframe is darker than this (0-255; 0 keeps all).")] = 8.0,
    border_threshold: Annotated[int, typer.Option("--border-threshold", help="Black-border brightness (0-255; 0 disables border removal).")] = 20,
    max_border: Annotated[float, typer.Option("--max-border", help="At most this fraction of width/height removed per side as border.")] = 0.3,
    max_upscale: Annotated[float, typer.Option("--max-upscale", help="Largest allowed upscaling to --size (1 = never upscale).")] = 1.0,
    max_shots: Annotated[int, typer.Option("--max-shots", help="Shots per scene sample at most.")] = 8,
    min_shots: Annotated[int, typer.Option("--min-shots", help="Scene samples with fewer shots are dropped.")] = 2,
    similarity: Annotated[Optional[float], typer.Option("--similarity", help="Start a new scene where consecutive keyframes' colour similarity (0-1) falls below this.")] = None,
    split_on_dropped: Annotated[bool, typer.Option("--split-on-dropped/--bridge-dropped", help="A dropped shot ends the scene (default) or is bridged.")] = True,
    per_shard: Annotated[int, typer.Option("--per-shard", help="Scenes per tar shard.")] = 64,
    latents: Annotated[Optional[str], typer.Option("--latents", help="Cache latents with this autoencoder: default (shipped), patch, vae-debug/tiny/small, a storyreel save_pretrained folder or a diffusers VAE folder.")] = None,
    text_embeddings: Annotated[Optional[str], typer.Option("--text-embeddings", help="Cache text states with this encoder: minilm or hashing.")] = None,
    latent_dtype: Annotated[str, typer.Option("--latent-dtype", help="float32 or float16 for cached arrays.")] = "float32",
    device: Annotated[str, typer.Option("--device", help="Device for --latents / --text-embeddings: cpu, cuda, cuda:N.")] = "cpu",
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Retry videos recorded as failed even if unchanged.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Ingest real videos into a scene dataset (the same format as `storyreel data synth`).

    Finds shots with PySceneDetect, groups consecutive shots into scenes, stores per shot a clip of --frames frames at --fps around the mid-shot keyframe (black borders removed, centre-cropped, resized to --size), joins captions, and optionally caches latents and text states.

    Resumable: re-running skips finished videos. Bad videos are recorded in OUT/manifest.json with the reason and the run goes on. Guide: docs/ingest.md.
    """
    from storyreel.ingest.captions import CaptionFileError, load_captioner
    from storyreel.ingest.config import IngestConfig
    from storyreel.ingest.pipeline import ingest_videos

    console, err = Console(), Console(stderr=True)

    def fail(message: str) -> None:
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)

    files = expand_videos(list(videos))
    if not files:
        fail("no video files found in the given paths; pass video files or folders holding .mp4/.mov/.mkv/... files")
    try:
        config = IngestConfig(
            detectors=tuple(detector or ("content",)), content_threshold=threshold, adaptive_threshold=adaptive_threshold,
            adaptive_min_content_val=min_content_val, adaptive_window=adaptive_window, fade_threshold=fade_threshold,
            min_scene_len=min_scene_len, luma_only=luma_only, backend=backend, clip_frames=frames, fps=fps,
            short_shots=short_shots, min_shot_seconds=min_shot_seconds, min_brightness=min_brightness, size=parse_size(size),
            border_threshold=border_threshold, max_border=max_border, max_upscale=max_upscale, max_shots=max_shots,
            min_shots=min_shots, similarity_threshold=similarity, split_on_dropped=split_on_dropped,
            scenes_per_shard=per_shard, latent_dtype=latent_dtype,
        )
        plug = load_captioner(captioner) if captioner else None
        report = ingest_videos(
            files, out, config=config, captions=captions, captioner=plug, autoencoder=latents, text_encoder=text_embeddings,
            device=device, retry_failed=retry_failed, progress=not quiet,
        )
    except (ValueError, CaptionFileError, FileNotFoundError) as exc:
        fail(str(exc))
    failed = [r for r in report.results if r.status == "failed"]
    if failed:
        table = Table(title=f"{len(failed)} video(s) not ingested (recorded in {out}/manifest.json)")
        table.add_column("video")
        table.add_column("reason")
        for r in failed:
            table.add_row(escape(r.video), escape(r.reason or ""))
        console.print(table)
    warned = [r for r in report.results if r.status == "done" and r.warnings]
    for r in warned:
        console.print(f"[yellow]note[/] {escape(r.video)}: {escape('; '.join(r.warnings))}", highlight=False, soft_wrap=True)
    speed = f" ({report.frames_per_second:.0f} source frames/s)" if report.frames_per_second > 0 else ""
    console.print(f"[green]done[/] {escape(report.summary())}{speed}", highlight=False)
