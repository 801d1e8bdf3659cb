"""The ``storyreel`` command.

Every sub-command validates its inputs before doing any work and exits with code 2 and a message
that names the problem and the fix when something is wrong.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from storyreel.script import SceneScript

# Busy-waiting OpenMP threads slow torch down badly on small shared CPUs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = typer.Typer(
    name="storyreel",
    help=(
        "Long-form, multi-shot narrative video generation.\n\n"
        "Write a scene script (a global prompt with characters and setting, then one prompt per shot), "
        "check it with `storyreel validate`, turn it into video with `storyreel generate`, render its StoryWorld "
        "ground truth with `storyreel data render`, make training data with `storyreel data synth` and train "
        "models with `storyreel train`. `storyreel demo` runs the example on the shipped default."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets and ground truth: render scripts, synthesise StoryWorld shards, ingest real videos.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load_script_or_exit(path: Path):
    from storyreel.script import ScriptError, load_script

    try:
        return load_script(path)
    except ScriptError as err:
        err_console.print(f"[bold red]{path}: {len(err.errors)} problem(s)[/]", highlight=False)
        for issue in err.errors:
            err_console.print(f"  [yellow]{escape(issue.loc)}[/]: {escape(issue.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def validate(
    script: Annotated[Path, typer.Argument(help="Scene script (.yaml, .yml or .json).")],
) -> None:
    """Check a scene script and print OK or every problem found (exit code 0 or 2)."""
    parsed = _load_script_or_exit(script)
    frames = sum(parsed.shot_frames(i) for i in range(parsed.n_shots))
    w, h = parsed.settings.resolution
    console.print(
        f"[green]OK[/] {script}: {parsed.n_shots} shot(s), {len(parsed.global_.characters)} character(s), "
        f"{frames} frames at {w}x{h}, {parsed.settings.fps} fps",
        highlight=False,
        soft_wrap=True,
    )


def render_to_dir(script: SceneScript, out: Path) -> dict:
    """Render a parsed script's StoryWorld ground truth into the standard run folder layout."""
    from storyreel.outputs import SceneWriter
    from storyreel.world import VocabularyError, render_script

    try:
        rendered = render_script(script)
    except VocabularyError as err:
        _fail(str(err))
    writer = SceneWriter(out, fps=script.settings.fps)
    prompts = [script.shot_prompt_text(i) for i in range(script.n_shots)]
    t0 = time.perf_counter()
    for i, shot in enumerate(rendered.shots):
        writer.write_shot(i, shot.frames, prompt=prompts[i], meta={"boxes": [[b.to_dict() for b in frame] for frame in shot.boxes]})
    meta = {
        "kind": "storyworld-render",
        "title": script.title,
        "global_prompt": script.global_prompt_text(),
        "script": script.model_dump(mode="json", by_alias=True),
        "seed": script.settings.seed,
        "render_seconds": round(time.perf_counter() - t0, 4),
    }
    return writer.finalize(prompts=prompts, meta=meta)


@data_app.command("render")
def data_render(
    script: Annotated[Path, typer.Argument(help="Scene script whose characters use the StoryWorld vocabulary.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (scene.mp4, shots/NN.mp4, storyboard.png, scene.json).")],
) -> None:
    """Render the StoryWorld ground-truth video of a script."""
    render_to_dir(_load_script_or_exit(script), out)
    console.print(f"[green]wrote[/] {out}/scene.mp4, {out}/shots/, {out}/storyboard.png, {out}/scene.json", highlight=False)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Dataset folder (manifest.json + shard-NNNNNN.tar).")],
    scenes: Annotated[int, typer.Option("--scenes", min=1, help="Number of scenes to generate.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Dataset seed; scene j is reproducible from (seed, j).")] = 0,
    shots: Annotated[Optional[int], typer.Option("--shots", min=1, max=8, help="Shots per scene (default: 2-8 at random).")] = None,
    size: Annotated[int, typer.Option("--size", min=32, max=256, help="Square resolution in pixels.")] = 64,
    frames: Annotated[int, typer.Option("--frames", min=1, help="Frames per shot.")] = 16,
    fps: Annotated[int, typer.Option("--fps", min=1, max=120, help="Frames per second.")] = 8,
    per_shard: Annotated[int, typer.Option("--per-shard", min=1, help="Scenes per shard.")] = 256,
    long_take: Annotated[float, typer.Option("--long-take", min=0.0, max=1.0, help="Probability that a shot continues the previous one without a cut.")] = 0.1,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes that render scenes (the dataset is identical for any value).")] = 1,
    pattern_redraws: Annotated[int, typer.Option("--pattern-redraws", min=1, help="Write every scene this many times, the characters' unspoken patterns re-drawn in all copies but the first, so a model can only learn a pattern from the other shots of a sample.")] = 1,
) -> None:
    """Write a sharded StoryWorld dataset (resumable: re-running skips finished shards)."""
    from storyreel.data.synth import synth_storyworld

    path = synth_storyworld(
        out, n_scenes=scenes, seed=seed, scenes_per_shard=per_shard, n_shots=shots,
        resolution=(size, size), frames=frames, fps=fps, long_take_prob=long_take, progress=True, workers=workers,
        pattern_redraws=pattern_redraws,
    )
    console.print(f"[green]wrote[/] {scenes * pattern_redraws} scenes to {path}", highlight=False)


from storyreel.ingest.cli import ingest_command  # noqa: E402  (light: typer/rich only; the pipeline loads on use)

data_app.command("ingest")(ingest_command)

from storyreel.eval.bench import bench_command  # noqa: E402

bench_app = typer.Typer(help="Benchmarks: StoryWorld suites of the seed papers' ablations (docs/bench.md).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
bench_app.command("storyworld")(bench_command)


@app.command()
def generate(
    script: Annotated[Path, typer.Argument(help="Scene script (.yaml, .yml or .json).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder: scene.mp4, shots/NN.mp4, storyboard.png, scene.json.")],
    mode: Annotated[Optional[str], typer.Option(help="joint | autoregressive | causal | extend (default: the script's, else joint when the scene fits the model's context).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Sampling steps (default: the script's, else the model's).")] = None,
    guidance: Annotated[Optional[float], typer.Option(min=0.0, help="Classifier-free guidance scale; 1 = none.")] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, help="Overrides settings.seed; same script + seed = same video on the same device.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    model: Annotated[str, typer.Option(help="'default' (shipped), 'debug' (random weights), or a pipeline / trained model folder.")] = "default",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in OUT; finished shots are kept, not regenerated.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the shots of an earlier, different run in OUT.")] = False,
    history: Annotated[Optional[str], typer.Option(help="Beyond the context window: recency | relevance | script (the shots' `history` lists).")] = None,
    goldenmem: Annotated[bool, typer.Option("--goldenmem", help="Compress history frames with GoldenMem (experimental with the shipped default).")] = False,
    kv_cache: Annotated[bool, typer.Option("--kv-cache/--no-kv-cache", help="causal mode: reuse history keys/values (same video, faster).")] = True,
    solver: Annotated[Optional[str], typer.Option(help="euler | heun.")] = None,
    history_guidance: Annotated[Optional[float], typer.Option(min=0.0, help="History guidance weight (0 = off; default: the model's, which may differ for --mode causal): each step also runs every shot alone and pushes it towards what the other shots imply, so unspoken details carry over (one more model call per step).")] = None,
    autoguidance: Annotated[Optional[float], typer.Option(min=0.0, help="Autoguidance weight (0 = off; default: the model's; not in --mode causal): each step also runs the pipeline's small guide model and moves away from its prediction, so characters get all three unspoken patterns instead of the average (one call of the small model per step).")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="wan | cogvideox: generate with a production backbone from --weights (docs/backbones.md).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="With --backbone: its local diffusers weights folder (model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/).")] = None,
    finetuned: Annotated[Optional[Path], typer.Option(help="With --backbone: a fine-tune exported by `storyreel train wan-lora` / `cogvideox-lora` (its model/ folder).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Model weights precision: bf16 | fp16 | fp32. Default: fp32 for the embedded models (bf16 pays off for large models on a GPU); with --backbone, bf16 on CUDA and fp32 on CPU.")] = None,
    context_parallel: Annotated[bool, typer.Option("--context-parallel", help="With --backbone, joint mode under `torchrun --no-python`: split every step over the GPUs.")] = False,
) -> None:
    """Generate a multi-shot video from a scene script."""
    from storyreel.pipelines.scene import GenerationError, generate_to_dir
    from storyreel.script import ScriptError

    parsed = _load_script_or_exit(script)  # every script problem is listed before any model is loaded
    options: dict = {"kv_cache": kv_cache}
    if history is not None:
        options["history"] = history
    if goldenmem:
        options["goldenmem"] = True
    if solver is not None:
        options["solver"] = solver
    if history_guidance is not None:
        options["history_guidance"] = history_guidance
    if autoguidance is not None:
        options["autoguidance"] = autoguidance
    t0 = time.perf_counter()
    if backbone is None and (weights is not None or finetuned is not None or context_parallel):
        _fail("--weights, --finetuned and --context-parallel go with --backbone wan|cogvideox (docs/backbones.md)")
    if backbone is not None and (weights is None or model != "default" or goldenmem or solver is not None
                                 or history_guidance is not None or autoguidance is not None):
        _fail("--backbone needs --weights DIR (a local diffusers folder) and takes no --model, --goldenmem, --solver, "
              "--history-guidance or --autoguidance")
    try:
        if backbone is not None:
            from storyreel.pipelines.backbone import generate_backbone

            scene = generate_backbone(
                parsed, out, backbone=backbone, weights=weights, mode=mode, steps=steps, guidance=guidance, seed=seed,
                device=device, dtype=dtype, finetuned=finetuned, resume=resume, overwrite=overwrite, progress=True,
                context_parallel=context_parallel, **options,
            )
        else:
            scene = generate_to_dir(
                parsed, out, mode=mode, steps=steps, guidance=guidance, seed=seed, device=device, model=model,
                resume=resume, overwrite=overwrite, progress=True, dtype=dtype, **options,
            )
    except (GenerationError, ScriptError) as err:
        _fail(str(err))
    n = len(scene.get("shots", []))
    console.print(f"[green]done[/] in {time.perf_counter() - t0:.1f}s: {n} shots in {out}/", highlight=False)
    for name in ("scene.mp4", "storyboard.png", "scene.json"):
        console.print(f"  {out / name}", highlight=False)


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def train(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML path, or a name in configs/: debug, vae-small, scene-small, scene-small-causal.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override one recipe value, e.g. --set train.steps=2000 (repeatable).")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue a run exactly from its folder or a checkpoint.")] = None,
) -> None:
    """Train a model from a recipe (multi-GPU: torchrun --nproc-per-node N -m storyreel.train RECIPE)."""
    from storyreel.data import DatasetError
    from storyreel.train import CheckpointError, NonFiniteLossError, RecipeError, run_from_config

    try:
        result = run_from_config(recipe, list(set_ or []), resume)
    except (RecipeError, CheckpointError, DatasetError, NonFiniteLossError, FileNotFoundError) as err:
        _fail(str(err))
    console.print(f"[green]done[/]: step {result.step}, EMA model in {result.model_dir}", highlight=False)


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `storyreel generate` or `storyreel data render`.")],
    script: Annotated[Optional[Path], typer.Option(help="Score against this script instead of the one in scene.json.")] = None,
) -> None:
    """Score a run against its script from pixels (writes RUN_DIR/eval.json), next to the StoryWorld ground truth."""
    from rich.table import Table

    from storyreel.eval.run import evaluate_run
    from storyreel.world import VocabularyError

    try:
        report = evaluate_run(run_dir, script=_load_script_or_exit(script) if script is not None else None)
    except (VocabularyError, ValueError) as err:
        _fail(str(err))
    table = Table(title=f"{run_dir} ({report.get('mode') or 'render'})")
    table.add_column("metric")
    table.add_column("run", justify="right")
    table.add_column("ground truth", justify="right")
    for name, value in report["scores"].items():
        truth = report["ground_truth"].get(name)
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(name, fmt(value), fmt(truth))
    console.print(table)
    console.print(f"wrote {run_dir / 'eval.json'}", highlight=False)


@app.command()
def demo(
    script: Annotated[Path, typer.Option(help="Scene script to run.")] = Path("examples/meeting-4shots.yaml"),
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("outputs/demo"),
    steps: Annotated[Optional[int], typer.Option(min=1, help="Sampling steps (default: the model's).")] = None,
) -> None:
    """The main job on the shipped default (what `make demo` runs).

    Generates the script with the shipped default pipeline into OUT, and renders its StoryWorld
    ground truth into OUT/ground-truth so the two can be compared side by side.
    """
    from storyreel.pipelines.scene import GenerationError, generate_to_dir

    parsed = _load_script_or_exit(script)
    t0 = time.perf_counter()
    try:
        scene = generate_to_dir(parsed, out, steps=steps, device="cpu", model="default", overwrite=True, progress=True)
    except GenerationError as err:
        _fail(str(err))
    gen_s = time.perf_counter() - t0
    render_to_dir(parsed, out / "ground-truth")
    n = len(scene.get("shots", []))
    console.print(f"[green]generated[/] {n} shots with the shipped default in {gen_s:.1f}s (CPU, {scene.get('mode', '?')} mode)", highlight=False)
    for name in ("scene.mp4", "storyboard.png", "scene.json"):
        console.print(f"  {out / name}", highlight=False)
    console.print(f"  {out / 'shots'}/01.mp4 ... {n:02d}.mp4", highlight=False)
    console.print(f"[green]ground truth[/] (StoryWorld render of the same script): {out / 'ground-truth'}/storyboard.png", highlight=False)
    console.print(
        "[yellow]Note[/]: the shipped default is an early, briefly trained checkpoint (see README, 'Honest scope'); "
        "compare its storyboard with the ground truth.",
        highlight=False,
    )


@app.command()
def info() -> None:
    """Versions, devices and registries."""
    import platform

    import torch

    import storyreel

    console.print(f"storyreel {storyreel.__version__}  python {platform.python_version()}  torch {torch.__version__}")
    from storyreel.autoencoders import AUTOENCODERS
    from storyreel.models import MODELS
    from storyreel.nn import BACKENDS, POLICY_NAMES
    from storyreel.text import TEXT_ENCODERS

    console.print(f"cuda: {torch.cuda.is_available()}  threads: {torch.get_num_threads()}")
    console.print(f"models: {', '.join(MODELS)}", highlight=False)
    console.print(f"autoencoders: {', '.join(AUTOENCODERS)}", highlight=False)
    console.print(f"text encoders: {', '.join(TEXT_ENCODERS)}", highlight=False)
    console.print(f"attention policies: {', '.join(POLICY_NAMES)}; backends: {', '.join(BACKENDS)}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
