"""Patient identifiers in text, Chinese and English (tools/scan_phi.py).

PATTERNS is a table: a category, the placeholder that replaces a match, a regular expression whose group `span`
(or the whole match) is the identifier, and an optional check the matched digits must pass. Users extend it with
a YAML or JSON file of rows with the same keys (load_patterns). Markers ("姓名：", "Patient:", "DOB") introduce
names, birth dates, addresses and record numbers, so dates of symptoms, doses, lab values and drug codes, which
carry no marker, are not taken for identifiers; numbers with a structure (resident IDs, bank cards) must pass
their checksum.
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from medgpt.errors import UserError

# Digits not glued to other digits or Latin letters (a CJK character before or after is fine: "电话13812345678";
# so is a JSON escape such as \n, since lines are scanned as written).
_L, _R = r"(?:(?<![0-9A-Za-z])|(?<=\\[nrt]))", r"(?![0-9A-Za-z])"
_DATE = r"(?:\d{4}[-/.年]\d{1,2}[-/.月]\d{1,2}日?|\d{1,2}[-/.]\d{1,2}[-/.]\d{4}|[A-Z][a-z]+\.? \d{1,2},? \d{4})"
SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏"
    "韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)

PATTERNS: list[dict] = [
    {
        "category": "id_number",
        "placeholder": "[ID]",
        "pattern": _L + r"(?P<span>[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx])" + _R,
        "check": "resident_id",
    },
    {
        "category": "bank_card",
        "placeholder": "[CARD]",
        "pattern": _L + r"(?P<span>[1-9]\d{3}(?:[ -]?\d{4}){3}(?:[ -]?\d{1,3})?)" + _R,
        "check": "luhn",
    },
    {
        "category": "phone",
        "placeholder": "[PHONE]",
        "pattern": _L + r"(?P<span>(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2})" + _R,
    },
    {
        "category": "phone",
        "placeholder": "[PHONE]",
        "pattern": _L + r"(?P<span>(?:\(0\d{2,3}\)|0\d{2,3}-)\d{7,8})" + _R,
    },
    {
        "category": "phone",
        "placeholder": "[PHONE]",
        "pattern": r"(?:电话|手机|联系方式|(?i:phone|tel|mobile|cell|call))[^0-9\n\"]{0,12}?"
        r"(?P<span>(?:\+\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4})" + _R,
    },
    {
        "category": "email",
        "placeholder": "[EMAIL]",
        "pattern": r"(?:(?<=\\[nrt])|(?<![\\A-Za-z0-9._%+-]))"
        r"(?P<span>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})",
    },
    {
        "category": "birth_date",
        "placeholder": "[DATE]",
        "pattern": r"(?:出生日期|出生年月日?|出生于|生日|(?i:date of birth|birth ?date|born on|d\.?o\.?b\.?))"
        r"[:：\s]*(?P<span>" + _DATE + ")",
    },
    {
        "category": "record_number",
        "placeholder": "[MRN]",
        "pattern": r"(?:病历号|病案号|住院号|门诊号|就诊卡号|床号|(?i:MRN|medical record (?:number|no\.?)"
        r"|admission (?:number|no\.?)|hospital (?:number|no\.?)))[:：#\s]*(?P<span>[A-Za-z]{0,3}\d[\dA-Za-z-]{3,})",
    },
    {
        "category": "address",
        "placeholder": "[ADDRESS]",
        # a marker with a colon (or 家住), then a span that names a place (省 市 区 路 街 号 ...)
        "pattern": r"(?:(?:家庭住址|现住址|住址|地址)\s*[:：]\s*|家住)"
        r"(?P<span>(?=[^\s，。,;；\"\\]{0,38}[省市区县路街巷号村镇弄楼室])[^\s，。,;；\"\\]{4,40})",
    },
    {
        "category": "address",
        "placeholder": "[ADDRESS]",
        # "Address: 221 Baker Street, London": a house number, then capitalised words (commas allowed)
        "pattern": r"(?i:address)\s*[:：]\s*(?P<span>\d{1,6}[A-Za-z]?,?"
        r"(?:,? (?:(?:St|Rd|Ave|Blvd|Dr|Ln|Apt)\.|[A-Z0-9][A-Za-z0-9]*))+)",
    },
    {
        "category": "name",
        "placeholder": "[NAME]",
        "pattern": r"(?:姓名|患者姓名|病人姓名|联系人)\s*[:：]\s*(?P<span>[\u4e00-\u9fff]{2,4})",
    },
    {
        "category": "name",
        "placeholder": "[NAME]",
        # 患者张某 / 病人李某某, or a full name followed by sex or age: "患者王建国，男，45岁"
        "pattern": r"(?:患者|病人|家属)(?P<span>["
        + SURNAMES
        + r"](?:某{1,2}|[\u4e00-\u9fff]{1,2}(?=[，, ]?(?:男|女|\d{1,3}岁))))",
    },
    {
        "category": "name",
        "placeholder": "[NAME]",
        "pattern": r"(?i:patient(?: name)?|name)\s*[:：]\s*(?P<span>[A-Z][a-z]+(?: [A-Z]\.)?(?: [A-Z][a-z]+)+)",
    },
    {
        "category": "name",
        "placeholder": "[NAME]",
        "pattern": r"(?<![A-Za-z])(?:Mr|Mrs|Ms|Miss)\.? (?P<span>[A-Z][a-z]+(?: [A-Z][a-z]+)?)",
    },
]


def resident_id(digits: str) -> bool:
    """GB 11643 check character of an 18-character Chinese resident ID."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(d) * w for d, w in zip(digits[:17], weights, strict=True))
    return "10X98765432"[total % 11] == digits[17].upper()


def luhn(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if not 16 <= len(digits) <= 19:
        return False
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


CHECKS: dict[str, Callable[[str], bool]] = {"resident_id": resident_id, "luhn": luhn}


@dataclass
class Finding:
    category: str
    placeholder: str
    start: int
    end: int
    text: str


@dataclass
class Pattern:
    category: str
    placeholder: str
    regex: re.Pattern
    check: Callable[[str], bool] | None


def compile_patterns(rows: list[dict], source: str) -> list[Pattern]:
    compiled = []
    for number, row in enumerate(rows, 1):
        where = f"{source} pattern {number}"
        if not isinstance(row, dict) or not {"category", "pattern"} <= set(row):
            raise UserError(
                f"{where}: each pattern needs 'category' and 'pattern' (and may give 'placeholder', 'check')."
            )
        try:
            regex = re.compile(row["pattern"])
        except re.error as err:
            raise UserError(f"{where} ({row['category']}): invalid regular expression: {err}.") from None
        check = row.get("check")
        if check is not None and check not in CHECKS:
            raise UserError(f"{where}: unknown check {check!r}; use one of {', '.join(CHECKS)} or none.")
        placeholder = row.get("placeholder") or f"[{str(row['category']).upper()}]"
        compiled.append(Pattern(row["category"], placeholder, regex, CHECKS.get(check) if check else None))
    return compiled


def load_patterns(path: str | None) -> list[Pattern]:
    """The built-in table, then the rows of a user's YAML/JSON file (a list, or {"patterns": [...]})."""
    rows = list(PATTERNS)
    if path:
        if not Path(path).is_file():
            raise UserError(f"--patterns {path}: no such file.")
        try:
            extra = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise UserError(f"--patterns {path}: not valid YAML/JSON: {err}.") from None
        extra = extra.get("patterns") if isinstance(extra, dict) else extra
        if not isinstance(extra, list):
            raise UserError(f"--patterns {path}: expected a list of patterns (or {{patterns: [...]}}).")
        return compile_patterns(rows, "built-in") + compile_patterns(extra, path)
    return compile_patterns(rows, "built-in")


def find(text: str, patterns: list[Pattern]) -> list[Finding]:
    """Identifiers in `text`, left to right; where two patterns overlap, the one earlier in the table wins."""
    taken: list[Finding] = []
    for pattern in patterns:
        for match in pattern.regex.finditer(text):
            group = "span" if "span" in pattern.regex.groupindex else 0
            start, end = match.span(group)
            value = match.group(group)
            if pattern.check and not pattern.check(value.replace(" ", "").replace("-", "")):
                continue
            if any(start < f.end and f.start < end for f in taken):
                continue
            taken.append(Finding(pattern.category, pattern.placeholder, start, end, value))
    return sorted(taken, key=lambda f: f.start)


def redact(text: str, findings: list[Finding]) -> str:
    """`text` with every finding replaced by its placeholder; all other characters unchanged."""
    pieces, position = [], 0
    for finding in findings:
        pieces += [text[position : finding.start], finding.placeholder]
        position = finding.end
    return "".join(pieces) + text[position:]


def scan_lines(path: Path, patterns: list[Pattern]) -> Iterator[tuple[int, str, list[Finding]]]:
    """(line number, line, findings) for every line of a text file (JSON lines are scanned as written)."""
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as f:
        for number, line in enumerate(f, 1):
            yield number, line, find(line, patterns)


def finding_json(path: Path, line: int, finding: Finding) -> dict:
    return {"file": str(path), "line": line, "category": finding.category, "text": finding.text}
