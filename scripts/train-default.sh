#!/usr/bin/env bash
# Train and export the shipped default pipeline (storyreel/weights/default, v4) on one GPU, then measure it.
#
#   bash scripts/train-default.sh [PIPELINE_OUT]        # default PIPELINE_OUT: outputs/pipeline-default
#
# Steps: the VAE (configs/vae-default.yaml), the bidirectional scene model (scene-default), its
# continuation on coherent scenes at a larger batch (scene-default-continue, v2), the decoder-only VAE
# fine-tune (vae-default-decoder) and the character-weighted continuation (scene-default-v3), the v4
# continuation with more character weight and conditional-mask samples (scene-default-v4), the context-causal
# variant tuned from it the same way (scene-default-causal-v4; without v4: scene-default-causal), the small
# guide model of autoguidance (scene-default-guide; off by default in the pipeline), an fp16 pipeline folder with
# history guidance 2 (4 in causal mode; storyreel.pipelines.export), the quality benchmark on 50 held-out
# scripts and the generation timings. Each recipe stops at its train.max_minutes budget. Environment knobs:
#   VAE_INIT=DIR      fine-tune the VAE from an earlier model folder instead of starting from scratch
#   VAE_ARGS / SCENE_ARGS / CONTINUE_ARGS / DECODER_ARGS / V3_ARGS / V4_ARGS / CAUSAL_ARGS / GUIDE_ARGS   extra "--set key=value" overrides
#   SKIP_CONTINUE=1   no v2 continuation (v3 then continues scene-default)
#   SKIP_V3=1         stop at v2: no decoder fine-tune, no v3 or v4 continuation, no history guidance
#   SKIP_V4=1         stop at v3
#   SKIP_GUIDE=1      no guide model (the pipeline then has no autoguidance)
#   SKIP_BENCH=1      stop after the export
set -euo pipefail
OUT=${1:-outputs/pipeline-default}
PY=${PYTHON:-python3}
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

vae_init=()
if [ -n "${VAE_INIT:-}" ]; then vae_init=(--set "model.init_from=$VAE_INIT" --set model.init_weights=model); fi
stamp "vae-default"
# shellcheck disable=SC2086
$PY -m storyreel.train configs/vae-default.yaml --set output.progress=false "${vae_init[@]}" ${VAE_ARGS:-}
AE=outputs/train/vae-default/model
stamp "scene-default"
# shellcheck disable=SC2086
$PY -m storyreel.train configs/scene-default.yaml --set output.progress=false ${SCENE_ARGS:-}
SCENE_RUN=outputs/train/scene-default
if [ -z "${SKIP_CONTINUE:-}" ]; then
  stamp "scene-default-continue"
  # shellcheck disable=SC2086
  $PY -m storyreel.train configs/scene-default-continue.yaml --set output.progress=false \
      --set model.init_from=$SCENE_RUN/model ${CONTINUE_ARGS:-}
  SCENE_RUN=outputs/train/scene-default-continue
fi
HG=()
if [ -z "${SKIP_V3:-}" ]; then
  stamp "vae-default-decoder (background) + scene-default-v3"
  # the decoder fine-tune keeps the encoder, so the scene model's latents are the same with either autoencoder
  # shellcheck disable=SC2086
  $PY -m storyreel.train configs/vae-default-decoder.yaml --set output.progress=false \
      --set "model.init_from=$AE" ${DECODER_ARGS:-} &
  decoder=$!
  # shellcheck disable=SC2086
  $PY -m storyreel.train configs/scene-default-v3.yaml --set output.progress=false \
      --set "model.init_from=$SCENE_RUN/model" --set "model.autoencoder_path=$AE" ${V3_ARGS:-} \
      || { kill $decoder 2>/dev/null; exit 1; }
  wait $decoder
  SCENE_RUN=outputs/train/scene-default-v3
  HG=(--history-guidance 2 --autoencoder outputs/train/vae-default-decoder/model)
fi
CAUSAL=scene-default-causal
if [ -z "${SKIP_V3:-}" ] && [ -z "${SKIP_V4:-}" ]; then
  stamp "scene-default-v4"
  # shellcheck disable=SC2086
  $PY -m storyreel.train configs/scene-default-v4.yaml --set output.progress=false \
      --set "model.init_from=$SCENE_RUN/model" --set "model.autoencoder_path=$AE" ${V4_ARGS:-}
  SCENE_RUN=outputs/train/scene-default-v4
  CAUSAL=scene-default-causal-v4
  HG+=(--history-guidance-causal 4)
fi
stamp "$CAUSAL"
# shellcheck disable=SC2086
$PY -m storyreel.train configs/$CAUSAL.yaml --set output.progress=false --set "model.init_from=$SCENE_RUN/model" \
    --set "model.autoencoder_path=$AE" ${CAUSAL_ARGS:-}
GUIDE=()
if [ -z "${SKIP_GUIDE:-}" ]; then
  stamp "scene-default-guide"
  # shellcheck disable=SC2086
  $PY -m storyreel.train configs/scene-default-guide.yaml --set output.progress=false \
      --set "model.autoencoder_path=$AE" ${GUIDE_ARGS:-}
  GUIDE=(--guide outputs/train/scene-default-guide/model)
fi
stamp "export -> $OUT"
$PY -m storyreel.pipelines.export "$SCENE_RUN/model" --causal outputs/train/$CAUSAL/model \
    --out "$OUT" --dtype float16 --name "${PIPELINE_NAME:-storyreel-default}" "${HG[@]}" "${GUIDE[@]}"
if [ -z "${SKIP_BENCH:-}" ]; then
  dev=$($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
  stamp "benchmarks on $dev"
  $PY benchmarks/default_model.py --model "$OUT" --device "$dev" --n 50 --out outputs/default-model.md
  $PY benchmarks/generation.py --model "$OUT" --device "$dev" --out outputs/generation-$dev.md
fi
stamp "done"
