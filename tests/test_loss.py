"""The chunked loss equals the model's own loss and gradients: padded and packed batches, LoRA and full weights,
with and without gradient accumulation's token count; SFT and PT runs train the same with it."""

import copy

import pytest
import torch
from conftest import write_jsonl
from transformers import AutoModelForCausalLM

import pretraining
import supervised_finetuning
from medgpt.loss import chunked_cross_entropy, use_chunked_loss


def padded_batch() -> dict:
    torch.manual_seed(0)
    ids = torch.randint(5, 500, (3, 20))
    labels = ids.clone()
    labels[:, :7] = -100  # prompt tokens
    labels[2, 12:] = -100  # padding of a shorter row
    attention = torch.ones_like(ids)
    attention[2, 15:] = 0
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def packed_batch() -> dict:
    """Two samples in one row: positions restart, no attention mask (as medgpt.tokenization.pack makes them)."""
    torch.manual_seed(1)
    ids = torch.randint(5, 500, (1, 24))
    labels = ids.clone()
    labels[0, :5] = -100
    labels[0, 12:16] = -100
    return {"input_ids": ids, "position_ids": torch.cat([torch.arange(12), torch.arange(12)])[None], "labels": labels}


def model_pair(model_dir, lora: bool):
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    model.config.use_cache = False  # as load_model sets it for training: packed rows get their per-sample mask
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(2)
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    chunked = copy.deepcopy(model)
    assert use_chunked_loss(chunked, chunk_size=5)  # several chunks per batch
    return model, chunked


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("make_batch", [padded_batch, packed_batch])
@pytest.mark.parametrize("num_items", [None, 40])
def test_same_loss_and_gradients_as_the_models_own(tiny_model_dir, lora, make_batch, num_items):
    own, chunked = model_pair(tiny_model_dir, lora)
    batch = make_batch()
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    expected = own(**batch, **extra).loss
    got = chunked(**batch, **extra).loss
    expected.backward()
    got.backward()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    named = dict(chunked.named_parameters())
    compared = 0
    for name, param in own.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(named[name].grad, param.grad, atol=1e-6, rtol=1e-4)
            compared += 1
    assert compared > 0


def test_calls_without_labels_keep_the_models_own_forward(tiny_model_dir):
    own, chunked = model_pair(tiny_model_dir, lora=False)
    ids = padded_batch()["input_ids"]
    torch.testing.assert_close(chunked(input_ids=ids).logits, own(input_ids=ids).logits)
    assert chunked(input_ids=ids, labels=ids).logits is None  # the point: no full logits in training


def test_full_logits_never_exist(tiny_model_dir):
    """The largest float tensor built during the chunked loss is one chunk of logits, not tokens x vocabulary."""
    _, chunked = model_pair(tiny_model_dir, lora=False)
    hidden = torch.randn(2, 64, 32, requires_grad=True)
    labels = torch.randint(0, 600, (2, 64))
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, states):
            out = self.head(states)
            seen.append(out.shape[0])
            return out

    chunked_cross_entropy(hidden, labels, Spy(chunked.get_output_embeddings()), chunk_size=16).backward()
    assert max(seen) == 16 and sum(seen) == 2 * 2 * 63  # forward plus the recompute in backward


def run_losses(script, argv: list[str]) -> list[float]:
    trainer = script.main(argv)
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("packing", ["False", "True"])
def test_sft_trains_the_same_with_and_without_the_chunked_loss(tiny_model_dir, tmp_path, packing):
    rows = [
        {"conversations": [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": "Rest and fluids."}]}
        for i in range(8)
    ]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    common = ["--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(tmp_path / "d")]
    common += ["--template_name", "qwen", "--max_steps", "4", "--logging_steps", "1", "--report_to", "none"]
    common += ["--save_strategy", "no", "--validation_split_percentage", "0", "--per_device_train_batch_size", "2"]
    common += ["--gradient_accumulation_steps", "2", "--packing", packing, "--learning_rate", "1e-3"]
    own = run_losses(supervised_finetuning, [*common, "--output_dir", str(tmp_path / "a"), "--loss_chunk_size", "0"])
    chunked = run_losses(
        supervised_finetuning, [*common, "--output_dir", str(tmp_path / "b"), "--loss_chunk_size", "8"]
    )
    assert chunked == pytest.approx(own, rel=1e-4)


def test_pretraining_trains_the_same_with_the_chunked_loss(tiny_model_dir, tmp_path):
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "notes.txt").write_text("Fever and cough for three days.\n" * 40, encoding="utf-8")
    common = ["--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(tmp_path / "pt")]
    common += ["--block_size", "32", "--max_steps", "3", "--logging_steps", "1", "--report_to", "none"]
    common += ["--save_strategy", "no", "--validation_split_percentage", "0", "--per_device_train_batch_size", "2"]
    own = run_losses(pretraining, [*common, "--output_dir", str(tmp_path / "a"), "--loss_chunk_size", "0"])
    chunked = run_losses(pretraining, [*common, "--output_dir", str(tmp_path / "b")])
    assert chunked == pytest.approx(own, rel=1e-4)


def test_training_logs_token_throughput(tiny_model_dir, tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A short answer."}]}] * 8
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    trainer = supervised_finetuning.main(
        ["--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(tmp_path / "d"), "--template_name"]
        + ["qwen", "--max_steps", "2", "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no"]
        + ["--validation_split_percentage", "0", "--output_dir", str(tmp_path / "o"), "--packing", "True"]
    )
    entry = trainer.state.log_history[0]
    assert entry["train_tokens_per_second"] > entry["train_supervised_tokens_per_second"] > 0
