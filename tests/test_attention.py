"""Attention per packed sample: the same logits and gradients as transformers' block-diagonal sdpa, each sample as if
alone, transformers' sdpa for everything unpacked, and SFT on packed CPU rows uses it (the saved model does not)."""

import json

import pytest
import torch
from conftest import write_jsonl
from tiny_model import build_tiny_model
from transformers import AutoModelForCausalLM

import supervised_finetuning
from medgpt import attention

# Three rows of 40: samples of 10, 25 and 5 tokens; one sample; 3 then 37.
POSITIONS = torch.tensor(
    [[*range(10), *range(25), *range(5)], list(range(40)), [*range(3), *range(37)]], dtype=torch.long
)


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_same_as_block_diagonal_sdpa_and_each_sample_alone(tmp_path, architecture):
    folder = build_tiny_model(tmp_path / architecture, architecture=architecture)  # 4 query heads, 2 key/value heads
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    ids = torch.randint(3, 100, POSITIONS.shape, generator=torch.Generator().manual_seed(0))

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        logits = model(input_ids=ids, position_ids=POSITIONS, use_cache=False).logits
        (logits.square().mean()).backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    want_logits, want_grads = run()  # transformers: a block-diagonal causal mask derived from the positions
    assert attention.use_segment_attention(model, packing=True, on_cpu=True)
    got_logits, got_grads = run()
    torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=1e-5)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the middle sample of row 0, run alone
        alone = model(input_ids=ids[:1, 10:35], position_ids=torch.arange(25)[None], use_cache=False).logits
    torch.testing.assert_close(alone, got_logits[:1, 10:35], atol=1e-5, rtol=1e-5)
    # Unpacked batches (a padding mask, no position ids) and decoding with a cache go to transformers' sdpa.
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        model.set_attn_implementation("sdpa")
        assert torch.equal(padded, model(input_ids=ids, attention_mask=mask, use_cache=False).logits)


def test_only_packed_rows_on_a_cpu_switch_it(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert not attention.use_segment_attention(model, packing=False, on_cpu=True)
    assert not attention.use_segment_attention(model, packing=True, on_cpu=False)
    assert model.config._attn_implementation == "sdpa"
    rows = [
        {"conversations": [{"from": "human", "value": f"Q{i}?"}, {"from": "gpt", "value": "An answer."}]}
        for i in range(8)
    ]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    argv = ["--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(tmp_path / "d")]
    argv += ["--template_name", "qwen", "--max_steps", "2", "--report_to", "none", "--use_peft", "False"]
    argv += ["--validation_split_percentage", "0", "--output_dir", str(tmp_path / "o")]
    trainer = supervised_finetuning.main([*argv, "--packing", "True"])
    assert trainer.model.config._attn_implementation == attention.NAME
    saved = json.loads((tmp_path / "o" / "config.json").read_text())
    assert attention.NAME not in json.dumps(saved)  # a saved model loads with the kernel its user picks
    unpacked = supervised_finetuning.main([*argv, "--packing", "False", "--output_dir", str(tmp_path / "u")])
    assert unpacked.model.config._attn_implementation == "sdpa"
