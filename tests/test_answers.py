"""The answer parser behind the rewards: a table of ordinary and adversarial completions, Chinese and English, each
with the reward it must get, and degenerate 50,000-character completions that every reward reads in linear time."""

import importlib.util
import json
from pathlib import Path

import pytest

from medgpt.answers import agreement, chosen_options, final_answer, reference_options, think_answer_format
from medgpt.rewards import RewardSettings, build_reward_funcs

DRUGS = json.dumps({"A": "阿司匹林", "B": "布洛芬", "C": "对乙酰氨基酚", "D": "吗啡"}, ensure_ascii=False)
EN = json.dumps({"A": "aspirin", "B": "ibuprofen", "C": "paracetamol", "D": "morphine"})
TESTS = json.dumps({"A": "ECG", "B": "chest X-ray", "C": "troponin", "D": "D-dimer", "E": "echocardiogram"})
ROOT = Path(__file__).resolve().parents[1]
REWARDS = {
    f.__name__: f for f in build_reward_funcs(["choice_accuracy", "medical_accuracy", "format"], RewardSettings())
}

# (reward, completion, reference, options, expected reward)
CASES = [
    # choice_accuracy: ordinary phrasings
    ("choice_accuracy", "C", "C", DRUGS, 1.0),
    ("choice_accuracy", "(B)", "B", DRUGS, 1.0),
    ("choice_accuracy", "答案：B", "B", DRUGS, 1.0),
    ("choice_accuracy", "正确答案为（Ｂ）", "B", DRUGS, 1.0),
    ("choice_accuracy", "Ｃ", "C", DRUGS, 1.0),
    ("choice_accuracy", "The answer is D.", "D", EN, 1.0),
    ("choice_accuracy", "I choose C", "C", EN, 1.0),
    ("choice_accuracy", "我认为是C", "C", DRUGS, 1.0),
    ("choice_accuracy", "C选项正确", "C", DRUGS, 1.0),
    ("choice_accuracy", "应选C。", "C", DRUGS, 1.0),
    ("choice_accuracy", r"Therefore \boxed{C}", "C", EN, 1.0),
    ("choice_accuracy", "c", "C", EN, 1.0),
    ("choice_accuracy", "the answer is c.", "C", EN, 1.0),
    ("choice_accuracy", "B. 布洛芬", "B", DRUGS, 1.0),
    ("choice_accuracy", "(B) ibuprofen, because it reduces inflammation", "B", EN, 1.0),
    ("choice_accuracy", "<think>A? no.</think><answer>B</answer>", "B", DRUGS, 1.0),
    ("choice_accuracy", "答案是B，选项A错误", "B", DRUGS, 1.0),
    ("choice_accuracy", "Option C is correct.", "C", EN, 1.0),
    ("choice_accuracy", "Final answer: A and C", "AC", DRUGS, 1.0),
    ("choice_accuracy", "答案是 C、A", "AC", DRUGS, 1.0),
    ("choice_accuracy", "布洛芬", "B", DRUGS, 1.0),
    ("choice_accuracy", "Paracetamol is the safest choice here.", "C", EN, 1.0),
    # choice_accuracy: negation, exclusion and corrections
    ("choice_accuracy", "The answer is not C, it is D.", "D", EN, 1.0),
    ("choice_accuracy", "The answer is not C, it is D.", "C", EN, 0.0),
    ("choice_accuracy", "答案不是C，是D", "D", DRUGS, 1.0),
    ("choice_accuracy", "排除A，选B", "B", DRUGS, 1.0),
    ("choice_accuracy", "排除A，选B", "A", DRUGS, 0.0),
    ("choice_accuracy", "A. wrong. C. right", "C", DRUGS, 1.0),
    ("choice_accuracy", "A. wrong. C. right", "A", DRUGS, 0.0),
    ("choice_accuracy", "A is incorrect; B is the best answer", "B", EN, 1.0),
    ("choice_accuracy", "不是阿司匹林", "A", DRUGS, 0.0),
    ("choice_accuracy", "Avoid aspirin.", "A", EN, 0.0),
    ("choice_accuracy", "不选A", "A", DRUGS, 0.0),
    ("choice_accuracy", "Rule out A.", "A", EN, 0.0),
    # choice_accuracy: gaming by restating the options
    ("choice_accuracy", "A. 阿司匹林 B. 布洛芬 C. 对乙酰氨基酚 D. 吗啡", "A", DRUGS, 0.0),
    ("choice_accuracy", "A. aspirin\nB. ibuprofen\nC. paracetamol\nD. morphine", "A", EN, 0.0),
    ("choice_accuracy", "Answer: A. aspirin B. ibuprofen C. paracetamol D. morphine", "A", EN, 0.0),
    ("choice_accuracy", "aspirin, ibuprofen, paracetamol or morphine", "A", EN, 0.0),
    ("choice_accuracy", "A B C D", "A", DRUGS, 0.0),
    ("choice_accuracy", "The answer is a fever.", "A", EN, 0.0),
    ("choice_accuracy", "It depends on the patient.", "A", EN, 0.0),
    # choice_accuracy: acronyms are no letters
    ("choice_accuracy", "ECG", "A", TESTS, 1.0),  # the option's text
    ("choice_accuracy", "Order an ECG first.", "C", TESTS, 0.0),
    ("choice_accuracy", "B12 deficiency", "B", DRUGS, 0.0),
    ("choice_accuracy", "anything", "ECG", None, None),  # an acronym reference is free text: abstain
    ("choice_accuracy", "anything", "ACE inhibitor", None, None),
    # medical_accuracy: ordinary agreement
    ("medical_accuracy", "甲硝唑", "甲硝唑", None, 1.0),
    ("medical_accuracy", "首选甲硝唑治疗。", "甲硝唑", None, 1.0),
    ("medical_accuracy", "Metronidazole is the drug of choice.", "metronidazole", None, 1.0),
    ("medical_accuracy", "<think>anaerobes</think><answer>Metronidazole</answer>", "metronidazole", None, 1.0),
    ("medical_accuracy", "每次5g，每日两次", "每次5克，每日2次", None, 1.0),
    ("medical_accuracy", "500 mg", "500毫克", None, 1.0),
    ("medical_accuracy", "第二肋间隙", "第2肋间隙", None, 1.0),
    ("medical_accuracy", "不是甲硝唑，而是阿莫西林", "阿莫西林", None, 1.0),
    ("medical_accuracy", "Take amoxicillin, not metronidazole.", "amoxicillin", None, 1.0),
    ("medical_accuracy", "不需要手术", "不需要手术", None, 1.0),
    # medical_accuracy: negation and lists
    ("medical_accuracy", "Not metronidazole.", "metronidazole", None, 0.0),
    ("medical_accuracy", "不需要高压氧治疗", "高压氧治疗", None, 0.0),
    ("medical_accuracy", "Avoid aspirin in children.", "aspirin", None, 0.0),
    ("medical_accuracy", "可排除心肌梗死", "心肌梗死", None, 0.0),
    ("medical_accuracy", "不是甲硝唑，而是阿莫西林", "甲硝唑", None, 0.0),
    (
        "medical_accuracy",
        "amoxicillin, azithromycin, doxycycline, ceftriaxone, clarithromycin, levofloxacin",
        "amoxicillin",
        None,
        pytest.approx(1 / 6),
    ),
    ("medical_accuracy", "可用阿莫西林、头孢克肟或阿奇霉素", "阿莫西林", None, pytest.approx(1 / 3)),
    # medical_accuracy: near misses
    ("medical_accuracy", "维生素D", "维生素C", None, 0.0),
    ("medical_accuracy", "vitamin D", "vitamin C", None, 0.0),
    ("medical_accuracy", "每日3次", "每日2次", None, 0.0),
    ("medical_accuracy", "乙型肝炎", "甲型肝炎", None, pytest.approx((3 / 4 + 2 / 3) / 2)),  # partial, not full
    ("medical_accuracy", "", "甲硝唑", None, 0.0),
    ("medical_accuracy", "anything", "", None, None),
    ("medical_accuracy", "B", "B", DRUGS, None),
    # format
    ("format", "<think>reason</think><answer>B</answer>", "", None, 1.0),
    ("format", "<think>\nstep\n</think>\n\n<answer>\n第2肋间隙\n</answer>\n", "", None, 1.0),
    ("format", "<think></think><answer></answer>", "", None, 0.0),
    ("format", "<think>x</think><answer> </answer>", "", None, 0.0),
    ("format", "<think>x</think><answer>A</answer><answer>B</answer>", "", None, 0.0),
    ("format", "<think>x</think><think>y</think><answer>A</answer>", "", None, 0.0),
    ("format", "<answer>A</answer><think>x</think>", "", None, 0.0),
    ("format", None, "", None, 0.0),
]


@pytest.mark.parametrize(("reward", "completion", "reference", "options", "expected"), CASES)
def test_reward_table(reward, completion, reference, options, expected):
    got = REWARDS[reward](prompts=["q"], completions=[completion], answer=[reference], options=[options])[0]
    assert got == expected, (reward, completion, reference)


def test_the_table_is_large_and_bilingual():
    assert len(CASES) >= 60
    chinese = sum(any("\u4e00" <= ch <= "\u9fff" for ch in str(case[1])) for case in CASES)
    assert 20 <= chinese <= len(CASES) - 20


def test_parser_pieces():
    assert final_answer("<answer>" * 5 + "x") == "x"
    assert final_answer("<think>r</think>a<answer>1</answer><answer>2</answer>") == "2"
    assert reference_options("ECG", None) is None and reference_options("AC", DRUGS) == frozenset("AC")
    assert reference_options("A, C", None) == frozenset("AC")
    assert chosen_options("ACE inhibitors", TESTS) == frozenset()
    assert not think_answer_format("<think>x</think>")
    assert agreement("5 g", "5g") == 1.0


def load_benchmark():
    spec = importlib.util.spec_from_file_location("reward_speed", ROOT / "benchmarks" / "reward_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_degenerate_completions_are_read_in_linear_time(capsys):
    """benchmarks/reward_speed.py's degenerate 50,000-character completions: a bound far above its figures (under
    50 ms a call), far below what a backtracking regex takes (seconds to hours)."""
    figures = load_benchmark().main(["--repeat", "1"])
    assert "slowest call" in capsys.readouterr().out
    slow = {(text, reward): ms for text, row in figures.items() for reward, ms in row.items() if ms > 1000}
    assert len(figures) >= 10 and not slow, slow
