#!/usr/bin/env bash
# Quantization: the merged model -> a bitsandbytes 4-bit (NF4, double quantization) copy in $OUTPUT, which
# inference.py, openai_api.py, evaluate_model.py and QLoRA training load as it is. BITS=8 gives LLM.int8 instead.
# Comes after a merge (MODEL=merged-sft). Next: bash run_eval_quantize.sh, or export to GGUF:
#   python tools/export_gguf.py --model_path merged-sft --output_file export/medgpt.q8_0.gguf --outtype q8_0
# Settings (environment): MODEL, OUTPUT, BITS. Flags after the script name override the ones below.
set -euo pipefail
MODEL=${MODEL:-merged-sft}
BITS=${BITS:-4}
OUTPUT=${OUTPUT:-${MODEL}-bnb${BITS}}

python tools/model_quant.py \
    --unquantized_model_path "$MODEL" \
    --quantized_model_output_path "$OUTPUT" \
    --bits "$BITS" \
    --input_text "感冒了应该怎么办？" \
    "$@"
