"""RL step speed, phase by phase: our PPO and GRPO steps beside MedicalGPT's own `training/ppo_training.py` (TRL's
RLOO trainer) and `training/grpo_training.py`, on the same prompts, model and lengths. Prints a table and writes
JSON; asserts nothing.

Each side runs as its own process, one after the other. Every figure comes from the run's trainer_state.json
log_history, one entry per step: seconds per step (TRL's `step_time` where the trainer logs it: GRPO, RLOO; else our
PPO's `time/step`, which also holds the optimizer step), rollout tokens (answer tokens sampled in the step), and for
our scripts the phases (`time/generate`, `time/score`, `time/rollout_forward`, `time/update`). Rollout tokens/s is
shown for every step, so step-to-step steadiness is visible (target: every step within 30% of the median). So is
decoded tokens/s: answers x the step's longest answer (TRL's `completions/max_length`, our PPO's
`val/response_length_max`) per second, the tokens every row is sampled and run forward for. A batch decodes every row
until its longest answer ends, so answer tokens/s also moves with the mean answer length of the step's samples;
decoded tokens/s moves with the speed alone (the KV cache lost in a step shows there as in the other).

Like for like: SmolLM2 with LoRA r8 on every linear layer, fp32, no gradient checkpointing, one update pass over each
rollout, the same temperature and answer length limit, --steps steps. PPO is compared with RLOO at the same rollout
size, --prompts answers per step (PPO: one answer to each of --prompts prompts; RLOO: --generations answers to each
of --prompts / --generations prompts); our PPO runs twice, with its critic model (the default) and with
--value_head_on_policy (a value head on the policy's backbone, as TRL's former PPO had). GRPO, both sides:
--generations answers to each of --prompts prompts. The prompts are the questions of data/grpo with MedicalGPT's GRPO
system prompt. The reward model of PPO and RLOO is SmolLM2 with a random one-score head (speed only); the GRPO
rewards are each side's own accuracy and format rules.

MedicalGPT's RLOO script exits with 1 after it has trained and saved (its last call, RLOOTrainer.generate_completions,
is gone from TRL 1.x): its figures are complete, and the table says "ok (exit 1)".

Run it on an otherwise idle machine: where other jobs share the cores, torch's worker threads spin while they wait for
one, and a side's figures say more about its neighbours than about itself (--threads 1 keeps that small).

    python benchmarks/rl_speed.py --medicalgpt ../MedicalGPT      # 5 sides x 6 steps: 25-40 minutes on 2 cores
    python benchmarks/rl_speed.py --medicalgpt ../MedicalGPT --pairs ppo --repeats 2   # PPO both ways and RLOO, twice
    python benchmarks/rl_speed.py --steps 1 --prompts 2 --generations 2 --response_length 8 --micro_batch 2 \\
        --medicalgpt ../MedicalGPT                                 # smoke test: every side runs, the table prints
"""

import argparse
import ast
import json
import os
import statistics
import sys
from pathlib import Path

import peers
from scratch import KEEP_HELP, scratch
from sft_speed import ROOT, run

PHASES = ("generate", "score", "rollout_forward", "update")
RATES = ("tokens_per_second", "generate_tokens_per_second", "decoded_per_second", "generate_decoded_per_second")
STEADY = 0.3  # every step's rollout tokens/s within 30% of the run's median
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # SmolLM2's, but the head
# pair -> (our sides, theirs); PPO twice: with its own critic model, and with the value head on the policy
PAIRS = {
    "ppo": (("ours PPO", "ours PPO value head"), "MedicalGPT RLOO"),
    "grpo": (("ours GRPO",), "MedicalGPT GRPO"),
}
# MedicalGPT's RLOO and GRPO scripts read two settings our pinned TRL no longer has (model_args.trust_remote_code,
# moved onto the training configs; RLOOConfig.dataset_num_proc): they run through this launcher, which gives the
# classes those attributes back with their old defaults, and leaves MedicalGPT's files as they are.
MEDICALGPT_LAUNCHER = (
    "import runpy, sys, trl; trl.ModelConfig.trust_remote_code = False; trl.RLOOConfig.dataset_num_proc = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def write_prompts(source: Path, work: Path, system: str) -> int:
    """The free-text questions of `source`, as each side reads them: {"question", "answer"} rows for GRPO, a chat
    with its answer for PPO and RLOO (MedicalGPT's RLOO takes the system prompt from a column of its own). All of
    them: MedicalGPT's GRPO holds 10% back. Returns the number of rows."""
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if isinstance(r.get("answer"), str) and not r.get("options")]
    chats = [
        {
            "conversations": [
                {"from": "system", "value": system},
                {"from": "human", "value": r["question"]},
                {"from": "gpt", "value": r["answer"]},
            ],
            "system_prompt": system,
        }
        for r in rows
    ]
    for folder, lines in (
        ("grpo", [{"question": r["question"], "answer": r["answer"]} for r in rows]),
        ("chat", chats),
    ):
        (work / folder).mkdir(parents=True)
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        (work / folder / "train.jsonl").write_text(text, encoding="utf-8")
    return len(rows)


def make_reward_model(model: str, out: Path) -> None:
    """SmolLM2 with a random one-score head, saved with its tokenizer and template: both sides' PPO/RLOO reward model
    (and our PPO's critic start)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from medgpt.chat import save_template

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model)
    reward_model = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1, dtype=torch.float32)
    reward_model.config.pad_token_id = tokenizer.pad_token_id  # batches of answers are padded
    reward_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_template(out, "chatml")


def string_constant(script: Path, name: str) -> str:
    """A module-level string constant of a script, read without running it (MedicalGPT's GRPO system prompt)."""
    for node in ast.parse(script.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", "") == name for target in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"{script} defines no {name}; is it the script this benchmark was written for?")


def problems(o: argparse.Namespace) -> list[str]:
    """Batch shapes every side can run."""
    found = []
    if o.prompts % o.generations:
        found.append(f"--prompts {o.prompts} must be a multiple of --generations {o.generations} (RLOO's groups)")
    for what, answers in (("--prompts", o.prompts), ("--prompts x --generations", o.prompts * o.generations)):
        if answers % min(o.micro_batch, answers):
            found.append(f"--micro_batch {o.micro_batch} must divide {what} ({answers})")
    return found


def sides(o: argparse.Namespace, work: Path, model: str, system: str) -> dict[str, tuple[str, int, list[str]]]:
    """name -> (script, answers per step, flags); MedicalGPT's scripts are named training/..."""
    grpo_answers = o.prompts * o.generations
    grpo_micro, ppo_micro = min(o.micro_batch, grpo_answers), min(o.micro_batch, o.prompts)
    common = ["--max_steps", str(o.steps), "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "True"]
    common += ["--learning_rate", "1e-5", "--temperature", str(o.temperature), "--seed", "42", "--bf16", "False"]
    common += ["--gradient_checkpointing", "False"]
    ours = [*common, "--template_name", "chatml", "--torch_dtype", "float32", "--use_peft", "True"]
    ours += ["--target_modules", "all", "--lora_rank", "8", "--lora_alpha", "16", "--save_strategy", "no"]
    ours += ["--validation_split_percentage", "0", "--system_prompt", system]
    theirs = [*common, "--model_name_or_path", model, "--dtype", "float32", "--use_peft", "True", "--lora_r", "8"]
    theirs += ["--lora_alpha", "16", "--lora_target_modules", *LINEAR]
    grpo_batch = ["--per_device_train_batch_size", str(grpo_micro)]
    grpo_batch += ["--gradient_accumulation_steps", str(grpo_answers // grpo_micro)]
    grpo_batch += ["--num_generations", str(o.generations), "--max_completion_length", str(o.response_length)]
    grpo_batch += ["--beta", str(o.beta)]
    ppo_batch = ["--per_device_train_batch_size", str(ppo_micro)]
    ppo_batch += ["--gradient_accumulation_steps", str(o.prompts // ppo_micro)]
    reward = str(work / "reward_model")
    our_ppo = [*ours, *ppo_batch, "--sft_model_path", model, "--reward_model_path", reward]
    our_ppo += ["--kl_coef", str(o.kl_coef), "--train_file_dir", str(work / "chat")]
    our_ppo += ["--response_length", str(o.response_length), "--num_ppo_epochs", str(o.ppo_epochs)]
    return {
        "ours PPO": ("ppo_training.py", o.prompts, our_ppo),
        "ours PPO value head": ("ppo_training.py", o.prompts, [*our_ppo, "--value_head_on_policy", "True"]),
        "MedicalGPT RLOO": (
            "training/ppo_training.py",
            o.prompts,
            [*theirs, *ppo_batch, "--sft_model_path", model, "--reward_model_path", reward, "--beta", str(o.kl_coef)]
            + ["--train_file_dir", str(work / "chat"), "--validation_file_dir", str(work / "chat"), "--do_train"]
            + ["--num_generations", str(o.generations), "--max_completion_length", str(o.response_length)]
            # It writes no trainer_state.json of its own: the checkpoint after the last step holds the log.
            + ["--save_strategy", "steps", "--save_steps", str(o.steps)],
        ),
        "ours GRPO": (
            "grpo_training.py",
            grpo_answers,
            [*ours, *grpo_batch, "--model_name_or_path", model, "--train_file_dir", str(work / "grpo")],
        ),
        "MedicalGPT GRPO": (
            "training/grpo_training.py",
            grpo_answers,
            [*theirs, *grpo_batch, "--train_file_dir", str(work / "grpo"), "--save_strategy", "no"]
            + ["--remove_unused_columns", "False", "--preprocessing_num_workers", "1"],
        ),
    }


def logged_steps(out: Path, answers: int) -> list[dict]:
    """Per step: seconds, rollout tokens, rollout tokens/s and (our scripts) the phase seconds."""
    states = [out / "trainer_state.json", *sorted(out.glob("checkpoint-*/trainer_state.json"), key=os.path.getmtime)]
    found = [path for path in states if path.is_file()]
    if not found:
        return []
    steps = []
    for entry in json.loads(found[0].read_text())["log_history"]:
        seconds = entry.get("step_time", entry.get("time/step"))
        length = entry.get("completions/mean_length", entry.get("val/response_length"))
        if seconds is None or length is None:
            continue  # the run's closing summary
        tokens = length * answers
        figures = {"step": entry["step"], "seconds": seconds, "rollout_tokens": tokens}
        figures["tokens_per_second"] = tokens / seconds
        for phase in PHASES:
            if f"time/{phase}" in entry:
                figures[phase] = entry[f"time/{phase}"]
        if "generate" in figures:
            figures["generate_tokens_per_second"] = tokens / max(figures["generate"], 1e-9)
        longest = entry.get("completions/max_length", entry.get("val/response_length_max"))
        if longest is not None:
            figures["decoded_per_second"] = longest * answers / seconds
            if "generate" in figures:
                figures["generate_decoded_per_second"] = longest * answers / max(figures["generate"], 1e-9)
        steps.append(figures)
    return steps


def summarize(name: str, steps: list[dict], wall: float, peak: float, code: int) -> dict:
    result = {"side": name, "ok": bool(steps), "exit_code": code, "wall_seconds": wall, "peak_rss_gb": peak}
    result["steps"] = steps
    if not steps:
        return result
    result["seconds_per_step"] = statistics.median(s["seconds"] for s in steps)
    for key in (*RATES, *PHASES):
        if all(key in s for s in steps):
            result[key] = statistics.median(s[key] for s in steps)
    for key in RATES:
        if key in result:
            worst = max(abs(s[key] / result[key] - 1) for s in steps)
            result[f"{key}_worst_off_median"] = worst
    return result


def compare(results: dict[str, dict]) -> None:
    """Ours vs MedicalGPT: speed (their s/step over ours), tokens/s (ours over theirs), memory (ours over theirs)."""
    for our_sides, theirs in PAIRS.values():
        for a, b in ((results.get(ours, {}), results.get(theirs, {})) for ours in our_sides):
            if not (a.get("ok") and b.get("ok")):
                continue
            a["vs_medicalgpt"] = {
                "speed": b["seconds_per_step"] / a["seconds_per_step"],
                "speed_by_round": [
                    theirs_s / ours_s if ours_s and theirs_s else None
                    for ours_s, theirs_s in zip(a.get("rounds", []), b.get("rounds", []), strict=False)
                ],
                "tokens_per_second": a["tokens_per_second"] / b["tokens_per_second"],
                "memory": a["peak_rss_gb"] / b["peak_rss_gb"],
            }


def table(results: dict[str, dict]) -> str:
    def cell(r: dict, key: str, width: int, digits: int = 2) -> str:
        return f"{r[key]:{width}.{digits}f}" if key in r else f"{'-':>{width}}"

    lines = [
        "medians of the steps; tok/s: rollout tokens per second of the whole step, gen tok/s: of its generate phase;",
        "phase columns: seconds per step; x: ours vs MedicalGPT (speed and tok/s > 1: ours faster; memory < 1: less)",
        f"{'side':<19} {'s/step':>7} {'tok/s':>7} {'gen tok/s':>9} {'generate':>8} {'score':>6} {'rollout_fwd':>11} "
        f"{'update':>7} {'peak GB':>7} {'speed x':>7} {'tok/s x':>7} {'memory x':>8}  status",
    ]
    for r in results.values():
        ratios = r.get("vs_medicalgpt", {})
        status = ("ok" if r["ok"] else "FAILED") + (f" (exit {r['exit_code']})" if r["exit_code"] else "")
        lines.append(
            f"{r['side']:<19} {cell(r, 'seconds_per_step', 7)} {cell(r, 'tokens_per_second', 7, 1)} "
            f"{cell(r, 'generate_tokens_per_second', 9, 1)} {cell(r, 'generate', 8)} {cell(r, 'score', 6)} "
            f"{cell(r, 'rollout_forward', 11)} {cell(r, 'update', 7)} {r['peak_rss_gb']:7.2f} "
            f"{cell(ratios, 'speed', 7)} {cell(ratios, 'tokens_per_second', 7)} {cell(ratios, 'memory', 8)}  {status}"
        )
    by_round = [r for r in results.values() if len(r.get("vs_medicalgpt", {}).get("speed_by_round", [])) > 1]
    if by_round:
        lines += ["", "speed x by round (their median s/step over ours, the same round)"]
        for r in by_round:
            figures = " ".join(f"{x:.2f}x" if x else "-" for x in r["vs_medicalgpt"]["speed_by_round"])
            lines.append(f"  {r['side']:<19} {figures}")
    lines += ["", f"rollout tokens/s per step, all rounds (steady: each within {STEADY:.0%} of its round's median);"]
    lines += ["answer tokens, then decoded tokens (answers x the step's longest answer), per second of the step and"]
    lines += ["of its generate phase"]
    labels = ("answers/step", "answers/generate", "decoded/step", "decoded/generate")
    for r in results.values():
        for key, label in zip(RATES, labels, strict=True):
            if f"{key}_worst_off_median" in r:
                worst = r[f"{key}_worst_off_median"]
                verdict = "steady" if worst <= STEADY else "UNSTEADY"
                figures = " ".join(f"{s[key]:.1f}" for s in r["steps"])
                lines.append(f"  {r['side']:<19} {label:<16} {figures}  ({verdict}: worst {worst:.0%} off)")
    return "\n".join(lines)


def run_sides(o: argparse.Namespace, work: Path, model: str, checkout: Path | None, system: str) -> dict[str, dict]:
    """Each chosen side as a process of its own, one after the other, --repeats times in rotation (every side once,
    then again: a slow spell of the machine falls on all sides); each side's figures over the steps of all its runs,
    and per round its median s/step (`rounds`), read from its trainer_state.json."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.update(HF_DATASETS_CACHE=str(work / "cache"), TRL_EXPERIMENTAL_SILENCE="1", WANDB_DISABLED="true")
    env.pop("MEDGPT_ALLOCATOR", None)  # our scripts' default allocator (tcmalloc where installed)
    if o.threads:
        env["OMP_NUM_THREADS"] = str(o.threads)
    chosen = [name for pair in o.pairs for name in (*PAIRS[pair][0], PAIRS[pair][1])]
    runs: dict[str, list[tuple[list[dict], float, float, int]]] = {}
    for round_ in range(o.repeats):
        for name, (script, answers, flags) in sides(o, work, model, system).items():
            theirs = script.startswith("training/")
            if name not in chosen or (theirs and checkout is None):
                continue
            python = [peers.python("medicalgpt"), "-c", MEDICALGPT_LAUNCHER] if theirs else [sys.executable]
            out = work / f"{name.replace(' ', '_')}-{round_ + 1}"
            log = work / f"{out.name}.log"
            command = [*python, script, *flags, "--output_dir", str(out)]
            wall, peak, code = run(command, checkout if theirs else ROOT, env, log)
            steps = logged_steps(out, answers)
            runs.setdefault(name, []).append((steps, wall, peak, code))
            print(f"{name}, round {round_ + 1}: {wall:.0f} s, {len(steps)} steps, exit {code} ({log})", flush=True)
    results = {}
    for name, done in runs.items():
        steps = [step for run_steps, *_ in done for step in run_steps]
        wall, peak, code = sum(r[1] for r in done), max(r[2] for r in done), max(r[3] for r in done)
        results[name] = summarize(name, steps, wall, peak, code)
        results[name]["rounds"] = [statistics.median(s["seconds"] for s in r[0]) if r[0] else None for r in done]
        # Steadiness is a run's own: each round against its own median (the machine's pace shifts between rounds).
        each = [summarize(name, r[0], *r[1:]) for r in done if r[0]]
        for key in (f"{rate}_worst_off_median" for rate in RATES):
            if key in results[name]:
                results[name][key] = max(one[key] for one in each if key in one)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--data", default=str(ROOT / "data" / "grpo" / "medical_qa.jsonl"), help="Question rows")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=8, help="Prompts per step (PPO, GRPO); RLOO: answers per step")
    parser.add_argument("--generations", type=int, default=4, help="Answers per prompt of GRPO and RLOO")
    parser.add_argument("--response_length", type=int, default=128, help="Most tokens per answer, every side")
    parser.add_argument("--micro_batch", type=int, default=8, help="per_device_train_batch_size, every side")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--ppo_epochs", type=int, default=1, help="Our PPO's passes per rollout (RLOO/GRPO: 1)")
    parser.add_argument("--kl_coef", type=float, default=0.05, help="PPO's KL coefficient, RLOO's beta")
    parser.add_argument("--beta", type=float, default=0.001, help="GRPO's KL beta, both sides (run_grpo.sh's)")
    parser.add_argument("--medicalgpt", help="A MedicalGPT checkout: also run its RLOO and GRPO scripts")
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS), help="PPO vs RLOO, GRPO")
    parser.add_argument("--repeats", type=int, default=1, help="Rounds of every side, run in rotation")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every side (default: torch's, every core)")
    parser.add_argument("--json", default="outputs/benchmarks/rl_speed.json")
    parser.add_argument("--keep_work", action="store_true", help=KEEP_HELP)
    o = parser.parse_args()
    if problems(o):
        parser.error("; ".join(problems(o)))

    with scratch("rl-bench-", report=o.json, keep=o.keep_work) as work:
        model = str(Path(o.model).resolve())
        checkout = Path(o.medicalgpt).resolve() if o.medicalgpt else None
        # Every side gets MedicalGPT's GRPO system prompt (our GRPO's own without a checkout).
        system_source = checkout / "training" / "grpo_training.py" if checkout else ROOT / "grpo_training.py"
        system = string_constant(system_source, "SYSTEM_PROMPT" if checkout else "THINK_THEN_ANSWER")
        rows = write_prompts(Path(o.data), work, system)
        make_reward_model(model, work / "reward_model")
        print(f"{o.model}: {rows} prompts, {o.steps} steps, work folder {work}", flush=True)
        results = run_sides(o, work, model, checkout, system)
        compare(results)
        print()
        print(table(results))
        settings = {key: value for key, value in vars(o).items() if key != "json"}
        Path(o.json).parent.mkdir(parents=True, exist_ok=True)
        Path(o.json).write_text(json.dumps({"settings": settings, "results": list(results.values())}, indent=2) + "\n")
        print(f"\nJSON: {o.json}")


if __name__ == "__main__":
    main()
