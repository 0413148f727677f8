#!/usr/bin/env bash
# PPO (RLHF): the merged SFT model learns from the merged reward model on prompts (data/sft: the chats' final answers
# are dropped) -> LoRA adapter of the policy in outputs-ppo (the critic's in outputs-ppo/value_model).
# Comes after run_sft.sh + merge (MODEL=merged-sft) and run_rm.sh + merge (REWARD_MODEL=merged-rm).
# Next: python merge_peft_adapter.py --base_model $MODEL --lora_model outputs-ppo --output_dir merged-ppo
# Settings (environment): MODEL, REWARD_MODEL, TEMPLATE, DATA (training folder), OUTPUT (output_dir), NPROC (processes or GPUs),
# DEEPSPEED (a ZeRO config such as zero2.json). Flags after the script name override the ones below.
# Where memory allows, --gradient_checkpointing False is faster, and a system prompt every row shares then runs once per
# forward instead of once per row (docs/rl.md, phase 2).
set -euo pipefail
MODEL=${MODEL:-merged-sft}
REWARD_MODEL=${REWARD_MODEL:-merged-rm}
TEMPLATE=${TEMPLATE:-qwen2.5}
NPROC=${NPROC:-1}
DATA=${DATA:-./data/sft}
OUTPUT=${OUTPUT:-outputs-ppo}
DEEPSPEED=${DEEPSPEED:-}

torchrun --nproc_per_node "$NPROC" ppo_training.py \
    --sft_model_path "$MODEL" \
    --reward_model_path "$REWARD_MODEL" \
    --template_name "$TEMPLATE" \
    --train_file_dir "$DATA" \
    --validation_split_percentage 5 \
    --max_source_length 1024 \
    --response_length 512 \
    --use_peft True \
    --target_modules all \
    --lora_rank 8 \
    --lora_alpha 16 \
    --lora_dropout 0.05 \
    --torch_dtype bfloat16 \
    --bf16 True \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 4 \
    --num_mini_batches 1 \
    --num_ppo_epochs 4 \
    --kl_coef 0.05 \
    --missing_eos_penalty 1.0 \
    --temperature 0.7 \
    --num_train_epochs 1 \
    --learning_rate 1e-5 \
    --warmup_steps 5 \
    --logging_steps 1 \
    --eval_strategy steps \
    --eval_steps 50 \
    --save_steps 50 \
    --save_total_limit 3 \
    --gradient_checkpointing True \
    --output_dir "$OUTPUT" \
    ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} \
    "$@"
