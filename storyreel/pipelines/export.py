"""Assemble a ``ScenePipeline`` folder from the model folders that training exported.

    python -m storyreel.pipelines.export outputs/train/scene-default/model \\
        --causal outputs/train/scene-default-causal/model --out my-pipeline --dtype float16

The result loads with ``ScenePipeline.from_pretrained("my-pipeline")`` and
``storyreel generate SCRIPT --model my-pipeline``. The shipped default
(``storyreel/weights/default``) is made this way with ``--dtype float16``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from storyreel.pipelines.scene import GenerationError, ScenePipeline

__all__ = ["DTYPES", "export_pipeline", "main"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export_pipeline(scene: str | Path, out: str | Path, *, causal: str | Path | None = None, dtype: str = "float32",
                    name: str | None = None, history_guidance: float | None = None,
                    history_guidance_causal: float | None = None, autoencoder: str | Path | None = None,
                    guide: str | Path | None = None, autoguidance: float | None = None) -> Path:
    """Build the pipeline from ``scene`` (and ``causal``: a model folder or ``"shared"``, see
    :meth:`ScenePipeline.from_model_folders`) model folders and save it to ``out`` in ``dtype``;
    ``history_guidance`` (``history_guidance_causal``: its weight in causal mode) sets that sampling default in
    ``pipeline.json``; ``autoencoder`` replaces the one the scene model was trained with by a decoder-only
    fine-tune of it; ``guide`` adds a weak model folder for autoguidance and ``autoguidance`` sets its default
    weight."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of {sorted(DTYPES)}")
    shared = causal is not None and str(causal) == "shared"
    if autoguidance and guide is None:
        raise ValueError(f"autoguidance={autoguidance:g} needs a guide model; pass --guide FOLDER (configs/scene-default-guide.yaml)")
    pipe = ScenePipeline.from_model_folders(scene, causal="shared" if shared else causal, name=name, autoencoder=autoencoder,
                                            guide=guide)
    given = {"history_guidance": history_guidance, "history_guidance_causal": history_guidance_causal,
             "autoguidance": autoguidance}
    pipe.defaults = dataclasses.replace(pipe.defaults, **{k: v for k, v in given.items() if v is not None})
    return pipe.save_pretrained(out, dtype=DTYPES[dtype])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m storyreel.pipelines.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("scene", type=Path, help="bidirectional scene model folder (config.json + model.safetensors)")
    ap.add_argument("--causal", type=Path, default=None,
                    help="context-causal model folder (optional), or 'shared': causal mode uses the scene model itself "
                         "with context-causal attention (for a scene model trained with train.causal_prob > 0)")
    ap.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="storage type of the weights")
    ap.add_argument("--name", default=None, help="pipeline name recorded in pipeline.json")
    ap.add_argument("--history-guidance", type=float, default=None,
                    help="default history guidance weight of the pipeline (pipeline.json defaults; 0 = off)")
    ap.add_argument("--history-guidance-causal", type=float, default=None,
                    help="its weight in causal mode, where it differs (default: the same as --history-guidance)")
    ap.add_argument("--autoencoder", type=Path, default=None,
                    help="a decoder-only fine-tune of the scene model's autoencoder to ship instead (same encoder)")
    ap.add_argument("--guide", type=Path, default=None,
                    help="a weak model folder for autoguidance (trained with configs/scene-default-guide.yaml)")
    ap.add_argument("--autoguidance", type=float, default=None,
                    help="default autoguidance weight of the pipeline (pipeline.json defaults; 0 = off; needs --guide)")
    args = ap.parse_args(argv)
    try:
        out = export_pipeline(args.scene, args.out, causal=args.causal, dtype=args.dtype, name=args.name,
                              history_guidance=args.history_guidance,
                              history_guidance_causal=args.history_guidance_causal, autoencoder=args.autoencoder,
                              guide=args.guide, autoguidance=args.autoguidance)
    except (GenerationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
