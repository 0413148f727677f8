#!/usr/bin/env bash
# Serve a trained model with vLLM's OpenAI-compatible server (GPU machines; vLLM is not installed by this project:
# pip install vllm). The chat template our training saved beside the model (chat_template.jinja) is used, so prompts
# are rendered exactly as in training. Not run in CI.
#
#   MODEL=merged-sft bash vllm_deployment.sh                          # a merged model
#   MODEL=merged-pt LORA=outputs-sft bash vllm_deployment.sh          # base + LoRA adapter, no merge
#   MODEL=merged-sft TOOL_PARSER=hermes bash vllm_deployment.sh       # tool calls in the qwen (Hermes) format
#   ... then: curl http://127.0.0.1:8000/v1/chat/completions -d '{"model": "merged-sft", "messages": [...]}'
#
# Settings: MODEL, LORA, NAME (the model id clients send), HOST, PORT, TOOL_PARSER; more vLLM flags after the script
# name (e.g. --max-model-len 4096 --gpu-memory-utilization 0.85 --api-key KEY).
set -euo pipefail
MODEL=${MODEL:-merged-sft}
LORA=${LORA:-}
NAME=${NAME:-$(basename "$MODEL")}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
TOOL_PARSER=${TOOL_PARSER:-}

# The template the model was trained with: the adapter's when serving one, else the model's.
TEMPLATE_DIR=${LORA:-$MODEL}
args=(serve "$MODEL" --served-model-name "$NAME" --host "$HOST" --port "$PORT")
if [ -f "$TEMPLATE_DIR/chat_template.jinja" ]; then
    args+=(--chat-template "$TEMPLATE_DIR/chat_template.jinja")
fi
if [ -n "$LORA" ]; then
    # Requests name the adapter as model "$NAME-lora"; "$NAME" answers with the base model.
    args+=(--enable-lora --lora-modules "$NAME-lora=$LORA")
fi
if [ -n "$TOOL_PARSER" ]; then
    args+=(--enable-auto-tool-choice --tool-call-parser "$TOOL_PARSER")
fi
exec vllm "${args[@]}" "$@"
