"""Reward functions: hand-computed scores on Chinese and English answers, letter extraction, the table."""

import json
import sys
import types

import pytest

from medgpt.answers import completion_text, final_answer
from medgpt.errors import UserError
from medgpt.rewards import REWARD_FUNCTIONS, RewardSettings, build_reward_funcs, choice_accuracy, medical_accuracy

REFERENCE = "位于第2肋间隙，距前正中线4寸。"  # tokens: 位 于 第 2 肋 间 隙 距 前 正 中 线 4 寸
OPTIONS = json.dumps({"A": "阿莫西林", "B": "布洛芬", "C": "对乙酰氨基酚"}, ensure_ascii=False)
not_a_function = 42  # for the non-callable module:attribute check


def my_reward(prompts, completions, **kwargs):
    return [0.5] * len(completions)


def score(func, completion, answer, options=""):
    return func(prompts=["q"], completions=[completion], answer=[answer], options=[options])[0]


def test_completion_text_and_final_answer():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "from a chat"}]) == "from a chat"
    assert final_answer("<think>\nreasoning\n</think>\n<answer> B </answer>") == "B"
    assert final_answer("<think>reasoning</think>\n final text ") == "final text"
    assert final_answer("reasoning only, the template opened it</think>B") == "B"
    assert final_answer("<think>cut off by the length limit") == ""


def test_medical_accuracy_exact_and_contained():
    assert score(medical_accuracy, REFERENCE, REFERENCE) == 1.0
    # Punctuation and spacing differ, the reference is contained: full marks.
    assert score(medical_accuracy, "该穴位于第2肋间隙, 距前正中线4寸, 胸部。", REFERENCE) == 1.0


def test_medical_accuracy_partial_chinese_hand_computed():
    # 第2肋间隙 (5 tokens) of 14: P = 1, R = 5/14 -> F1 = 10/19; bigrams 4 of 4 vs 13 -> F1 = 8/17; it gets one of
    # the reference's two numbers (2, 4) right: x 1/2.
    assert score(medical_accuracy, "第2肋间隙", REFERENCE) == pytest.approx((10 / 19 + 8 / 17) / 4)
    # The wrong intercostal space is a wrong answer, however many characters it shares.
    assert score(medical_accuracy, "在第3肋间隙，乳头直下。", REFERENCE) == 0.0


def test_medical_accuracy_unrelated_is_low_and_scores_are_graded():
    assert score(medical_accuracy, "多喝水，注意休息。", REFERENCE) < 0.1
    completions = [
        REFERENCE,
        "第2肋间隙，前正中线旁开4寸",
        "胸部，第二肋间，距中线四寸",  # Chinese numbers read as digits
        "第2肋间隙",
        "不知道",
    ]
    scores = [score(medical_accuracy, c, REFERENCE) for c in completions]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == len(scores)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_medical_accuracy_english_think_answer_chat_and_abstain():
    reference = "Metformin is the first-line drug."
    # answer tokens: metformin first line (3) vs 6 reference tokens -> P = 1, R = 1/2, F1 = 2/3;
    # bigrams (metformin, first) misses, (first, line) hits: P = 1/2, R = 1/5, F1 = 2/7.
    chat = [
        {"role": "assistant", "content": "<think>\nType 2 diabetes.\n</think>\n<answer>Metformin, first line</answer>"}
    ]
    assert score(medical_accuracy, chat, reference) == pytest.approx((2 / 3 + 2 / 7) / 2)
    assert score(medical_accuracy, "The answer: METFORMIN is the first-line drug!", reference) == 1.0
    assert score(medical_accuracy, "anything", "") is None
    assert score(medical_accuracy, "B", "B", OPTIONS) is None  # a letter reference is choice_accuracy's row


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("答案：B", "B"),
        ("答案是 C", "C"),
        ("The answer is D.", "D"),
        ("<think>A? no.</think><answer>B</answer>", "B"),
        ("正确答案为（Ｂ）", "B"),
        ("B. 布洛芬", "B"),
        ("答案是B，选项A错误", "B"),
    ],
)
def test_choice_accuracy_formats(answer, letter):
    assert score(choice_accuracy, answer, letter) == 1.0
    assert score(choice_accuracy, answer, "E") == 0.0


def test_choice_accuracy_multi_letter_option_text_and_abstain():
    four = json.dumps({"A": "发热", "B": "咳嗽", "C": "头痛", "D": "乏力"}, ensure_ascii=False)
    assert score(choice_accuracy, "Answer: A and C", "AC", four) == 1.0
    assert score(choice_accuracy, "答案是 C、A", "AC", four) == 1.0
    assert score(choice_accuracy, "Answer: A", "AC", four) == 0.0
    assert score(choice_accuracy, "Answer: A and C", "A, C") == 1.0  # separated letters need no options
    assert score(choice_accuracy, "A", "AC") is None  # without options a letter run may be an acronym
    assert score(choice_accuracy, "<think>两者都可退热</think><answer>布洛芬</answer>", "B", OPTIONS) == 1.0
    assert score(choice_accuracy, "对乙酰氨基酚", "B", OPTIONS) == 0.0
    assert score(choice_accuracy, "The answer is a fever.", "A") == 0.0  # the article "a" is no choice
    assert score(choice_accuracy, "B", "第2肋间隙") is None
    assert score(choice_accuracy, "B", "") is None


def test_format_default_and_custom_pattern():
    reward = build_reward_funcs(["format"], RewardSettings())[0]
    good = "<think>\nstep one\nstep two\n</think>\n\n<answer>\n第2肋间隙\n</answer>\n"
    bad = [
        "<answer>B</answer>",
        "<think>x</think>",
        "<think>x</think><answer>B</answer> trailing text",
        "preamble <think>x</think><answer>B</answer>",
    ]
    assert reward(prompts=["q"] * 5, completions=[good, *bad]) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert reward(prompts=["q"], completions=[[{"role": "assistant", "content": good}]]) == [1.0]
    custom = build_reward_funcs(["format"], RewardSettings(format_pattern=r".*</think>\s*\S.*"))[0]
    assert custom(prompts=["q", "q"], completions=["reasoning</think> B", "no think tags"]) == [1.0, 0.0]


def test_length_penalty_hand_computed():
    reward = build_reward_funcs(["length_penalty"], RewardSettings(max_completion_length=100, overlong_buffer=20))[0]
    lengths = [10, 80, 85, 90, 100, 120]
    ids = [[0] * n for n in lengths]
    assert reward(prompts=["q"] * 6, completions=["c"] * 6, completion_ids=ids) == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    with pytest.raises(UserError, match="--overlong_buffer 300"):
        build_reward_funcs(["length_penalty"], RewardSettings(max_completion_length=256, overlong_buffer=300))


def test_build_reward_funcs_names_aliases_and_imports():
    names = list(REWARD_FUNCTIONS)[:4]
    assert [f.__name__ for f in build_reward_funcs(names, RewardSettings())] == names
    aliases = build_reward_funcs(["accuracy", "accuracy_reward", "format_reward"], RewardSettings())
    assert [f.__name__ for f in aliases] == ["medical_accuracy", "medical_accuracy", "format"]
    # pytest imports this file as `test_rewards`; `tests.test_rewards` is a second copy, so compare behaviour.
    (imported,) = build_reward_funcs(["tests.test_rewards:my_reward"], RewardSettings())
    assert imported.__name__ == "my_reward" and imported(prompts=["q"], completions=["c"]) == [0.5]


@pytest.mark.parametrize(
    ("names", "settings", "expected"),
    [
        (
            ["medical_acuracy"],
            RewardSettings(),
            r"'medical_acuracy'.*did you mean 'medical_accuracy'.*choice_accuracy",
        ),
        (["no_such_pkg.rewards:fn"], RewardSettings(), r"--reward_funcs 'no_such_pkg.rewards:fn'.*cannot import"),
        (["tests.test_rewards:missing"], RewardSettings(), r"has no attribute 'missing'"),
        (["tests.test_rewards:not_a_function"], RewardSettings(), r"'not_a_function' is not callable"),
        (["mypkg.rewards.fn"], RewardSettings(), r"package\.module:function \(a colon"),
        (["reward_model"], RewardSettings(), r"--reward_model_path"),
        (["format"], RewardSettings(format_pattern="<think>("), r"--format_pattern '<think>\('"),
        ([], RewardSettings(), r"--reward_funcs is empty"),
    ],
)
def test_build_reward_funcs_errors(names, settings, expected):
    with pytest.raises(UserError, match=expected):
        build_reward_funcs(names, settings)


def test_build_reward_funcs_reports_all_problems_at_once():
    with pytest.raises(UserError) as err:
        build_reward_funcs(["nope", "reward_model"], RewardSettings(format_pattern="("))
    assert all(part in str(err.value) for part in ("'nope'", "--reward_model_path", "--format_pattern"))


def test_reward_model_is_imported_lazily(monkeypatch):
    class FakeScorer:
        __name__ = "reward_model"

        def __init__(self, model_dir, device=None):
            self.model_dir, self.device = model_dir, device

    monkeypatch.setitem(sys.modules, "medgpt.scoring", types.SimpleNamespace(RewardModelScorer=FakeScorer))
    (scorer,) = build_reward_funcs(["reward_model"], RewardSettings(reward_model_path="outputs-rm", device="cpu"))
    assert isinstance(scorer, FakeScorer) and scorer.model_dir == "outputs-rm" and scorer.device == "cpu"
