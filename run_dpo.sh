#!/usr/bin/env bash
# DPO: preference pairs (data/reward) on the merged SFT model -> LoRA adapter in outputs-dpo. With LoRA the
# reference is the adapter-disabled base; reference log-probs are computed once and cached on disk.
# Next: python merge_peft_adapter.py --base_model $MODEL --lora_model outputs-dpo --output_dir merged-dpo
# Comes after run_sft.sh + merge (MODEL=merged-sft).
# Settings (environment): MODEL, TEMPLATE, DATA (training folder), OUTPUT (output_dir), NPROC (processes or GPUs),
# DEEPSPEED (a ZeRO config such as zero2.json). Flags after the script name override the ones below.
set -euo pipefail
MODEL=${MODEL:-merged-sft}
TEMPLATE=${TEMPLATE:-qwen2.5}
NPROC=${NPROC:-1}
DATA=${DATA:-./data/reward}
OUTPUT=${OUTPUT:-outputs-dpo}
DEEPSPEED=${DEEPSPEED:-}

torchrun --nproc_per_node "$NPROC" dpo_training.py \
    --model_name_or_path "$MODEL" \
    --template_name "$TEMPLATE" \
    --train_file_dir "$DATA" \
    --validation_split_percentage 10 \
    --max_source_length 1024 \
    --max_target_length 512 \
    --max_length 1536 \
    --use_peft True \
    --target_modules all \
    --lora_rank 8 \
    --lora_alpha 16 \
    --lora_dropout 0.05 \
    --beta 0.1 \
    --loss_type sigmoid \
    --precompute_ref_log_probs True \
    --torch_dtype bfloat16 \
    --bf16 True \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 8 \
    --num_train_epochs 1 \
    --learning_rate 5e-6 \
    --warmup_steps 5 \
    --logging_steps 10 \
    --eval_strategy steps \
    --eval_steps 50 \
    --save_steps 500 \
    --save_total_limit 3 \
    --gradient_checkpointing True \
    --output_dir "$OUTPUT" \
    ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} \
    "$@"
