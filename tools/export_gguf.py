"""Export a merged model to one GGUF file for llama.cpp and Ollama, with an Ollama Modelfile beside it.

    python merge_peft_adapter.py --base_model models/SmolLM2-135M-Instruct --lora_model outputs-sft \\
        --output_dir merged-sft
    python tools/export_gguf.py --model_path merged-sft --output_file export/medgpt.q8_0.gguf --outtype q8_0
    llama-cli -m export/medgpt.q8_0.gguf -cnv            # llama.cpp: the chat template is in the file
    cd export && ollama create medgpt -f Modelfile && ollama run medgpt

--outtype: f16 (default; near-exact), q8_0 (8-bit blocks, about half the size), q4_0 (4-bit blocks for the
layers, 8-bit embedding and output), or f32. The file carries the tokenizer, the chat template the model was
trained with (template_config.json, or --template_name) and its stop token. The Modelfile (next to the GGUF, or
--modelfile PATH) holds the same template in Ollama's syntax, the stop strings, the default system prompt and the
model's sampling defaults. Both are written under temporary names and renamed when complete.
Supported: Llama-family models (Llama, SmolLM/SmolLM2, Mistral, Qwen2/2.5, Qwen3) with byte-level BPE tokenizers;
docs/export.md lists what else to use for the rest.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from medgpt import args
from medgpt.atomic import staged_file, write_text
from medgpt.chat import Template
from medgpt.errors import UserError, run_cli
from medgpt.export.gguf import OUTTYPES, architecture_of, write_gguf
from medgpt.export.ollama import modelfile


@dataclass
class ExportArguments:
    model_path: str = field(metadata={"help": "A merged model folder (merge_peft_adapter.py output)."})
    output_file: str = field(metadata={"help": "The GGUF file to write (*.gguf)."})
    outtype: str = field(default="f16", metadata={"help": f"Tensor type: {'|'.join(OUTTYPES)}."})
    template_name: str | None = field(default=None, metadata={"help": "Chat template; default: the trained one."})
    modelfile: str | None = field(default=None, metadata={"help": "Ollama Modelfile path; default: beside the GGUF."})
    overwrite: bool = field(default=False, metadata={"help": "Replace existing output files."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the checkpoint."})


def check(export_args: ExportArguments) -> tuple[Path, Path]:
    folder = Path(export_args.model_path)
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise UserError(
            f"--model_path {folder} holds a LoRA adapter, not a model: merge it first "
            f"(python merge_peft_adapter.py --lora_model {folder} --output_dir merged), then export the merged folder."
        )
    if not (folder / "config.json").is_file():
        raise UserError(f"--model_path {folder}: no config.json; point it at a saved (merged) model folder.")
    if export_args.outtype not in OUTTYPES:
        raise UserError(f"--outtype {export_args.outtype}: use one of {', '.join(OUTTYPES)}.")
    output = Path(export_args.output_file)
    if output.suffix != ".gguf":
        raise UserError(f"--output_file {output}: name it *.gguf.")
    model_file = Path(export_args.modelfile) if export_args.modelfile else output.with_name("Modelfile")
    for path in (output, model_file):
        if path.exists() and not export_args.overwrite:
            raise UserError(f"{path} exists; pass --overwrite True to replace it.")
    return output, model_file


def main(argv: list[str] | None = None) -> dict:
    (export_args,) = args.parse((ExportArguments,), argv)
    output, model_file = check(export_args)
    from transformers import AutoConfig

    from medgpt.model import load_saved

    config = AutoConfig.from_pretrained(export_args.model_path, trust_remote_code=export_args.trust_remote_code)
    architecture_of(config, export_args.model_path)  # refuse before loading weights
    model, tokenizer, template = load_saved(
        export_args.model_path,
        template_name=export_args.template_name,
        torch_dtype="float32",
        trust_remote_code=export_args.trust_remote_code,
        flags=("--model_path", "--lora_model"),
    )
    if not isinstance(template, Template):
        raise UserError(
            f"--model_path {export_args.model_path} records no chat template of ours (template_config.json); pass "
            "--template_name (e.g. smollm2, qwen, llama3) so the GGUF and the Modelfile carry the right format."
        )
    generation = model.generation_config.to_dict() if model.generation_config is not None else {}
    relative = os.path.relpath(output.resolve(), model_file.resolve().parent)  # FROM is read beside the Modelfile
    modelfile_text = modelfile(relative, template, generation, config.max_position_embeddings)
    with staged_file(output) as staging:
        write_gguf(
            model, tokenizer, template.to_jinja(), export_args.outtype, staging, export_args.model_path, output.stem
        )
    write_text(model_file, modelfile_text)
    summary = {
        "gguf": str(output),
        "outtype": export_args.outtype,
        "size_mb": round(output.stat().st_size / 2**20, 2),
        "template": template.name,
        "modelfile": str(model_file),
    }
    print(json.dumps(summary, ensure_ascii=False), file=sys.stderr)
    return summary


if __name__ == "__main__":
    run_cli(main)
