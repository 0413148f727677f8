"""Role-played doctor-patient (or nurse-patient) dialogues through any OpenAI-compatible endpoint
(tools/generate_dialogues.py).

Two personas take turns: the patient, played from a seed profile, and the clinician. Each speaks through one chat
completion whose system prompt (PROMPTS, a table per language) gives the role, and whose history shows the other
side's lines as the user's. The official `openai` client retries 429s, 5xx answers, timeouts and dropped
connections with exponential backoff (honouring Retry-After). Finished dialogues are appended to the output file
one JSON line at a time, flushed and synced, so a killed run loses at most the dialogues in flight; a rerun reads
the file, repairs a half-written last line and generates only the missing ids.
"""

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medgpt.atomic import appended_line, finished_ids
from medgpt.errors import UserError

PROMPTS = {
    "zh": {
        "patient": "你在扮演一位来看病的患者。你的情况：{profile}\n"
        "用口语描述症状、回答{staff_name}的提问，每次只说一两句话，不要自己下诊断，不要编造与设定矛盾的内容。",
        "doctor": "你是一位耐心、严谨的医生。根据患者的描述逐步询问病史，给出可能的原因、需要的检查和处理建议；"
        "遇到危险信号时明确建议立即就医。每次回答简洁清楚。",
        "nurse": "你是一位经验丰富的护士。耐心回答患者关于护理、用药和日常注意事项的问题，需要医生处理时明确告诉患者。"
        "每次回答简洁清楚。",
        "greeting": "您好，请问哪里不舒服？",
        "doctor_name": "医生",
        "nurse_name": "护士",
    },
    "en": {
        "patient": "You are role-playing a patient at a consultation. Your situation: {profile}\n"
        "Describe your symptoms in everyday words and answer the {staff_name}'s questions, one or two sentences "
        "at a time. Do not diagnose yourself and do not contradict your situation.",
        "doctor": "You are a careful, patient physician. Take the history step by step, explain likely causes, tests "
        "and treatment, and say clearly when the patient must seek urgent care. Keep each reply short and clear.",
        "nurse": "You are an experienced nurse. Answer questions about care, medication and daily life patiently, and "
        "say clearly when a doctor is needed. Keep each reply short and clear.",
        "greeting": "Hello, what brings you in today?",
        "doctor_name": "doctor",
        "nurse_name": "nurse",
    },
}
STAFF = ("doctor", "nurse")
EMPTY_REPLY_TRIES = 3


@dataclass
class Seed:
    """A patient profile: {"patient": text, "staff"?: doctor|nurse, "opening"?: first line} or MedicalGPT's
    {"system_prompt": text}."""

    patient: str
    staff: str = "doctor"
    opening: str | None = None


def read_seeds(path: str) -> list[Seed]:
    if not Path(path).is_file():
        raise UserError(f"--seed_file {path}: no such file.")
    seeds = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: invalid JSON ({err.msg}).") from None
            profile = row.get("patient") or row.get("system_prompt") if isinstance(row, dict) else None
            if not isinstance(profile, str) or not profile.strip():
                raise UserError(
                    f"{path}:{number}: a seed needs a 'patient' profile (text), e.g. {{\"patient\": ...}}."
                )
            staff = row.get("staff", "doctor")
            if staff not in STAFF:
                raise UserError(f"{path}:{number}: field 'staff' is {staff!r}; use doctor or nurse.")
            seeds.append(Seed(profile.strip(), staff, row.get("opening")))
    if not seeds:
        raise UserError(f"--seed_file {path} holds no seeds.")
    return seeds


def dialogue_id(index: int) -> str:
    return f"dialogue-{index:06d}"


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def cost(self, input_price: float, output_price: float) -> float:
        """Estimated cost, prices per million tokens."""
        return (self.prompt_tokens * input_price + self.completion_tokens * output_price) / 1e6


@dataclass
class Generator:
    client: object  # openai.AsyncOpenAI
    model: str
    turns: int
    language: str
    sampling: dict = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)

    async def _say(self, system: str, history: list[tuple[str, str]], speaker: str) -> str:
        messages = [{"role": "system", "content": system}]
        messages += [{"role": "assistant" if who == speaker else "user", "content": text} for who, text in history]
        if speaker == "patient" and not history:  # the patient speaks first; chat endpoints need a user turn
            messages.append({"role": "user", "content": PROMPTS[self.language]["greeting"]})
        for _ in range(EMPTY_REPLY_TRIES):  # a sampled reply can be empty (an immediate end of turn): sample again
            response = await self.client.chat.completions.create(model=self.model, messages=messages, **self.sampling)
            self.usage.requests += 1
            if response.usage is not None:
                self.usage.prompt_tokens += response.usage.prompt_tokens
                self.usage.completion_tokens += response.usage.completion_tokens
            text = (response.choices[0].message.content or "").strip() if response.choices else ""
            if text:
                return text
        raise ValueError(f"the endpoint returned an empty {speaker} message {EMPTY_REPLY_TRIES} times")

    async def dialogue(self, seed: Seed) -> list[dict]:
        """ShareGPT turns: the clinician's system prompt, then patient (human) and clinician (gpt) in turn."""
        prompts = PROMPTS[self.language]
        patient_system = prompts["patient"].format(profile=seed.patient, staff_name=prompts[f"{seed.staff}_name"])
        history: list[tuple[str, str]] = []
        for turn in range(self.turns):
            line = seed.opening if turn == 0 and seed.opening else await self._say(patient_system, history, "patient")
            history.append(("patient", line))
            history.append(("staff", await self._say(prompts[seed.staff], history, "staff")))
        turns = [{"from": "human" if who == "patient" else "gpt", "value": text} for who, text in history]
        return [{"from": "system", "value": prompts[seed.staff]}, *turns]


async def generate(
    generator: Generator,
    seeds: list[Seed],
    num_dialogues: int,
    output_file: Path,
    concurrency: int,
    on_done: Callable[[int, int], None] = lambda done, total: None,
) -> tuple[int, list[str]]:
    """Write the missing dialogues 0..num_dialogues-1 (seed i % len(seeds)); returns (written, failures)."""
    done = finished_ids(output_file, "a dialogue line of this tool")
    todo = [i for i in range(num_dialogues) if dialogue_id(i) not in done]
    output_file.parent.mkdir(parents=True, exist_ok=True)
    limit = asyncio.Semaphore(concurrency)
    failures: list[str] = []
    written = 0
    with output_file.open("a", encoding="utf-8") as out:

        async def one(index: int) -> None:
            nonlocal written
            seed = seeds[index % len(seeds)]
            async with limit:
                try:
                    turns = await generator.dialogue(seed)
                except Exception as err:  # retries are spent: report it, the next run tries this id again
                    failures.append(f"{dialogue_id(index)}: {type(err).__name__}: {err}")
                    return
            record = {
                "id": dialogue_id(index),
                "seed": index % len(seeds),
                "staff": seed.staff,
                "conversations": turns,
            }
            appended_line(out, record)
            written += 1
            on_done(len(done) + written, num_dialogues)

        await asyncio.gather(*(one(i) for i in todo))
    return written, failures
