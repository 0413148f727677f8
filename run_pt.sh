#!/usr/bin/env bash
# Continued pre-training: plain medical text (data/pretrain) -> LoRA adapter in outputs-pt.
# Next: python merge_peft_adapter.py --base_model $MODEL --lora_model outputs-pt --output_dir merged-pt
# then run_sft.sh with MODEL=merged-pt.
# Settings (environment): MODEL, DATA (training folder), OUTPUT (output_dir), NPROC (processes or GPUs),
# DEEPSPEED (a ZeRO config such as zero2.json). Flags after the script name override the ones below.
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B}
NPROC=${NPROC:-1}
DATA=${DATA:-./data/pretrain}
OUTPUT=${OUTPUT:-outputs-pt}
DEEPSPEED=${DEEPSPEED:-}

torchrun --nproc_per_node "$NPROC" pretraining.py \
    --model_name_or_path "$MODEL" \
    --train_file_dir "$DATA" \
    --validation_split_percentage 5 \
    --block_size 512 \
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
    --learning_rate 2e-4 \
    --warmup_steps 5 \
    --weight_decay 0.01 \
    --logging_steps 10 \
    --eval_strategy steps \
    --eval_steps 50 \
    --save_steps 500 \
    --save_total_limit 3 \
    --gradient_checkpointing True \
    --output_dir "$OUTPUT" \
    ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} \
    "$@"
