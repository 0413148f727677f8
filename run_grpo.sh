#!/usr/bin/env bash
# GRPO: groups of sampled answers to medical questions (data/grpo: question/answer, multiple-choice and chat rows),
# scored by rule rewards (medical_accuracy, choice_accuracy, format; add reward_model with --reward_model_path)
# -> LoRA adapter in outputs-grpo. Comes after run_sft.sh + merge (MODEL=merged-sft), or starts from an instruct model.
# Next: python merge_peft_adapter.py --base_model $MODEL --lora_model outputs-grpo --output_dir merged-grpo
# Settings (environment): MODEL, TEMPLATE, DATA (training folder), OUTPUT (output_dir), NPROC (processes or GPUs),
# DEEPSPEED (a ZeRO config such as zero2.json). Flags after the script name override the ones below.
set -euo pipefail
MODEL=${MODEL:-merged-sft}
TEMPLATE=${TEMPLATE:-qwen2.5}
NPROC=${NPROC:-1}
DATA=${DATA:-./data/grpo}
OUTPUT=${OUTPUT:-outputs-grpo}
DEEPSPEED=${DEEPSPEED:-}

torchrun --nproc_per_node "$NPROC" grpo_training.py \
    --model_name_or_path "$MODEL" \
    --template_name "$TEMPLATE" \
    --train_file_dir "$DATA" \
    --validation_split_percentage 0 \
    --reward_funcs medical_accuracy choice_accuracy format \
    --reward_weights 1.0 1.0 0.5 \
    --num_generations 4 \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --max_completion_length 512 \
    --beta 0.001 \
    --use_peft True \
    --target_modules all \
    --lora_rank 16 \
    --lora_alpha 32 \
    --lora_dropout 0.05 \
    --torch_dtype bfloat16 \
    --bf16 True \
    --num_train_epochs 1 \
    --learning_rate 5e-6 \
    --lr_scheduler_type cosine \
    --warmup_steps 5 \
    --logging_steps 1 \
    --save_steps 50 \
    --save_total_limit 3 \
    --output_dir "$OUTPUT" \
    ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} \
    "$@"
