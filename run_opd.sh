#!/usr/bin/env bash
# On-policy distillation: a small student (MODEL) learns a larger teacher's (TEACHER, a merged folder sharing the
# student's tokenizer) next-token distributions on the answers of data/sft and on its own samples -> LoRA adapter in
# outputs-opd. Teacher and student with different tokenizers: distil offline instead (docs/distillation.md).
# Next: python merge_peft_adapter.py --base_model $MODEL --lora_model outputs-opd --output_dir merged-opd
# Settings (environment): MODEL, TEACHER, TEMPLATE, DATA (training folder), OUTPUT (output_dir), NPROC (processes or
# GPUs), DEEPSPEED (a ZeRO config such as zero2.json). Flags after the script name override the ones below.
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
TEACHER=${TEACHER:-merged-sft}
TEMPLATE=${TEMPLATE:-qwen2.5}
NPROC=${NPROC:-1}
DATA=${DATA:-./data/sft}
OUTPUT=${OUTPUT:-outputs-opd}
DEEPSPEED=${DEEPSPEED:-}

torchrun --nproc_per_node "$NPROC" opd_training.py \
    --model_name_or_path "$MODEL" \
    --teacher_model_name_or_path "$TEACHER" \
    --template_name "$TEMPLATE" \
    --train_file_dir "$DATA" \
    --validation_split_percentage 10 \
    --max_prompt_length 1024 \
    --max_length 1536 \
    --max_new_tokens 512 \
    --opd_lambda 0.5 \
    --opd_beta 0.5 \
    --temperature 0.9 \
    --use_peft True \
    --target_modules all \
    --lora_rank 8 \
    --lora_alpha 16 \
    --lora_dropout 0.05 \
    --per_device_train_batch_size 2 \
    --per_device_eval_batch_size 1 \
    --gradient_accumulation_steps 8 \
    --torch_dtype bfloat16 \
    --bf16 True \
    --num_train_epochs 1 \
    --learning_rate 5e-5 \
    --warmup_steps 5 \
    --weight_decay 0.05 \
    --logging_steps 10 \
    --eval_strategy steps \
    --eval_steps 50 \
    --save_steps 500 \
    --save_total_limit 3 \
    --output_dir "$OUTPUT" \
    ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} \
    "$@"
