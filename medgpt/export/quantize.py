"""bitsandbytes-quantized copies of a merged model (tools/model_quant.py) and what they cost (tools/eval_quantize.py).

A quantized folder is a normal saved model whose config.json carries its `quantization_config`, so every loader
(medgpt.model.load_saved: inference, serving, evaluation; the training scripts, for QLoRA on a saved 4-bit base)
loads it as it is. bitsandbytes runs 4-bit and 8-bit layers on CUDA GPUs and, since 0.46, on CPUs.

    quantize("merged-sft", "merged-sft-nf4", QuantSpec(bits=4))
"""

import importlib.util
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from medgpt.errors import UserError

QUANT_TYPES_4BIT = ("nf4", "fp4")


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    quant_type: str = "nf4"  # 4-bit only: NF4 (normal-float, QLoRA's) or FP4
    double_quant: bool = True  # 4-bit only: quantize the quantization constants too (about 0.4 bits/weight less)
    compute_dtype: str = "auto"  # 4-bit matmul dtype; auto = bfloat16 on a GPU that has it, else float32

    def check(self) -> None:
        if self.bits not in (4, 8):
            raise UserError(f"--bits {self.bits}: bitsandbytes quantizes to 4 or 8 bits.")
        if self.bits == 4 and self.quant_type not in QUANT_TYPES_4BIT:
            raise UserError(f"--quant_type {self.quant_type}: use one of {', '.join(QUANT_TYPES_4BIT)}.")
        if self.compute_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError(f"--compute_dtype {self.compute_dtype}: use auto, float32, bfloat16 or float16.")

    def config(self):
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        compute = self.compute_dtype
        if compute == "auto":
            compute = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
        if compute == "float16" and not torch.cuda.is_available():
            raise UserError("--compute_dtype float16: 4-bit float16 matmuls need a CUDA GPU; use float32 on a CPU.")
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, compute),
        )


def check_backend() -> str:
    """The device bitsandbytes will run on, or a UserError saying why it cannot run here."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("quantization needs bitsandbytes: pip install -c constraints.txt bitsandbytes")
    import bitsandbytes

    if torch.cuda.is_available():
        return "cuda"
    version = tuple(int(part) for part in bitsandbytes.__version__.split(".")[:2])
    if version < (0, 46):
        raise UserError(
            f"bitsandbytes {bitsandbytes.__version__} runs only on CUDA GPUs and none is here; bitsandbytes 0.46 or "
            "newer also runs on the CPU (pip install -c constraints.txt bitsandbytes)."
        )
    return "cpu"


def folder_size(path: str | Path) -> int:
    """Bytes of the weight files in a model folder."""
    return sum(f.stat().st_size for f in Path(path).glob("*") if f.suffix in (".safetensors", ".bin", ".gguf"))


def quantize(source: str, staging: Path, spec: QuantSpec) -> dict:
    """Load `source` quantized by `spec` and save it (weights, tokenizer, chat-template record) into `staging`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medgpt.chat import TEMPLATE_FILE

    device = check_backend()
    started = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, quantization_config=spec.config(), device_map={"": device}
        )
    except (OSError, ValueError) as err:
        raise UserError(f"--unquantized_model_path {source}: cannot load it quantized: {err}") from None
    model.save_pretrained(staging)
    AutoTokenizer.from_pretrained(source).save_pretrained(staging)
    for name in (TEMPLATE_FILE, "generation_config.json"):
        if Path(source, name).is_file():
            shutil.copy2(Path(source, name), staging / name)
    return {
        "bits": spec.bits,
        "quant_type": spec.quant_type if spec.bits == 4 else "int8",
        "device": device,
        "seconds": round(time.perf_counter() - started, 1),
        "size_mb": round(folder_size(staging) / 2**20, 1),
        "original_size_mb": round(folder_size(source) / 2**20, 1),
    }


def peak_memory_mb() -> float:
    """Peak memory of this process so far: GPU memory allocated on a GPU, else the resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def generation_speed(engine, prompts: list[str], max_new_tokens: int) -> dict:
    """Greedy answers to `prompts` with the chat engine, and new tokens per second over all of them."""
    answers, tokens, seconds = [], 0, 0.0
    for prompt in prompts:
        started = time.perf_counter()
        reply = engine.reply([{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens, temperature=0)
        seconds += time.perf_counter() - started
        tokens += reply.completion_tokens
        answers.append(reply.text)
    return {"tokens_per_second": round(tokens / seconds, 2) if seconds else 0.0, "answers": answers}


@dataclass(frozen=True)
class Workload:
    """What every compared model is measured on (tools/eval_quantize.py)."""

    chat_file: str
    mcq_file: str | None
    max_samples: int | None
    batch_size: int
    prompts: tuple[str, ...]
    max_new_tokens: int
    template_name: str | None


def measure(model_path: str, workload: Workload) -> dict:
    """One model's figures: evaluate_model.py's chat perplexity and multiple-choice accuracy, greedy generation
    speed, and the peak memory of loading and answering. Run it in a fresh process per model so peaks are its own."""
    from medgpt.engine import ChatEngine, EngineArguments
    from medgpt.evaluation import arguments, evaluate

    engine_args = EngineArguments(base_model=model_path, template_name=workload.template_name)
    flags = {"chat_file": workload.chat_file, "batch_size": workload.batch_size, "max_samples": workload.max_samples}
    if workload.mcq_file:
        flags["mcq_file"] = workload.mcq_file
    results = evaluate(engine_args, *arguments(**flags), progress=False)
    speed = generation_speed(
        ChatEngine.load(model_path, template_name=workload.template_name),
        list(workload.prompts),
        workload.max_new_tokens,
    )
    return {
        "model": model_path,
        "size_mb": round(folder_size(model_path) / 2**20, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "perplexity": round(results["chat"]["perplexity"], 4),
        "mcq_accuracy": round(results["mcq"]["accuracy"], 4) if "mcq" in results else None,
        **speed,
    }
