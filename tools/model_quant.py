"""Quantize a merged model with bitsandbytes (4-bit NF4/FP4 or 8-bit) into a folder every script loads as it is.

    python tools/model_quant.py --unquantized_model_path merged-sft --quantized_model_output_path merged-sft-nf4
    python tools/model_quant.py --unquantized_model_path merged-sft --quantized_model_output_path merged-sft-int8 \\
        --bits 8 --input_text "感冒了怎么办？"
    python inference.py --base_model merged-sft-nf4              # chat, serve or evaluate it like any model
    python supervised_finetuning.py --model_name_or_path merged-sft-nf4 --use_peft True ...   # QLoRA on it

The folder holds the quantized weights (config.json records how), the tokenizer and the chat template record. With
--input_text both models answer it (greedy) and the tool prints their answers, sizes, peak memory and speed;
tools/eval_quantize.py compares them on held-out files. bitsandbytes runs on CUDA GPUs and, from 0.46, on CPUs.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from medgpt import args
from medgpt.atomic import staged_folder
from medgpt.errors import UserError, run_cli
from medgpt.export.quantize import QuantSpec, check_backend, generation_speed, quantize


@dataclass
class QuantArguments:
    unquantized_model_path: str = field(metadata={"help": "A merged model folder (merge_peft_adapter.py output)."})
    quantized_model_output_path: str = field(metadata={"help": "New folder for the quantized model."})
    bits: int = field(default=4, metadata={"help": "4 (NF4/FP4) or 8 (LLM.int8)."})
    quant_type: str = field(default="nf4", metadata={"help": "4-bit type: nf4 or fp4."})
    double_quant: bool = field(default=True, metadata={"help": "4-bit: also quantize the scales (smaller)."})
    compute_dtype: str = field(default="auto", metadata={"help": "4-bit matmul dtype: auto|float32|bfloat16|float16."})
    input_text: str | None = field(default=None, metadata={"help": "Answer this with both models and compare."})
    max_new_tokens: int = field(default=64, metadata={"help": "Answer length for --input_text."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty output folder."})


def main(argv: list[str] | None = None) -> dict:
    (quant_args,) = args.parse((QuantArguments,), argv)
    spec = QuantSpec(quant_args.bits, quant_args.quant_type, quant_args.double_quant, quant_args.compute_dtype)
    spec.check()
    source, target = quant_args.unquantized_model_path, quant_args.quantized_model_output_path
    if not Path(source, "config.json").is_file():
        raise UserError(f"--unquantized_model_path {source}: no config.json; point it at a merged model folder.")
    out = Path(target)
    if out.is_dir() and any(out.iterdir()) and not quant_args.overwrite:
        raise UserError(f"--quantized_model_output_path {target} exists; pass --overwrite True to replace it.")
    check_backend()
    with staged_folder(target) as staging:
        summary = quantize(source, staging, spec)
    if quant_args.input_text:
        from medgpt.engine import ChatEngine

        for name, path in (("original", source), ("quantized", target)):
            speed = generation_speed(ChatEngine.load(path), [quant_args.input_text], quant_args.max_new_tokens)
            summary[f"{name}_answer"] = speed["answers"][0]
            summary[f"{name}_tokens_per_second"] = speed["tokens_per_second"]
    summary["output"] = target
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return summary


if __name__ == "__main__":
    run_cli(main)
