#!/usr/bin/env bash
# Quantization cost: the merged model and its quantized copy side by side on the held-out files (chat perplexity,
# multiple-choice accuracy, size, peak memory, generation speed). Comes after run_quant.sh.
# Settings (environment): MODEL (the original), QUANTIZED (one or more folders), DATA, MCQ. Flags after the script
# name override the ones below.
set -euo pipefail
MODEL=${MODEL:-merged-sft}
QUANTIZED=${QUANTIZED:-${MODEL}-bnb4}
DATA=${DATA:-./data/eval/sft}
MCQ=${MCQ:-./data/eval/mcq}

# shellcheck disable=SC2086  # QUANTIZED may name several folders
python tools/eval_quantize.py \
    --base_model "$MODEL" \
    --bnb_path $QUANTIZED \
    --data_path "$DATA" \
    --mcq_file "$MCQ" \
    --output_file "outputs-eval-quantize.json" \
    "$@"
