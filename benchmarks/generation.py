"""Generation timings of the shipped default (or any pipeline): the demo budget, and the causal KV cache.

    python benchmarks/generation.py --out benchmarks/results/generation.md            # CPU
    python benchmarks/generation.py --device cuda --out benchmarks/results/generation-gpu.md

    python benchmarks/generation.py --device cuda --random base --size 128 --frames 33   # a larger random model
    python benchmarks/generation.py --device cuda --random large --ae-patch 1 4 4          # 2.0 B, 1,024 tokens per shot

Measures (1) the `make demo` job: the 4-shot example in its default mode and steps, wall time of
generation only (model already loaded); (2) per-shot time of the first and last shot of an 8-shot
scene in `causal` mode with the KV cache and without it (history recomputed every step);
(3) `autoregressive` vs `joint` total time on the 4-shot example.

``--random NAME`` times a randomly initialised MMDiT preset (``storyreel.models.MODELS``) with the exact
patch autoencoder (``--ae-patch``, default 1 2 2) and the hashing text encoder instead of a trained pipeline, at
``--size`` pixels and ``--frames`` frames per shot: the KV cache pays off when a step is compute-bound, which the
7.8 M-parameter default at 64×64 is not on a GPU (kernel launches dominate there). Every table also gives the
FLOP model's ratios (``MultiShotMMDiT.flops_per_forward``) next to the measured ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from _machine import cpu_name, emit  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from storyreel.pipelines.scene import GenerationEvent, ScenePipeline  # noqa: E402
from storyreel.script import load_script  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed_generate(pipe: ScenePipeline, script, **kw) -> tuple[float, list[float]]:
    """Total seconds and per-shot seconds (time between consecutive "shot" events)."""
    marks: list[float] = []

    def on_event(ev: GenerationEvent) -> None:
        if ev.kind == "shot":
            marks.append(time.perf_counter())

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    pipe.generate(script, callback=on_event, **kw)
    sync()
    total = time.perf_counter() - t0
    per_shot = [b - a for a, b in zip([t0, *marks[:-1]], marks)]
    return total, per_shot


def flop_model(pipe: ScenePipeline, script) -> tuple[float, float]:
    """FLOP-model ratios for causal generation of ``script`` (``MultiShotMMDiT.flops_per_forward``): the last shot
    over the first with the KV cache, and the last shot without the cache over with it. Counts every model call of a
    step (conditional, unconditional when guided, the "alone" branch under history guidance)."""
    from storyreel.nn.embeddings import patch_grid
    from storyreel.scene_inputs import scene_layout

    model = pipe.causal
    plan = pipe.check(script, mode="causal")
    grid = patch_grid(tuple(plan.latent_shapes[0][1:]), tuple(model.config.patch_size))
    g = 1 if pipe.global_prompt else 0  # the global prompt segment, cached before any shot
    n = min(script.n_shots, plan.window)

    def layout(k: int):
        return scene_layout([grid] * k, text_len=model.config.text_len, global_prompt=pipe.global_prompt)

    branches = 2 if plan.guidance != 1.0 else 1
    alone = 1 if plan.history_guidance else 0
    first = (branches + alone) * model.flops_per_forward(layout(1), n_cached_segments=g)
    cached_last = (branches * model.flops_per_forward(layout(n), n_cached_segments=g + 2 * (n - 1))
                   + alone * model.flops_per_forward(layout(1), n_cached_segments=g))
    full_last = (branches * model.flops_per_forward(layout(n))
                 + alone * model.flops_per_forward(layout(n), policy="isolated_shots"))
    return cached_last / first, full_last / cached_last


def random_pipeline(name: str, *, device: str, ae_patch: tuple[int, int, int] = (1, 2, 2)) -> ScenePipeline:
    """A pipeline around randomly initialised ``name`` models (bidirectional + causal), exact patch autoencoder,
    hashing text encoder: timings only. The models are built on ``device`` (initialising 2 × 2 B parameters on
    the host takes minutes)."""
    from storyreel.autoencoders import get_autoencoder
    from storyreel.models import MultiShotMMDiT, get_model_config
    from storyreel.text import get_text_encoder

    ae = get_autoencoder("patch", patch=tuple(ae_patch))
    text_len = 32
    kw = dict(in_channels=ae.latent_channels, text_dim=64, text_len=text_len, max_shots=8)
    torch.manual_seed(0)
    with torch.device(device):
        scene = MultiShotMMDiT(get_model_config(name, **kw))
        causal = MultiShotMMDiT(get_model_config(name, attn_policy="causal_shots", **kw))
    spec = {"name": "hashing", "kwargs": {"dim": 64}}
    pipe = ScenePipeline(scene=scene, causal=causal, autoencoder=ae, text_encoder=get_text_encoder("hashing", dim=64, max_length=text_len),
                         text_encoder_spec=spec, autoencoder_spec={"name": "patch", "kwargs": {"patch": list(ae_patch)}},
                         name=f"random {name} ({sum(p.numel() for p in scene.parameters()) / 1e6:.1f} M parameters)")
    return pipe.to(device)


def example(name: str, *, size: int | None, frames: int | None):
    """An example script, optionally at another resolution / frame count."""
    import yaml

    from storyreel.script import parse_script

    path = ROOT / "examples" / name
    if size is None and frames is None:
        return load_script(path)
    data = yaml.safe_load(path.read_text())
    settings = data.setdefault("settings", {})
    if size is not None:
        settings["resolution"] = [size, size]
    if frames is not None:
        settings["frames"] = frames
        for shot in data.get("shots", []):
            shot.pop("frames", None)
    return parse_script(data, base_dir=path.parent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pipeline's)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--random", default=None, metavar="NAME", help="time a random MMDiT preset instead of --model")
    ap.add_argument("--size", type=int, default=None, help="with --random: square resolution in pixels")
    ap.add_argument("--frames", type=int, default=None, help="with --random: frames per shot")
    ap.add_argument("--ae-patch", type=int, nargs=3, default=(1, 2, 2), metavar=("T", "H", "W"),
                    help="with --random: the patch autoencoder's patch (fewer tokens per shot with larger patches)")
    ap.add_argument("--tf32", action="store_true",
                    help="on CUDA: TF32 tensor-core matmuls for the fp32 models (a 2 B random model at full fp32 "
                         "precision runs ~8x slower; ratios are unaffected)")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                    help="the scene models' weights (ScenePipeline.to(device, dtype)); sampling stays float32")
    ap.add_argument("--backend", default="auto", choices=("auto", "dense", "grouped", "flex"),
                    help="attention backend of every model call (default: auto, the pipeline's own choice)")
    args = ap.parse_args()
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.random:
        pipe = random_pipeline(args.random, device=args.device, ae_patch=tuple(args.ae_patch))
    else:
        pipe = ScenePipeline.from_pretrained(args.model, device=args.device)
    pipe.to(args.device, args.dtype)
    demo = example("meeting-4shots.yaml", size=args.size, frames=args.frames)
    chase = example("chase-8shots.yaml", size=args.size, frames=args.frames)
    steps = args.steps or pipe.defaults.steps
    size = f"{demo.settings.resolution[0]}×{demo.settings.resolution[1]}, {demo.shot_frames(0)} frames per shot"

    b = args.backend
    timed_generate(pipe, demo, steps=2, backend=b)  # warm-up: loads the text encoder, builds attention plans
    rows = []
    demo_s, _ = timed_generate(pipe, demo, steps=steps, backend=b)
    rows.append(("demo: 4 shots, joint (default mode)", f"{demo_s:.1f} s", "≤ 60 s on 2 CPU cores"))
    ar_s, _ = timed_generate(pipe, demo, steps=steps, mode="autoregressive", backend=b)
    rows.append(("4 shots, autoregressive", f"{ar_s:.1f} s", f"{ar_s / demo_s:.2f}× joint"))
    with_cache, shots_c = timed_generate(pipe, chase, steps=steps, mode="causal", kv_cache=True, backend=b)
    without, shots_n = timed_generate(pipe, chase, steps=steps, mode="causal", kv_cache=False, backend=b)
    growth, speedup = flop_model(pipe, chase)
    rows.append(("8 shots, causal with KV cache", f"{with_cache:.1f} s",
                 f"shot 1 {shots_c[0]:.2f} s, shot 8 {shots_c[-1]:.2f} s (shot 8 / shot 1 = {shots_c[-1] / shots_c[0]:.2f}×; "
                 f"FLOP model {growth:.2f}×)"))
    rows.append(("8 shots, causal without cache", f"{without:.1f} s",
                 f"shot 1 {shots_n[0]:.2f} s, shot 8 {shots_n[-1]:.2f} s (cache speed-up on shot 8: {shots_n[-1] / shots_c[-1]:.2f}×; "
                 f"FLOP model {speedup:.2f}×)"))

    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{cpu_name()}, {torch.get_num_threads()} threads"
    lines = [
        "# Generation timings",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {dev}; python {platform.python_version()}, torch {torch.__version__}",
        f"- load average at start: {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        f"- model: {pipe.name}; {size}; steps {steps}, guidance {pipe.defaults.guidance}, history guidance "
        f"{pipe.defaults.history_guidance:g}, solver {pipe.defaults.solver}; "
        f"{args.dtype} weights{', TF32 matmuls' if args.tf32 else ''}; attention backend {b}; "
        "generation only (model loaded, after a warm-up run)",
        "- command: `python benchmarks/generation.py" + (f" --device {args.device}" if args.device != "cpu" else "")
        + (f" --random {args.random}" if args.random else "") + (f" --steps {args.steps}" if args.steps else "")
        + (" --tf32" if args.tf32 else "") + (f" --dtype {args.dtype}" if args.dtype != "fp32" else "")
        + (f" --backend {b}" if b != "auto" else "") + (f" --size {args.size}" if args.size else "")
        + (f" --frames {args.frames}" if args.frames else "")
        + (f" --ae-patch {' '.join(map(str, args.ae_patch))}" if tuple(args.ae_patch) != (1, 2, 2) else "") + "`",
        "",
        "| job | wall time | notes |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
