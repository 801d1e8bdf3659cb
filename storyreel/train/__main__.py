"""``python -m storyreel.train RECIPE [--set a.b=c ...] [--resume DIR]`` — the torchrun entry point.

Example: ``torchrun --nproc-per-node 8 -m storyreel.train scene-small --set train.parallel.strategy=fsdp``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storyreel.train", description="Train a storyreel recipe.")
    parser.add_argument("recipe", help="recipe YAML path or a name in configs/ (debug, vae-small, scene-small, scene-small-causal)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one recipe value, e.g. --set train.steps=2000 (repeatable)")
    parser.add_argument("--resume", default=None, metavar="DIR", help="continue a run from its folder or a checkpoint")
    args = parser.parse_args(argv)

    from storyreel.data import DatasetError
    from storyreel.train import CheckpointError, NonFiniteLossError, RecipeError, run_from_config

    try:
        result = run_from_config(args.recipe, args.overrides, args.resume)
    except (RecipeError, CheckpointError, DatasetError, NonFiniteLossError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"done: step {result.step}, EMA model in {result.model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
