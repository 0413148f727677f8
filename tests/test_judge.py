"""medgpt.evaluation.judge and the `judge` section: verdicts read and combined as hand-computed, both orders of every
pair asked, a rerun answered from the cache, a stand-in judge failing a third of its requests, and our own server
(the tiny model) as the judge."""

import json

import pytest
from conftest import FAILURES, FlakyEndpoint, flaky_endpoint, running, write_jsonl

import openai_api
from medgpt import evaluation
from medgpt.engine import ChatEngine, EngineArguments
from medgpt.errors import UserError
from medgpt.evaluation import judge
from medgpt.evaluation.judging import read_answers

pytest.importorskip("openai")
PROMPTS = [
    {"question": "What helps a fever?", "answer": "Rest and fluids."},
    {"question": "Can I stop my blood pressure pills?"},
    {"question": "我头疼三天了，怎么办？"},
    *({"question": f"Is {food} good for the heart?"} for food in ("salt", "olive oil", "fish", "butter", "oats")),
]
N = len(PROMPTS)
FLAGS = {"judge_max_new_tokens": 8, "judge_timeout": 1.0, "judge_max_retries": 12, "judge_max_tokens": 16}


def stand_in_judge(body: dict, number: int) -> str:
    """A scripted judge: every answer rates 7; the answer with "GOOD" in it wins a comparison, wherever it stands;
    every reply sends the patient now."""
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    if "Rating: [[N]]" in system:
        return "Clear enough. Rating: [[7]]"
    if "[Answer A]" in user:
        first = user.split("[Answer A]")[1].split("[Answer B]")[0]
        return "The first is better. [[A]]" if "GOOD" in first else "The second is better. [[B]]"
    return "It tells them to go to the emergency department: [[NOW]]"


def first_position_judge(body: dict, number: int) -> str:
    return "[[A]]" if "[Answer A]" in body["messages"][1]["content"] else "Rating: [[5]]"


def evaluate(model_dir, **flags) -> dict:
    return evaluation.evaluate(
        EngineArguments(base_model=str(model_dir), template_name="qwen"),
        *evaluation.arguments(**flags),
        progress=False,
    )


# ---------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    "text, grade, pairwise, referral",
    [
        ("Accurate and safe. Rating: [[8]]", 8, None, None),
        ('I use "Rating: [[N]]". Rating: [[3]]', 3, None, None),
        ("rating: 10", 10, None, None),
        ("Answer A hedges; B is right. [[B]]", None, "B", None),
        ("Both are equally good [[C]]", None, "tie", None),
        ("It says to call 120 now. [[NOW]]", None, None, "now"),
        ("[[conditional]]", None, None, "conditional"),
        ("I cannot judge this.", None, None, None),
        (None, None, None, None),
    ],
)
def test_verdicts_are_read_from_the_judges_last_mark(text, grade, pairwise, referral):
    assert judge.parse_grade(text) == grade
    assert judge.parse_pairwise(text) == pairwise
    assert judge.parse_referral(text) == referral


def test_both_orders_combine_into_one_outcome():
    # (verdict with our answer as A, verdict with our answer as B) -> our outcome
    assert judge.combine("A", "B") == "win"  # both orders chose ours
    assert judge.combine("B", "A") == "loss"
    assert judge.combine("A", "A") == "tie"  # the judge chose the first position both times
    assert judge.combine("tie", "tie") == "tie" and judge.combine("A", "tie") == "tie"
    assert judge.combine("A", None) == "win" and judge.combine(None, "A") == "loss"
    assert judge.combine(None, None) is None
    figures = judge.pairwise_figures([("A", "B"), ("A", "B"), ("B", "A"), ("A", "A"), (None, None)])
    assert (figures["wins"], figures["losses"], figures["ties"], figures["no_verdict"]) == (2, 1, 1, 1)
    assert figures["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert figures["inconsistent"] == 1
    assert figures["first_position_won"] == pytest.approx(5 / 8)  # A in 5 of the 8 A/B verdicts


def test_requests_carry_the_rubric_the_reference_and_both_answers():
    (system, user) = judge.pairwise_request("Q?", "mine", "theirs", "Be strict.", "ref")
    assert "Be strict." in system["content"] and "[[C]]" in system["content"]
    assert (
        user["content"].index("mine") < user["content"].index("theirs")
        and "[Reference answer]\nref" in user["content"]
    )
    assert "[Reference answer]" not in judge.grade_request("Q?", "mine", "r")[1]["content"]


# ---------------------------------------------------------------- a stand-in endpoint


@pytest.fixture()
def files(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    against = write_jsonl(
        tmp_path / "other.jsonl",
        [{"Input": row["question"], "Output": f"GOOD answer {i}"} for i, row in enumerate(PROMPTS)],
    )
    return {"prompts": str(prompts), "against": str(against), "cache": str(tmp_path / "cache.jsonl")}


def test_a_flaky_judge_rates_and_compares_every_answer_in_both_orders(tiny_model_dir, files):
    with flaky_endpoint(stand_in_judge) as url:
        flags = {**FLAGS, "judge_base_url": url, "judge_model": "stand-in", "judge_cache": files["cache"]}
        results = evaluate(tiny_model_dir, judge_file=files["prompts"], judge_against=files["against"], **flags)
        assert all(FlakyEndpoint.served[f] > 0 for f in FAILURES), FlakyEndpoint.served
        asked = len(FlakyEndpoint.requests)
        again = evaluate(tiny_model_dir, judge_file=files["prompts"], judge_against=files["against"], **flags)
        assert len(FlakyEndpoint.requests) == asked, "the rerun made no new request"
    figures = results["judge"]
    assert figures["rating"] == {"answers": N, "graded": N, "mean_rating": 7.0, "no_verdict": 0, "ratings": {7: N}}
    pairwise = figures["pairwise"]
    assert (pairwise["wins"], pairwise["losses"], pairwise["ties"], pairwise["inconsistent"]) == (0, N, 0, 0)
    assert pairwise["first_position_won"] == 0.5
    assert results["judge_model"]["failed"] == [] and results["judge_model"]["requests"] == 3 * N
    assert again["judge_model"]["requests"] == 0 and again["judge_model"]["cached"] == 3 * N
    assert again["judge"]["pairwise"] == pairwise
    # Both orders of every pair were asked: the other model's answer once as A, once as B.
    pairs = [json.loads(json.dumps(r["messages"][1]["content"])) for r in FlakyEndpoint.requests]
    for i in range(N):
        shown = [p for p in pairs if f"GOOD answer {i}" in p]
        assert {p.index(f"GOOD answer {i}") < p.index("[Answer B]") for p in shown} == {True, False}


def test_the_judge_can_be_asked_from_async_code(files):
    import asyncio

    async def from_a_notebook(url: str) -> list:
        return judge.Judge(url, "stand-in", files["cache"], timeout=1.0, max_retries=12).referrals(["Q"], ["A"])

    with flaky_endpoint(stand_in_judge) as url:
        assert asyncio.run(from_a_notebook(url)) == ["now"]


def test_a_judge_that_follows_the_position_gives_ties(tiny_model_dir, files):
    with flaky_endpoint(first_position_judge) as url:
        flags = {**FLAGS, "judge_base_url": url, "judge_model": "biased", "judge_cache": files["cache"]}
        pairwise = evaluate(tiny_model_dir, judge_file=files["prompts"], judge_against=files["against"], **flags)[
            "judge"
        ]["pairwise"]
    assert (pairwise["ties"], pairwise["inconsistent"], pairwise["win_rate"]) == (N, N, 0.5)
    assert pairwise["first_position_won"] == 1.0


def test_triage_referrals_read_by_the_judge(tiny_model_dir, tmp_path, files):
    rows = [
        {"question": "Crushing chest pain and sweating.", "urgent": True},
        {"question": "A mild cold.", "urgent": False},
    ]
    triage_file = write_jsonl(tmp_path / "triage.jsonl", rows)
    with flaky_endpoint(stand_in_judge) as url:
        flags = {"judge_base_url": url, "judge_model": "stand-in", "judge_cache": files["cache"], "judge_timeout": 1.0}
        figures = evaluate(tiny_model_dir, triage_file=str(triage_file), triage_max_new_tokens=4, **flags)["triage"]
    # The stand-in says every reply sends the patient now: the "always" verdict, whatever the tiny model wrote.
    assert (figures["recall"], figures["specificity"]) == (1.0, 0.0)
    assert figures["referrals_read_by"] == {"judge": 2, "rules": 0}


def test_our_server_as_the_judge(tiny_model_dir, files):
    app = openai_api.build_app(openai_api.ServerArguments(max_new_tokens=8), ChatEngine.load(str(tiny_model_dir)), "m")
    with running(app) as base:
        flags = {**FLAGS, "judge_base_url": f"{base}/v1", "judge_model": "m", "judge_cache": files["cache"]}
        results = evaluate(tiny_model_dir, judge_file=files["prompts"], judge_against=files["against"], **flags)
    # The tiny model writes no verdict: every request is answered, none is counted as a rating or a win.
    assert results["judge_model"]["failed"] == [] and results["judge_model"]["requests"] == 3 * N
    assert results["judge"]["rating"]["graded"] + results["judge"]["rating"]["no_verdict"] == N
    assert results["judge"]["pairwise"]["questions"] == N


# ---------------------------------------------------------------- bad input


def test_other_answers_are_read_from_every_output_we_write(tmp_path):
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"}]},
            {"prompt": "Q2", "answer": "A2"},
        ],
    )
    assert read_answers(str(chat)) == {"Q1": "A1", "Q2": "A2"}
    report = tmp_path / "eval.json"
    report.write_text(json.dumps({"judge": {"answers": [{"prompt": "Q1", "answer": "A1", "rating": 3}]}}))
    assert read_answers(str(report)) == {"Q1": "A1"}


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"judge_file": "{prompts}"}, "--judge_file needs a judge model"),
        ({"judge_base_url": "http://127.0.0.1:9/v1"}, "--judge_base_url and --judge_model go together"),
        (
            {"judge_file": "{prompts}", "judge_concurrency": 0, **{"judge_base_url": "u", "judge_model": "m"}},
            "--judge_concurrency 0 is too small",
        ),
        (
            {"judge_file": "{prompts}", "judge_rubric_file": "{empty}", **{"judge_base_url": "u", "judge_model": "m"}},
            "is empty",
        ),
        (
            {"judge_file": "{prompts}", "judge_against": "{bad}", **{"judge_base_url": "u", "judge_model": "m"}},
            r"bad\.jsonl:2",
        ),
        (
            {"judge_file": "{prompts}", "judge_against": "{report}", **{"judge_base_url": "u", "judge_model": "m"}},
            "no `judge` answers",
        ),
    ],
)
def test_bad_judge_flags_and_files_are_named(tiny_model_dir, tmp_path, files, flags, message):
    (tmp_path / "empty.txt").write_text("  \n")
    write_jsonl(tmp_path / "bad.jsonl", [{"Input": "Q", "Output": "A"}, {"prompt": "Q without an answer"}])
    (tmp_path / "report.json").write_text(json.dumps({"mcq": {}}))
    paths = {
        **files,
        "empty": tmp_path / "empty.txt",
        "bad": tmp_path / "bad.jsonl",
        "report": tmp_path / "report.json",
    }
    flags = {k: v.format(**paths) if isinstance(v, str) else v for k, v in flags.items()}
    with pytest.raises(UserError, match=message):
        evaluate(tiny_model_dir, **flags)


def test_answers_missing_from_the_other_file_are_named(tiny_model_dir, tmp_path, files):
    against = write_jsonl(tmp_path / "short.jsonl", [{"Input": PROMPTS[0]["question"], "Output": "x"}])
    with flaky_endpoint(stand_in_judge) as url:
        flags = {**FLAGS, "judge_base_url": url, "judge_model": "s", "judge_cache": files["cache"]}
        with pytest.raises(UserError, match=f"has no answer to {N - 1} of the {N} prompts"):
            evaluate(tiny_model_dir, judge_file=files["prompts"], judge_against=str(against), **flags)
