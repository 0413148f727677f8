"""The reward scorer and the loader of saved model folders: one object behind RM scoring, PPO and GRPO."""

import json

import pytest
import torch

from medgpt.chat import save_template
from medgpt.errors import UserError
from medgpt.model import load_saved
from medgpt.preference import score
from medgpt.scoring import RewardModelScorer


def test_scorer_renders_with_the_reward_models_own_template_and_scores(reward_dir):
    scorer = RewardModelScorer(str(reward_dir))
    assert scorer.template.name == "chatml" and scorer.__name__ == "reward_model"
    texts = scorer.texts(["I have a fever."], ["Rest."])
    assert texts == ["<|im_start|>user\nI have a fever.<|im_end|>\n<|im_start|>assistant\nRest.<|im_end|>"]
    ids = scorer.tokenizer(texts, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        expected = scorer.model(**ids).logits[0, 0].item()
    assert scorer(["I have a fever."], ["Rest."]) == pytest.approx([expected], abs=1e-5)


def test_scorer_takes_trl_shapes_and_batches_like_single_calls(reward_dir):
    scorer = RewardModelScorer(str(reward_dir), batch_size=2)
    prompts = ["Q1", [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Q2"}], "Q3"]
    completions = ["A short answer.", [{"role": "assistant", "content": "A much longer answer than the first."}], "x"]
    batched = scorer(prompts, completions, answer=["", "", ""], trainer_state=None)
    single = [scorer([p], [c])[0] for p, c in zip(prompts, completions, strict=True)]
    assert batched == pytest.approx(single, abs=1e-5)
    assert score(reward_dir, "Q1", ["A short answer."]) == pytest.approx(single[:1], abs=1e-5)


def test_scorer_renders_tool_definitions_from_the_dataset_column(reward_dir):
    scorer = RewardModelScorer(str(reward_dir))
    tools = json.dumps([{"name": "get_weather", "description": "Weather", "parameters": {}}])
    with_tools = scorer.texts(["Weather?"], ["Sunny."], [tools])[0]
    assert "get_weather" in with_tools and "get_weather" not in scorer.texts(["Weather?"], ["Sunny."])[0]


def test_load_saved_reads_adapter_tokenizer_and_template(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    save_template(adapter, "qwen")
    model, tokenizer, template = load_saved(str(tiny_model_dir), str(adapter))
    assert isinstance(model, PeftModel) and template.name == "qwen" and tokenizer.padding_side == "left"
    assert not model.training


@pytest.mark.parametrize(
    ("folders", "message"),
    [
        (("./missing-model", None), r"--base_model \./missing-model: no such folder"),
        ((None, "./missing-adapter"), r"--lora_model \./missing-adapter"),
    ],
)
def test_load_saved_names_the_flag(tiny_model_dir, folders, message):
    model_dir, lora = folders
    with pytest.raises(UserError, match=message):
        load_saved(model_dir or str(tiny_model_dir), lora)


@pytest.mark.parametrize("pad_is_end_of_turn", [False, True])
def test_a_system_prompt_every_row_shares_runs_once_and_the_scores_stay(
    reward_dir, tmp_path, monkeypatch, pad_is_end_of_turn
):
    """The rows' shared beginning goes through the reward model once per batch, and every score is the one the row gets
    alone, also where pad is the end-of-turn token that ends every text and rows are alike up to it."""
    import shutil

    from transformers import AutoTokenizer

    import medgpt.scoring

    folder = reward_dir
    if pad_is_end_of_turn:
        folder = tmp_path / "rm"
        shutil.copytree(reward_dir, folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.pad_token = "<|im_end|>"
        tokenizer.save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        config["pad_token_id"] = tokenizer.pad_token_id
        (folder / "config.json").write_text(json.dumps(config))
    scorer = RewardModelScorer(str(folder), batch_size=4)
    system = [{"role": "system", "content": "You are a careful medical assistant. Answer briefly and kindly."}]
    questions = ("I have a fever.", "My knee hurts.", "I have a fever.", "I have a fever.")
    prompts = [[*system, {"role": "user", "content": q}] for q in questions]
    completions = ["Rest.", "Ice it.", "Rest.", "Rest."]
    prefixes, original = [], medgpt.scoring.forward_after_prefix

    def forward_after_prefix(module, prefix_ids, **inputs):
        prefixes.append(None if prefix_ids is None else prefix_ids.shape[1])
        return original(module, prefix_ids, **inputs)

    monkeypatch.setattr(medgpt.scoring, "forward_after_prefix", forward_after_prefix)
    scores = scorer(prompts, completions)
    same = scorer([prompts[0]] * 4, ["Rest."] * 4)
    system_tokens = len(scorer.tokenizer(system[0]["content"])["input_ids"])
    assert len(prefixes) == 2 and all(p is not None and p >= system_tokens for p in prefixes), prefixes
    alone = []
    for text in scorer.texts(prompts, completions):
        with torch.no_grad():
            ids = scorer.tokenizer([text], return_tensors="pt", add_special_tokens=False)
            alone.append(scorer.model(**ids).logits[0, 0].item())
    assert scores == pytest.approx(alone, abs=1e-5)
    assert same == pytest.approx([alone[0]] * 4, abs=1e-5), "rows alike up to their end"
