#!/usr/bin/env bash
# Supervised fine-tuning: chat data (data/sft: ShareGPT, Alpaca, OpenAI messages) -> LoRA adapter in outputs-sft.
# Comes after run_pt.sh + merge (MODEL=merged-pt), or starts from any base/instruct model.
# Next: python merge_peft_adapter.py --base_model $MODEL --lora_model outputs-sft --output_dir merged-sft
# Settings (environment): MODEL, TEMPLATE, DATA (training folder), OUTPUT (output_dir), NPROC (processes or GPUs),
# DEEPSPEED (a ZeRO config such as zero2.json). Flags after the script name override the ones below.
set -euo pipefail
MODEL=${MODEL:-merged-pt}
TEMPLATE=${TEMPLATE:-qwen2.5}
NPROC=${NPROC:-1}
DATA=${DATA:-./data/sft}
OUTPUT=${OUTPUT:-outputs-sft}
DEEPSPEED=${DEEPSPEED:-}

torchrun --nproc_per_node "$NPROC" supervised_finetuning.py \
    --model_name_or_path "$MODEL" \
    --template_name "$TEMPLATE" \
    --train_file_dir "$DATA" \
    --validation_split_percentage 5 \
    --model_max_length 1024 \
    --packing True \
    --use_peft True \
    --target_modules all \
    --lora_rank 8 \
    --lora_alpha 16 \
    --lora_dropout 0.05 \
    --torch_dtype bfloat16 \
    --bf16 \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 8 \
    --num_train_epochs 1 \
    --learning_rate 2e-5 \
    --warmup_steps 5 \
    --weight_decay 0.05 \
    --logging_steps 10 \
    --eval_strategy steps \
    --eval_steps 50 \
    --save_steps 500 \
    --save_total_limit 3 \
    --gradient_checkpointing True \
    --output_dir "$OUTPUT" \
    ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} \
    "$@"
