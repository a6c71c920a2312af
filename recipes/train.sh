#!/usr/bin/env bash
# Reproduce the shipped weights: bash recipes/train.sh [DATASET] [MODEL...]
# Each run resumes if its folder already holds a checkpoint, so rerun after an interruption.
# A model with a <model>.guide.json recipe also gets its autoguidance guide: a short run of
# the same U-Net into runs/<dataset>/<model>-guide, attached by recipes/export.py --guide.
# A model with a <model>.distill.json recipe is then distilled: a student learns, in
# runs/<dataset>/<model>-distill, the guided denoiser of the teacher its recipe names (one
# U-Net call per sampling step instead of two). With a guide, the teacher is the main run
# plus its guide (runs/<dataset>/<model>-teacher); otherwise the main run itself (a
# self-guided or class-conditional model guides itself).
# A model with a <model>.tune.json recipe is then fine-tuned: in runs/<dataset>/<model>-tune
# the training task its recipe names continues the run its recipe names as "base": the
# main run (the adversarial decoder tuning of the Fashion-MNIST VAEs) or the distilled
# student (the null-label tuning of the MNIST ddpm); that folder holds the weights to export.
set -euo pipefail
dataset=${1:-mnist}; shift || true
models=("$@"); [ ${#models[@]} -gt 0 ] || models=($(ls "recipes/$dataset" | grep -v -e '\.guide\.json$' -e '\.distill\.json$' -e '\.tune\.json$' | sed 's/\.json$//'))
guide_steps=350  # measured best of 100/175/350/700 steps for the mnist ddpm
train() {  # train MODEL OUT RECIPE [extra flags...]
  local model=$1 out=$2 recipe=$3; shift 3
  if [ -f "$out/checkpoint.safetensors" ]; then
    genmnist train "$model" --dataset "$dataset" --out "$out" --resume --quiet "$@"
  elif [ -d "$out" ]; then  # a run stopped before its first checkpoint: start it again
    genmnist train "$model" --dataset "$dataset" --out "$out" --config "$recipe" --quiet --overwrite "$@"
  else
    genmnist train "$model" --dataset "$dataset" --out "$out" --config "$recipe" --quiet "$@"
  fi
}
for model in "${models[@]}"; do
  train "$model" "runs/$dataset/$model" "recipes/$dataset/$model.json"
  guide="recipes/$dataset/$model.guide.json"
  if [ -f "$guide" ]; then
    train "$model" "runs/$dataset/$model-guide" "$guide" --max-steps "$guide_steps"
  fi
  distill="recipes/$dataset/$model.distill.json"
  if [ -f "$distill" ]; then
    if [ -f "$guide" ]; then
      python recipes/export.py "runs/$dataset/$model" --dataset "$dataset" \
        --guide "runs/$dataset/$model-guide" --out "runs/$dataset/$model-teacher"
    fi
    train "$model" "runs/$dataset/$model-distill" "$distill"
  fi
  tune="recipes/$dataset/$model.tune.json"
  if [ -f "$tune" ]; then
    train "$model" "runs/$dataset/$model-tune" "$tune"
  fi
done
