"""Score a run folder (``scene.json`` + ``shots/NN.mp4``) against its script and the StoryWorld ground truth."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from storyreel.eval.metrics import score_scene, summarize
from storyreel.outputs import SceneWriter
from storyreel.script import SceneScript, load_script, parse_script
from storyreel.utils import atomic_write

__all__ = ["EVAL_FILE", "evaluate_run"]

EVAL_FILE = "eval.json"


def _clean(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def evaluate_run(run_dir: str | os.PathLike[str], *, script: str | os.PathLike[str] | SceneScript | None = None) -> dict[str, Any]:
    """Score the shots of ``run_dir`` with :func:`score_scene` and write ``run_dir/eval.json`` (atomically).

    The script is the one recorded in ``scene.json`` unless ``script`` is given. The StoryWorld ground truth
    of the same script is rendered and scored with the same metrics, as the upper bound to read the run against.
    Raises ``ValueError`` naming the file and the fix when the folder is not a finished run.
    """
    from storyreel.world import render_script

    run = Path(run_dir)
    meta_path = run / "scene.json"
    if not meta_path.is_file():
        raise ValueError(f"{run} holds no scene.json: not a finished run folder. Pass the -o folder of "
                         "`storyreel generate` or `storyreel data render` (finish an interrupted run with --resume).")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if isinstance(script, SceneScript):
        parsed = script
    elif script is not None:
        parsed = load_script(script)
    elif isinstance(meta.get("script"), dict):
        parsed = parse_script(meta["script"], base_dir=run)
    else:
        raise ValueError(f"{meta_path} records no script; pass the script with --script SCRIPT")
    writer = SceneWriter(run, fps=int(meta.get("fps", parsed.settings.fps)))
    finished = writer.finished_shots()
    missing = [i + 1 for i in range(parsed.n_shots) if i not in finished]
    if missing:
        raise ValueError(f"{run}: shot(s) {missing} are missing or fail their checksum; re-run the generation with --resume")
    videos = [writer.read_shot(i) for i in range(parsed.n_shots)]
    scores = score_scene(videos, parsed)
    truth = summarize(score_scene([s.frames for s in render_script(parsed).shots], parsed))
    report = {
        "run": str(run),
        "model": meta.get("model"),
        "mode": meta.get("mode"),
        "scores": {k: _clean(v) for k, v in summarize(scores).items()},
        "ground_truth": {k: _clean(v) for k, v in truth.items()},
        "details": {k: r.to_dict() for k, r in scores.items()},
    }
    with atomic_write(run / EVAL_FILE, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")
    return report
