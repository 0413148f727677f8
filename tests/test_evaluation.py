"""evaluate_model.py and medgpt.evaluation: figures checked against hand computations on tiny models."""

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import evaluate_model
from medgpt import evaluation
from medgpt.answers import completion_text
from medgpt.chat import get_template, save_template
from medgpt.engine import ChatEngine, EngineArguments
from medgpt.errors import run_cli
from medgpt.model import load_saved
from medgpt.scoring import RewardModelScorer
from medgpt.tokenization import IGNORE_INDEX, encode_chat

CHATS = [
    {"conversations": [{"from": "human", "value": "I have a fever."}, {"from": "gpt", "value": "Rest and drink."}]},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Dose of ibuprofen?"},
            {"role": "assistant", "content": "200 to 400 mg every 6 hours."},
            {"role": "user", "content": "And for a child?"},
            {"role": "assistant", "content": "Ask a doctor: it depends on the weight."},
        ]
    },
    {"instruction": "What lowers blood pressure?", "input": "", "output": "Less salt, exercise and medicine."},
]
PAIRS = [
    {"prompt": "What helps a fever?", "chosen": "Rest and fluids.", "rejected": "Antibiotics for every fever."},
    {
        "conversations": [
            {"from": "system", "value": "Be careful."},
            {"from": "human", "value": "Can I stop my pills?"},
        ],
        "chosen": "Not without asking your doctor.",
        "rejected": "Yes.",
    },
    {"question": "Is a headache an emergency?", "response_chosen": "Usually not.", "response_rejected": "Always."},
    {
        "prompt": [{"role": "user", "content": "Dose of ibuprofen?"}],
        "chosen": [{"role": "assistant", "content": "200 to 400 mg every 6 hours."}],
        "rejected": [{"role": "assistant", "content": "As much as you like."}],
    },
]
PROMPTS = [
    {"question": "What is the normal resting heart rate?", "answer": "Between 60 and 100 beats per minute."},
    {"question": "Which vitamin deficiency causes scurvy?", "answer": "Vitamin C."},
    {"question": "Which drug lowers a fever?", "options": ["aspirin", "insulin"], "answer": "A"},
]
MCQ = [
    {"question": "Which drug lowers a fever?", "options": {"A": "aspirin", "B": "insulin"}, "answer": "A"},
    {"question": "Which hormone lowers blood glucose?", "options": ["aspirin", "insulin", "salt"], "answer": "B"},
    {"question": "Which are vitamins?", "options": ["C", "D", "salt"], "answer": "AB"},  # scored as a set of letters
]


def answer_length(prompts, completions, **kwargs):
    """A reward function for the prompt section: the length of each answer."""
    return [float(len(completion_text(c))) for c in completions]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("eval-data")
    return {
        "chat": str(write_jsonl(folder / "chat.jsonl", CHATS)),
        "mcq": str(write_jsonl(folder / "mcq.jsonl", MCQ)),
        "pairs": str(write_jsonl(folder / "pairs.jsonl", PAIRS)),
        "prompts": str(write_jsonl(folder / "prompts.jsonl", PROMPTS)),
    }


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_saved(str(tiny_model_dir), template_name="qwen", padding_side="right")


def run(model_dir, lora=None, template="qwen", **flags) -> dict:
    return evaluation.evaluate(
        EngineArguments(base_model=str(model_dir), lora_model=lora and str(lora), template_name=template),
        *evaluation.arguments(**flags),
        progress=False,
    )


# ---------------------------------------------------------------- multiple choice


def fixed_lm(model_dir: Path, bias: torch.Tensor):
    """The tiny model with a head that ignores the hidden states: the next token is softmax(bias) everywhere."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    model.lm_head = torch.nn.Linear(model.config.hidden_size, len(bias), bias=True)
    torch.nn.init.zeros_(model.lm_head.weight)
    model.lm_head.bias.data = bias
    return model


def test_mcq_picks_the_option_the_model_finds_most_likely(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = get_template("qwen")
    favoured = tokenizer("aspirin<|im_end|>", add_special_tokens=False)["input_ids"]
    assert set(tokenizer("insulin<|im_end|>", add_special_tokens=False)["input_ids"]) - set(favoured)
    bias = torch.zeros(len(tokenizer))
    bias[favoured] = 30.0  # the answer "aspirin" (option A) is nearly certain, any other token nearly impossible
    file = write_jsonl(tmp_path / "mcq.jsonl", [MCQ[0], {**MCQ[0], "answer": "B"}])
    rows = evaluation.read_rows(str(file), "prompt", "mcq_file")
    result = evaluation.mcq_accuracy(fixed_lm(tiny_model_dir, bias), tokenizer, template, rows, progress=False)
    # The right option must win in row 1, and the model must be wrong in row 2 (it still picks A).
    assert [p["norm"] for p in result["predictions"]] == [p["sum"] for p in result["predictions"]] == ["A", "A"]
    assert result["accuracy"] == result["accuracy_sum"] == result["accuracy_norm"] == 0.5
    assert result["questions"] == 2


def test_mcq_scores_the_option_text_alone_unless_the_stop_token_is_asked_for(tiny_model_dir):
    from medgpt.evaluation.loglik import answer_sequence, shared_prompt_logprobs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = get_template("qwen")
    prompt, answer = [{"role": "user", "content": "Which drug?"}], {"role": "assistant", "content": "aspirin"}
    alone = answer_sequence(tokenizer, template, prompt, answer, None, 2048, with_stop=False)
    with_stop = answer_sequence(tokenizer, template, prompt, answer, None, 2048, with_stop=True)
    scored = [t for t, keep in zip(*alone, strict=True) if keep]
    assert tokenizer.decode(scored) == "aspirin" and alone[0][-len(scored) :] == scored, "the sequence ends there"
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stop in [t for t, keep in zip(*with_stop, strict=True) if keep]
    bias = torch.zeros(len(tokenizer))
    bias[stop] = 3.0
    (total_alone, n_alone), (total_stop, n_stop) = shared_prompt_logprobs(
        fixed_lm(tiny_model_dir, bias), [[alone, with_stop]], tokenizer.pad_token_id, progress=False
    )[0]
    # The fixed head gives every position the same distribution: log p(stop) = 3 - logsumexp(bias), any other
    # token -logsumexp(bias). The extra scored tokens are the stop token and what the template writes after it.
    extra = n_stop - n_alone
    assert extra >= 1
    norm = float(torch.logsumexp(bias, 0))
    assert total_stop - total_alone == pytest.approx((3.0 - norm) + (extra - 1) * -norm, abs=1e-4)


def test_mcq_scores_rows_with_several_letters_and_reads_medqa_rows(tiny, tmp_path):
    model, tokenizer, template = tiny
    medqa = {"question": "Q?", "options": {"A": "x", "B": "y", "C": "z"}, "answer": "z", "answer_idx": "C"}
    file = write_jsonl(tmp_path / "mcq.jsonl", [*MCQ, medqa])
    rows = evaluation.read_rows(str(file), "prompt", "mcq_file", check=evaluation.check_mcq_row)
    assert rows[-1]["answer"] == "C" and "A. x\nB. y\nC. z" in json.loads(rows[-1]["prompt"])[-1]["content"]
    result = evaluation.mcq_accuracy(model, tokenizer, template, rows, progress=False)
    assert result["questions"] == 4 and result["skipped"] == {}
    assert [p["answer"] for p in result["predictions"]] == ["A", "B", "AB", "C"]
    assert result["several_correct"]["questions"] == 1
    assert len(result["predictions"][2]["sum"]) in (1, 2, 3), "a set of letters is the prediction"


# ---------------------------------------------------------------- chat perplexity


def test_perplexity_counts_only_assistant_tokens(tiny, files):
    model, tokenizer, template = tiny
    rows = evaluation.read_rows(files["chat"], "chat", "chat_file")
    messages = json.loads(rows[1]["messages"])
    ids, labels = encode_chat(tokenizer, template, messages, None, 2048)
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    scored = [t for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX]
    nll = -sum(float(logprobs[t - 1, ids[t]]) for t in scored)
    assert tokenizer.decode([ids[t] for t in scored]) == (
        "200 to 400 mg every 6 hours.<|im_end|>Ask a doctor: it depends on the weight.<|im_end|>"
    )
    result = evaluation.chat_perplexity(model, tokenizer, template, rows[1:2], progress=False)
    assert result["tokens"] == len(scored) < len(ids)
    assert result["perplexity"] == pytest.approx(math.exp(nll / len(scored)), rel=1e-5)


def test_batched_scores_equal_one_by_one(tiny, files):
    model, tokenizer, template = tiny
    rows = evaluation.read_rows(files["chat"], "chat", "chat_file")
    sequences = []
    for row in rows + [{"messages": json.dumps(json.loads(rows[1]["messages"])[:3]), "tools": ""}]:
        ids, labels = encode_chat(tokenizer, template, json.loads(row["messages"]), None, 1024)
        sequences.append((ids, [label != IGNORE_INDEX for label in labels]))
    assert len({len(ids) for ids, _ in sequences}) == 4  # padding really happens
    pad = tokenizer.pad_token_id
    single = evaluation.sequence_logprobs(model, sequences, 1, pad, progress=False)
    batched = evaluation.sequence_logprobs(model, sequences, 3, pad, progress=False)
    assert [n for _, n in batched] == [n for _, n in single]
    assert [s for s, _ in batched] == pytest.approx([s for s, _ in single], rel=1e-5, abs=1e-4)


def test_options_scored_after_a_shared_prompt_equal_full_forwards(tiny, adapter_and_merged, tiny_model_dir):
    from peft import PeftModel

    _, tokenizer, template = tiny
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which drug lowers a fever?"}]
    options = ["aspirin", "insulin, a hormone made by the pancreas", "salt"]
    group = [
        evaluation.answer_sequence(tokenizer, template, prompt, evaluation.option_answer(text), None, 256)
        for text in options
    ]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for model in (base, PeftModel.from_pretrained(base, adapter_and_merged[0]).eval()):
        shared = evaluation.shared_prompt_logprobs(model, [group, group[:2]], tokenizer.pad_token_id, progress=False)
        full = evaluation.sequence_logprobs(model, group, 1, tokenizer.pad_token_id, progress=False)
        assert [n for _, n in shared[0]] == [n for _, n in full] == [n for _, n in shared[1]] + [shared[0][2][1]]
        assert [s for s, _ in shared[0]] == pytest.approx([s for s, _ in full], rel=1e-5, abs=1e-4)
        assert [s for s, _ in shared[1]] == pytest.approx([s for s, _ in full[:2]], rel=1e-5, abs=1e-4)


# ---------------------------------------------------------------- full folder vs base + adapter


@pytest.fixture(scope="module")
def adapter_and_merged(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("lora")
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
    peft_model.save_pretrained(folder / "adapter")
    save_template(folder / "adapter", "qwen")
    peft_model.merge_and_unload().save_pretrained(folder / "merged")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder / "merged")
    save_template(folder / "merged", "qwen")
    return folder / "adapter", folder / "merged"


def test_adapter_and_merged_folder_give_the_same_figures(tiny_model_dir, adapter_and_merged, files):
    adapter, merged = adapter_and_merged
    flags = {"chat_file": files["chat"], "mcq_file": files["mcq"], "preference_file": files["pairs"]}
    with_adapter = run(tiny_model_dir, adapter, template=None, **flags)
    folder = run(merged, template=None, **flags)
    base = run(tiny_model_dir, **flags)
    assert with_adapter["model"]["template"] == folder["model"]["template"] == "qwen"
    assert with_adapter["chat"]["perplexity"] == pytest.approx(folder["chat"]["perplexity"], rel=1e-4)
    assert with_adapter["chat"]["perplexity"] != pytest.approx(base["chat"]["perplexity"], rel=1e-3)
    assert with_adapter["mcq"]["predictions"] == folder["mcq"]["predictions"]
    assert with_adapter["preference"]["margins"] == pytest.approx(folder["preference"]["margins"], abs=1e-3)


# ---------------------------------------------------------------- preference pairs


def test_reward_model_pairs_are_scored_by_the_reward_model(reward_dir, files):
    result = run(reward_dir, template=None, preference_file=files["pairs"])
    assert result["model"]["kind"] == "reward" and result["preference"]["kind"] == "reward_model"
    scorer = RewardModelScorer(str(reward_dir))
    rows = evaluation.read_rows(files["pairs"], "preference", "preference_file")
    prompts, tools = [json.loads(r["prompt"]) for r in rows], [r["tools"] for r in rows]
    chosen = scorer(prompts, [json.loads(r["chosen"]) for r in rows], tools)
    rejected = scorer(prompts, [json.loads(r["rejected"]) for r in rows], tools)
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    assert result["preference"]["pairs"] == len(rows) == len(PAIRS)
    assert result["preference"]["margins"] == pytest.approx(margins, abs=1e-5)
    assert result["preference"]["accuracy"] == sum(m > 0 for m in margins) / len(margins)


def test_a_reward_model_adapter_is_recognised_and_scores_pairs(tiny_model_dir, tmp_path, files):
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["q_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "rm-adapter")
    save_template(tmp_path / "rm-adapter", "chatml")
    result = run(tiny_model_dir, tmp_path / "rm-adapter", template=None, preference_file=files["pairs"])
    assert result["model"]["kind"] == "reward" and result["preference"]["kind"] == "reward_model"
    scorer = RewardModelScorer(str(tiny_model_dir), str(tmp_path / "rm-adapter"))
    rows = evaluation.read_rows(files["pairs"], "preference", "preference_file")
    chosen = scorer([json.loads(r["prompt"]) for r in rows], [json.loads(r["chosen"]) for r in rows])
    assert result["preference"]["chosen"] == pytest.approx(sum(chosen) / len(chosen), abs=1e-5)


def test_dpo_implicit_reward_is_the_policy_margin_minus_the_reference_margin(tiny_model_dir, tmp_path, files):
    from tiny_model import build_tiny_model

    reference = build_tiny_model(tmp_path / "ref", seed=1)
    policy_only = run(tiny_model_dir, preference_file=files["pairs"])["preference"]
    reference_only = run(reference, preference_file=files["pairs"])["preference"]
    dpo = run(tiny_model_dir, preference_file=files["pairs"], reference_model=str(reference))["preference"]
    assert policy_only["kind"] == "logprob" and dpo["kind"] == "dpo_implicit_reward"
    expected = [p - r for p, r in zip(policy_only["margins"], reference_only["margins"], strict=True)]
    assert dpo["margins"] == pytest.approx(expected, abs=1e-4)
    assert dpo["accuracy"] == sum(m > 0 for m in dpo["margins"]) / dpo["pairs"]
    same = run(tiny_model_dir, preference_file=files["pairs"], reference_model=str(tiny_model_dir))["preference"]
    assert same["margins"] == [0.0] * len(PAIRS) and same["accuracy"] == 0.0


# ---------------------------------------------------------------- generated answers


def test_prompt_section_scores_greedy_answers(tiny_model_dir, tiny, files, tmp_path):
    out = tmp_path / "eval" / "results.json"
    results = evaluate_model.main(
        ["--base_model", str(tiny_model_dir), "--template_name", "qwen", "--prompt_file", files["prompts"]]
        + ["--reward_funcs", "test_evaluation:answer_length", "medical_accuracy", "--max_new_tokens", "6"]
        + ["--max_samples", "3", "--batch_size", "2", "--output_file", str(out)]
    )
    assert json.loads(out.read_text()) == results and [p.name for p in out.parent.iterdir()] == ["results.json"]
    answers = results["prompts"]["answers"]
    rewards = results["prompts"]["rewards"]
    assert len(answers) == 3 and rewards["medical_accuracy"]["scored"] == 2  # abstains on the lettered row
    assert rewards["test_evaluation:answer_length"]["mean"] == pytest.approx(
        sum(len(a["answer"]) for a in answers) / 3
    )
    engine = ChatEngine(*tiny)
    first = engine.reply([{"role": "user", "content": answers[0]["prompt"]}], max_new_tokens=6, temperature=0)
    assert answers[0]["answer"] == first.text
    assert [a["reference"] for a in answers] == [row["answer"] for row in PROMPTS]


def test_a_config_file_with_cli_overrides(tiny_model_dir, files, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"base_model: {tiny_model_dir}\ntemplate_name: qwen\nchat_file: {files['chat']}\nmax_samples: 1\n"
    )
    assert evaluate_model.main(["--config", str(config)])["chat"]["rows"] == 1
    assert evaluate_model.main(["--config", str(config), "--max_samples", "2"])["chat"]["rows"] == 2


# ---------------------------------------------------------------- user errors


@pytest.mark.parametrize(
    ("flags", "rows", "message"),
    [
        ([], None, "nothing to evaluate: pass at least one of --chat_file"),
        (["--chat_file", "missing.jsonl"], None, "--chat_file missing.jsonl: no such file or folder"),
        (["--mcq_file", "{file}"], [MCQ[0], {"question": "Q?", "answer": "A"}], r"bad\.jsonl:2: field 'options'"),
        (["--mcq_file", "{file}"], [{**MCQ[0], "answer": "E"}], r"bad\.jsonl:1: field 'answer': 'E' is not among"),
        (["--chat_file", "{file}"], [CHATS[0], "{not json"], r"bad\.jsonl:2: invalid JSON"),
        (["--preference_file", "{file}"], [{"prompt": "Q", "chosen": "A"}], r"bad\.jsonl:1: field 'rejected'"),
        (["--chat_file", "{file}", "--batch_size", "0"], [CHATS[0]], "--batch_size 0 is too small"),
        (["--chat_file", "{file}", "--bacth_size", "2"], [CHATS[0]], "unknown argument.*--bacth_size -> --batch_size"),
        (["--chat_file", "{file}", "--reference_model", "x"], [CHATS[0]], "only used with --preference_file"),
        (
            ["--prompt_file", "{file}", "--reward_funcs", "acuracy"],
            PROMPTS,
            "'acuracy' is not a known reward function",
        ),
    ],
)
def test_user_errors_exit_2_naming_the_flag_or_row(tiny_model_dir, tmp_path, capsys, flags, rows, message):
    if rows is not None:
        write_jsonl(tmp_path / "bad.jsonl", rows)
    argv = ["--base_model", str(tiny_model_dir), *(f.format(file=tmp_path / "bad.jsonl") for f in flags)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: evaluate_model.main(argv))
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_reward_model_only_runs_pairs(reward_dir, files, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: evaluate_model.main(["--base_model", str(reward_dir), "--chat_file", files["chat"]]))
    assert exit_info.value.code == 2 and "is a reward model" in capsys.readouterr().err


# ---------------------------------------------------------------- a section of one's own


@dataclass
class AnswerLengthArguments:
    answer_length_file: str | None = field(default=None, metadata={"help": "Chat rows: mean answer length."})
    in_tokens: bool = field(default=False, metadata={"help": "Count tokens instead of characters."})


def answer_length_run(context, rows, args, prepared):
    answers = [json.loads(row["messages"])[-1]["content"] for row in rows]
    sizes = [len(context.tokenizer(a)["input_ids"]) if args.in_tokens else len(a) for a in answers]
    return {"rows": len(rows), "mean": sum(sizes) / len(sizes), "unit": "tokens" if args.in_tokens else "chars"}


def test_a_new_section_runs_with_no_edit_to_the_package(tiny_model_dir, files, tmp_path, monkeypatch, capsys):
    """One Section row defined here: its flags are on the command line, it runs, and it is in the table and JSON."""
    section = evaluation.Section(
        "answer_length",
        AnswerLengthArguments,
        "answer_length_file",
        "chat",
        answer_length_run,
        lambda figures: [(f"mean answer length ({figures['unit']})", f"{figures['mean']:.1f}")],
    )
    monkeypatch.setitem(evaluation.SECTIONS, section.name, section)
    out = tmp_path / "eval.json"
    argv = ["--base_model", str(tiny_model_dir), "--template_name", "qwen", "--answer_length_file", files["chat"]]
    results = evaluate_model.main(
        [*argv, "--in_tokens", "True", "--chat_file", files["chat"], "--output_file", str(out)]
    )
    rows = evaluation.read_rows(files["chat"], "chat", "chat_file")
    assert results["answer_length"]["rows"] == len(rows) and results["answer_length"]["unit"] == "tokens"
    assert "perplexity" in results["chat"], "the built-in sections run beside it"
    assert "mean answer length (tokens)" in capsys.readouterr().out
    assert json.loads(out.read_text())["answer_length"]["mean"] == results["answer_length"]["mean"]
    with pytest.raises(ValueError, match="exists"):
        evaluation.register(section)
