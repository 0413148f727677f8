"""The TRL side of benchmarks/sft_speed.py: TRL's own SFTTrainer on the path TRL recommends for speed, on the same
rows, model and settings as ours. Not a toolkit script: sft_speed.py runs it, one process per measurement.

TRL's recommended path: conversational prompt-completion rows (loss on the completion only), packing with best-fit
decreasing into rows of --max_length tokens, padding-free batches (TRL turns it on with that packing). The model's
own chat template renders the rows.

    python benchmarks/trl_sft.py --model models/SmolLM2-135M-Instruct --data rows.jsonl --output_dir out \
        --batch 4 --max_length 512 [--loss_type chunked_nll]
"""

import argparse
import json
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def prompt_completion(line: str) -> dict:
    """A ShareGPT row ({"conversations": [{"from", "value"}]}) as TRL's conversational prompt-completion row: the
    last answer is the completion, everything before it the prompt."""
    turns = [{"role": ROLES[t["from"]], "content": t["value"]} for t in json.loads(line)["conversations"]]
    return {"prompt": turns[:-1], "completion": turns[-1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="ShareGPT rows (.jsonl), one conversation per line")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--loss_type", default="nll", choices=["nll", "chunked_nll"])
    options = parser.parse_args()

    lines = Path(options.data).read_text(encoding="utf-8").splitlines()
    dataset = Dataset.from_list([prompt_completion(line) for line in lines if line.strip()])
    tokenizer = AutoTokenizer.from_pretrained(options.model)
    model = AutoModelForCausalLM.from_pretrained(options.model, dtype=torch.float32)
    config = SFTConfig(
        output_dir=options.output_dir,
        max_length=options.max_length,
        packing=True,
        packing_strategy="bfd",
        completion_only_loss=True,
        loss_type=options.loss_type,
        per_device_train_batch_size=options.batch,
        num_train_epochs=1,
        learning_rate=2e-5,
        gradient_checkpointing=True,
        save_strategy="no",
        report_to="none",
        logging_steps=1000,
        disable_tqdm=True,
        seed=42,
        use_cpu=not torch.cuda.is_available(),
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    result = trainer.train()
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()


if __name__ == "__main__":
    main()
