#!/usr/bin/env bash
# Reproduce the shipped weights: bash recipes/train.sh [DATASET] [MODEL...]
# Each run resumes if its folder already holds a checkpoint, so rerun after an interruption.
set -euo pipefail
dataset=${1:-mnist}; shift || true
models=("$@"); [ ${#models[@]} -gt 0 ] || models=($(ls "recipes/$dataset" | sed 's/\.json$//'))
for model in "${models[@]}"; do
  out="runs/$dataset/$model"
  if [ -f "$out/checkpoint.safetensors" ]; then
    genmnist train "$model" --dataset "$dataset" --out "$out" --resume --quiet
  else
    genmnist train "$model" --dataset "$dataset" --out "$out" --config "recipes/$dataset/$model.json" --quiet
  fi
done
