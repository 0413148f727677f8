"""Reading what a completion answers, for rewards and evaluation: the final answer part, the option(s) it chooses,
and whether it asserts or negates a reference. Chinese and English; linear time on any input.

    final_answer("<think>...</think><answer>答案是C</answer>")          # '答案是C'
    chosen_options("The answer is not C, it is D.", {"A": ..., "D": ...})  # frozenset({'D'})
    reference_options("ECG", {"A": ..., "B": ...})                        # None: an acronym, not letters
    is_negated(text, start, end)                                          # "不是阿司匹林", "avoid aspirin"

How a choice is read (`chosen_options`), first rule that finds one wins:
  1. the last `\\boxed{...}`;
  2. an answer that is nothing but letters ("B", "(C)", "A and C", "c");
  3. the last group of letters with a cue before it ("答案是", "选", "I choose", "The answer is") or a verdict after
     it ("C选项正确", "C is correct"), not negated ("不是C", "not C", "C is wrong", "排除C");
  4. the last group after a plain "is"/"是"/"为", not negated, that is no list marker;
  5. a leading "B." / "(B)" / "B、" when the options are not restated as a list;
  6. the option texts the answer names without negating them.
Letters are single letters standing alone (so ECG, ACE and B12 are no choices), runs of letters only when every one
is an option of the row; lower case only with a cue (so "a fever" is no choice).
"""

import functools
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

from medgpt.errors import UserError

Completion = str | list[dict[str, Any]] | None

# ---------------------------------------------------------------- the answer part of a completion


def completion_text(completion: Completion) -> str:
    """The text of a completion: the string itself, or the content of the last assistant message ("" for None)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    for message in reversed(completion):
        if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
            content = message.get("content") or ""
            if isinstance(content, list):  # multimodal content parts: keep the text ones
                return "".join(part.get("text", "") for part in content if part.get("type") == "text")
            return str(content)
    return ""


def final_answer(text: str) -> str:
    """The final answer in a completion: the last `<answer>` block, else the text without its `<think>` block."""
    if "</think>" in text:
        # Everything up to the last </think> is reasoning; this also covers chat templates that open <think> in the
        # prompt, so the completion starts inside the reasoning.
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:
        text = text.split("<think>", 1)[0]  # the reasoning was cut off: only what came before it is an answer
    # rfind, not a lazy regex: a completion of many unclosed <answer> tags would make the regex quadratic.
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    if start >= 0:
        return text[start + len("<answer>") : end].strip()
    return text.replace("<answer>", "").replace("</answer>", "").strip()  # an <answer> block cut off by the limit


def think_answer_format(text: str) -> bool:
    """Exactly one non-empty `<think>` block, then exactly one non-empty `<answer>` block, nothing around them."""
    if any(text.count(tag) != 1 for tag in ("<think>", "</think>", "<answer>", "</answer>")):
        return False
    match = re.fullmatch(r"\s*<think>(.*)</think>\s*<answer>(.*)</answer>\s*", text, re.DOTALL)
    return bool(match and match.group(1).strip() and match.group(2).strip())


# ---------------------------------------------------------------- negation

# Every pattern below is matched on a short window (WINDOW characters) beside a mention, so reading a completion
# stays linear in its length whatever it holds.
WINDOW = 24
MOST_MENTIONS = 64  # mentions read per completion, the last ones: a final answer is stated at the end
_EN = r"(?<![a-z])"  # an English cue starts a word
NEGATION_CUES = (
    r"(?:不是|不选|不应选|不应该选|不能选|不考虑|排除|除外|除了|并非|而非|不需要|不需|无需|不用|不必|不宜|不应|不能|不可|"
    r"禁用|禁止|避免|忌用|没有|"
    + _EN
    + r"(?:not|cannot|never|rule out|ruled out|rules out|ruling out|exclude|excluding|except|avoid|avoiding|against|"
    r"instead of|rather than|other than|neither|nor|without|no need for|don't|do not|stop))"
)
NEGATION_BEFORE = re.compile(
    NEGATION_CUES
    + r"\s*(?:(?:the|a|an|use of|using|taking|giving|use|take|give)\s+)?(?:选项|选|用|使用|服用|给予|option|choice)?"
    r"\s*[(\[{]?\s*$",
    re.IGNORECASE,
)
NEGATION_AFTER = re.compile(
    r"^\s*[)\]}]?\s*[.:、:]?\s*(?:选项|option)?\s*(?:is|are|was|seems|would be)?\s*"
    r"(?:不对|不正确|错误|错|不是|不选|不可选|排除|被排除|可排除|除外|不符合|不合适|不适用|不推荐|不需要|无效|"
    r"wrong|incorrect|false|isn't|aren't|is not|are not|can be excluded|ruled out|excluded|unlikely|contraindicated)",
    re.IGNORECASE,
)


def is_negated(text: str, start: int, end: int) -> bool:
    """Whether the mention text[start:end] is negated or excluded by the words right beside it."""
    return bool(
        NEGATION_BEFORE.search(text[max(0, start - WINDOW) : start]) or NEGATION_AFTER.match(text[end : end + WINDOW])
    )


# The lookahead lets the scan skip, at C speed, every position where no cue can start.
NEGATION_WORD = re.compile("(?=[不排除并而无禁避忌没ncreaiowds])" + NEGATION_CUES, re.IGNORECASE)


def negates(text: str) -> bool:
    """Whether a clause holds a negation or exclusion cue anywhere."""
    return bool(NEGATION_WORD.search(text))


# ---------------------------------------------------------------- option letters

STRONG_CUE = re.compile(
    r"(?:正确答案|最终答案|参考答案|答案|答|我选|选择|应选|可选|选|"
    + _EN
    + r"(?:final answer|correct answer|answers?|choose|chose|choosing|pick|picked|select|selected|go with|going with))"
    r"\s*(?:是|为|应为|应该是|应是|就是|is|are|would be|should be|will be|=|as|of)?\s*[:：]?\s*"
    r"(?:the\s+)?(?:选项|option|choice)?\s*[(\[{]?\s*$",
    re.IGNORECASE,
)
WEAK_CUE = re.compile(r"(?:是|为|" + _EN + r"(?:is|it's|would be|should be|must be))\s*[:：]?\s*[(\[{]?\s*$", re.I)
VERDICT_AFTER = re.compile(
    r"^\s*[)\]}]?\s*[.:、:,]?\s*(?:选项|option|项)?\s*(?:is|are|was|是|为)?\s*(?:the\s+)?"
    r"(?:正确|对(?:的|了)?(?![\u3400-\u9fff])|最佳|最合适|最恰当|最可能|correct|right|true|best|most likely|answer)",
    re.IGNORECASE,
)
MARKER_AFTER = re.compile(
    r"[)\]]?\s*[.:、．):]\s*(?=[^\s.。])"
)  # "A. aspirin", "(B) fever", "C、发热": an option's label
BOXED = re.compile(r"\\boxed\{([^{}]{0,40})\}")
ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")
LETTER_RUN = re.compile(r"(?<![A-Za-z0-9])(?:[A-Za-z]|[A-Z]{2,8})(?![A-Za-z0-9])")
GROUP_GAP = re.compile(r"[\s()\[\]]*(?:(?:[,/&+、]|and|or|和|与|及|或|以及)[\s()\[\]]*)?", re.IGNORECASE)
ONLY_LETTERS = re.compile(r"[\W_]*")
SEPARATORS_ONLY = re.compile(r"(?:[\W_]|和|与|及|或|以及)*")
LETTERS_WITHOUT_OPTIONS = frozenset("ABCDEFGH")


@dataclass(frozen=True)
class LetterGroup:
    letters: frozenset[str]
    start: int
    end: int
    lower: bool  # written in lower case


def parse_options(value: str | dict | None) -> dict[str, str] | None:
    """The `options` column as {letter: text}: a JSON object string or a dict; None when empty."""
    if not value:
        return None
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as err:
        raise UserError(
            f"the `options` column holds {value[:60]!r}, which is not JSON ({err}); write a JSON object "
            'such as {"A": "...", "B": "..."}, or "" for a row that is not multiple choice.'
        ) from err
    if not isinstance(parsed, dict):
        raise UserError(
            f"the `options` column holds {str(value)[:60]!r}; write a JSON object such as "
            '{"A": "...", "B": "..."}, or "" for a row that is not multiple choice.'
        )
    return {re.sub(r"[^A-Za-z]", "", str(key)).upper(): str(text) for key, text in parsed.items()}


def _letters_of(run: str, valid: frozenset[str], runs_allowed: bool) -> frozenset[str] | None:
    """The option letters a standalone alphanumeric run stands for, or None (a word, an acronym, a code)."""
    if len(run) == 1 and run.isalpha() and run.upper() in valid:
        return frozenset(run.upper())
    if runs_allowed and 1 < len(run) <= len(valid) and run.isupper() and run.isalpha():
        if len(set(run)) == len(run) and set(run) <= valid:
            return frozenset(run)
    return None


def letter_groups(text: str, options: dict[str, str] | None) -> list[LetterGroup]:
    """Option letters standing alone, joined into groups where only separators lie between them ("A and C")."""
    valid = frozenset(options) if options else LETTERS_WITHOUT_OPTIONS
    groups: list[LetterGroup] = []
    runs = list(LETTER_RUN.finditer(text))
    for match in runs[:1] + runs[max(1, len(runs) - 4 * MOST_MENTIONS) :]:  # the first, and those near the end
        letters = _letters_of(match.group(), valid, runs_allowed=bool(options))
        if letters is None:
            continue
        lower = match.group().islower()
        last = groups[-1] if groups else None
        if last and not lower and not last.lower and GROUP_GAP.fullmatch(text, last.end, match.start()):
            groups[-1] = LetterGroup(last.letters | letters, last.start, match.end(), False)
        else:
            groups.append(LetterGroup(letters, match.start(), match.end(), lower))
    return groups


def reference_options(reference: str, options: str | dict | None) -> frozenset[str] | None:
    """The reference option letters ("B", "AC", "A, C"), or None when the reference is not letters: with the row's
    options, every letter must be one of them; without, only single letters A-H (separated when several) count, so
    that an acronym (ECG, ACE, BCG) stays free text."""
    reference = unicodedata.normalize("NFKC", reference or "").strip()
    parsed = parse_options(options)
    valid = frozenset(parsed) if parsed else LETTERS_WITHOUT_OPTIONS
    runs = [run for run in ALNUM_RUN.findall(reference) if run.casefold() not in ("and", "or")]
    if not runs or not SEPARATORS_ONLY.fullmatch(ALNUM_RUN.sub("", reference)):
        return None
    letters: list[str] = []
    for run in runs:
        found = _letters_of(run, valid, runs_allowed=bool(parsed)) if run.isupper() else None
        if found is None:
            return None
        letters += list(run)
    return frozenset(letters) if len(set(letters)) == len(letters) else None


def _option_texts(answer: str, options: dict[str, str]) -> frozenset[str]:
    """Options whose text the answer names without negating it ("不是阿司匹林" and "avoid aspirin" name none)."""
    folded = answer.casefold()
    named: dict[str, str] = {}
    for letter, text in options.items():
        needle = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip(" .。")
        if not needle:
            continue
        position, checked = folded.rfind(needle), 0
        while position >= 0 and checked < MOST_MENTIONS:
            if not is_negated(folded, position, position + len(needle)):
                named[letter] = needle
                break
            position, checked = folded.rfind(needle, 0, position), checked + 1
    # "高热" inside "持续高热" is not a second choice.
    return frozenset(
        letter
        for letter, text in named.items()
        if not any(text != other and text in other for other in named.values())
    )


def chosen_options(answer: str, options: str | dict | None = None) -> frozenset[str]:
    """The option letter(s) an answer chooses (see the module docstring for the rules); empty when it names none."""
    answer = unicodedata.normalize("NFKC", answer).strip()
    parsed = parse_options(options)
    boxed = BOXED.findall(answer)
    if boxed:
        groups = letter_groups(boxed[-1], parsed)
        if groups:
            return frozenset().union(*(g.letters for g in groups))
    groups = letter_groups(answer, parsed)
    if len(groups) == 1 and ONLY_LETTERS.fullmatch(answer[: groups[0].start] + answer[groups[0].end :]):
        return groups[0].letters
    markers = {letter for g in groups if MARKER_AFTER.match(answer, g.end) for letter in g.letters}
    restated = len(markers) >= 3  # the options listed again: their labels are no choice
    strong, weak = None, None
    for group in groups[-MOST_MENTIONS:]:
        before = answer[max(0, group.start - WINDOW) : group.start]
        after = answer[group.end : group.end + WINDOW]
        if is_negated(answer, group.start, group.end):
            continue
        if group.lower and re.match(r"\s*[A-Za-z]", after):
            continue  # "a fever": the article
        is_marker = bool(MARKER_AFTER.match(after))
        if VERDICT_AFTER.match(after) or (STRONG_CUE.search(before) and not (restated and is_marker)):
            strong = group
        elif WEAK_CUE.search(before) and not (restated and is_marker):
            weak = group
    if strong or weak:
        return (strong or weak).letters
    leading = groups[0] if groups and groups[0].start == len(answer) - len(answer.lstrip("([ ")) else None
    if leading and not leading.lower and not restated and MARKER_AFTER.match(answer, leading.end):
        return leading.letters
    return _option_texts(answer, parsed) if parsed else frozenset()


# ---------------------------------------------------------------- free-text agreement with a reference

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# One token per CJK character (Chinese has no spaces), one per Latin word or number ("3.5" stays whole);
# punctuation and whitespace are no tokens.
TOKEN = re.compile(rf"[{CJK}]|[^\W_{CJK}]+(?:\.\d+)*")
# Units written after a number, to one spelling ("5克", "5 g" and "5g" agree). Longest names first.
UNITS = {
    "毫克": "mg", "微克": "mcg", "μg": "mcg", "ug": "mcg", "千克": "kg", "公斤": "kg", "克": "g", "毫升": "ml",
    "升": "l", "毫米汞柱": "mmhg", "毫米": "mm", "厘米": "cm", "小时": "h", "hours": "h", "hour": "h", "hrs": "h",
    "hr": "h", "分钟": "min", "minutes": "min", "minute": "min", "mins": "min", "mmhg": "mmhg", "mcg": "mcg",
    "mg": "mg", "kg": "kg", "ml": "ml", "mm": "mm", "cm": "cm", "min": "min", "g": "g", "l": "l", "h": "h",
}  # fmt: skip
NUMBER_UNIT = re.compile(
    r"(\d+(?:\.\d+)?)\s*(" + "|".join(sorted(map(re.escape, UNITS), key=len, reverse=True)) + r")(?![a-z])"
)
CHINESE_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
# A Chinese number counts as one where it is ordinal (第二) or measures something (四寸, 三次, 五天).
CHINESE_NUMBER = re.compile(
    r"(?<=第)[零一二两三四五六七八九十百]{1,4}|[零一二两三四五六七八九十百]{1,4}(?=[寸次天日周月年岁克片粒支个级度期型肋小分])"
)
LIST_SEPARATOR = re.compile(r"[、,;/\n]|(?<![a-z])(?:or|and)(?![a-z])|或者|或|以及|和|及")
CLAUSE_SEPARATOR = re.compile(r"[。！？!?;\n,]|(?<![a-z])(?:but|instead)(?![a-z])|但是|但|而是|而")


@functools.lru_cache(maxsize=1024)
def _chinese_number(text: str) -> str:
    """ "二十五" -> "25", "十" -> "10", "两" -> "2", "一百" -> "100" (at most hundreds)."""
    total, digit = 0, 0
    for char in text:
        if char in CHINESE_DIGITS:
            digit = CHINESE_DIGITS[char]
        elif char == "十":
            total, digit = total + (digit or 1) * 10, 0
        elif char == "百":
            total, digit = total + (digit or 1) * 100, 0
    return str(total + digit)


def normalize(text: str) -> str:
    """Text as compared with a reference: NFKC, case folded, Chinese numbers in digits, units after a number in one
    spelling with a space before them; full-width punctuation becomes its ASCII form."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("，", ",").replace("；", ";")
    text = CHINESE_NUMBER.sub(lambda m: _chinese_number(m.group()), text)
    return NUMBER_UNIT.sub(lambda m: f"{m.group(1)} {UNITS[m.group(2)]}", text)


def tokenize(text: str) -> list[str]:
    """Tokens for overlap scoring: single CJK characters, Latin words and numbers, no punctuation (normalized)."""
    return TOKEN.findall(normalize(text))


def _f1(predicted: list, reference: list) -> float:
    wanted = Counter(reference)
    # Counting only the predicted items the reference holds keeps a 50,000-token answer cheap.
    overlap = sum((Counter(item for item in predicted if item in wanted) & wanted).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(reference)
    return 2 * precision * recall / (precision + recall)


def _overlap(answer_tokens: list[str], reference_tokens: list[str]) -> float:
    """The mean of token F1 and token-bigram F1: single characters alone overlap a lot between any two Chinese
    medical texts, bigrams reward getting the terms (肋间, 正中线) right and in order."""
    if not answer_tokens:
        return 0.0
    unigram = _f1(answer_tokens, reference_tokens)
    if len(reference_tokens) == 1:
        return unigram
    bigrams = list(zip(answer_tokens, answer_tokens[1:], strict=False))
    return (unigram + _f1(bigrams, list(zip(reference_tokens, reference_tokens[1:], strict=False)))) / 2


SHORT_REFERENCE = 16  # tokens


def _critical(tokens: list[str]) -> set[str]:
    """Tokens a near miss gets wrong: numbers (doses, counts, levels) and single letters (vitamin D, hepatitis B)."""
    return {t for t in tokens if any(c.isdigit() for c in t) or (len(t) == 1 and t.isascii() and t.isalpha())}


def _span(folded: str, needle_tokens: list[str]) -> tuple[int, int] | None:
    """(start, end) in `folded` of the last place its tokens run as needle_tokens (punctuation between), or None."""
    edge = rf"[^\W_{CJK}]"
    pattern = r"[\W_]*".join(map(re.escape, needle_tokens))
    if re.fullmatch(edge, needle_tokens[0][0]):
        pattern = rf"(?<!{edge})" + pattern
    if re.fullmatch(edge, needle_tokens[-1][-1]):
        pattern += rf"(?!{edge})"
    last = None
    for last in re.finditer(pattern, folded):  # noqa: B007 - the last match is the one wanted
        pass
    return last.span() if last else None


def _candidates(folded: str, start: int, end: int, size: int) -> int:
    """How many entity-sized, non-negated items an enumeration holds when the match [start, end) is one of them
    ("amoxicillin, azithromycin or doxycycline"); 1 when the match is no item of a list."""
    bounds = [0, *(p for m in LIST_SEPARATOR.finditer(folded) for p in (m.start(), m.end())), len(folded)]
    items = [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)]
    own = next(((a, b) for a, b in items if a <= start and end <= b), None)
    if own is None or len(TOKEN.findall(folded[own[0] : own[1]])) > size + 2:
        return 1  # the match spans items, or sits in a sentence: no enumeration of candidates
    count = sum(
        1
        for a, b in items
        if 0 < len(TOKEN.findall(folded[a:b])) <= size + 2 and ((a, b) == own or not negates(folded[a:b]))
    )
    return max(count, 1)


def agreement(answer: str, reference: str) -> float:
    """Graded agreement of an answer with a reference in [0, 1].

    1.0 when the answer asserts the reference (its tokens in order, not negated: "不需要高压氧治疗" does not assert
    "高压氧治疗" unless the reference itself says "不需要"); an enumeration of candidates gets the reference's share
    of them (1/6 for six antibiotics). Otherwise the token and bigram F1 over the clauses that do not negate,
    scaled, for a short reference, by the share of its numbers and single letters the answer gets right (维生素D is
    not 维生素C, "每日3次" is not "每日2次"). Numbers and units are compared normalized ("5克" equals "5g",
    "第二肋间" equals "第2肋间").
    """
    reference_tokens, folded = tokenize(reference), normalize(answer)
    if not reference_tokens or not TOKEN.search(folded):
        return 0.0
    reference_negates = negates(normalize(reference))
    span = _span(folded, reference_tokens)
    if span and (reference_negates or not is_negated(folded, *span)):
        return 1.0 / _candidates(folded, *span, len(reference_tokens))
    if not reference_negates and negates(folded):  # what the answer rules out is no part of what it asserts
        folded = " ".join(part for part in CLAUSE_SEPARATOR.split(folded) if not negates(part))
    answer_tokens = TOKEN.findall(folded)
    # In a short reference (a drug, a dose, a level) one wrong number or letter makes a wrong answer; in a long
    # explanation its numbers count as tokens like the others.
    critical = _critical(reference_tokens) if len(reference_tokens) <= SHORT_REFERENCE else set()
    share = len(critical & set(answer_tokens)) / len(critical) if critical else 1.0
    return _overlap(answer_tokens, reference_tokens) * share if share else 0.0
