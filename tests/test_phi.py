"""tools/scan_phi.py and medgpt/datatools/phi.py: every category of planted identifier is found with its exact span;
look-alikes (doses, lab values, dates of symptoms, drug codes, numbers failing their checksum) are not; redacted
copies differ only where an identifier was; the pattern table extends from a file and bad patterns are named."""

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from medgpt.datatools.phi import find, load_patterns, luhn, resident_id
from medgpt.errors import UserError
from tools import scan_phi

ROOT = Path(__file__).resolve().parents[1]


def with_check_character(body: str, valid) -> str:
    """`body` completed with the first last character that `valid` accepts (an ID or card that passes its check)."""
    return next(body + c for c in "0123456789X" if valid(body + c))


RESIDENT_ID = with_check_character("32010219770315641", resident_id)
CARD = with_check_character("621700123456789012", luhn)
WRONG_ID = RESIDENT_ID[:17] + next(c for c in "0123456789X" if c != RESIDENT_ID[17])
WRONG_CARD = CARD[:-1] + str((int(CARD[-1]) + 1) % 10)

# (text, category, identifier)
PLANTED = [
    (f"身份证号{RESIDENT_ID}，请核对。", "id_number", RESIDENT_ID),
    (f"Resident ID: {RESIDENT_ID.lower()}", "id_number", RESIDENT_ID.lower()),
    ("有问题请打我手机13912345678。", "phone", "13912345678"),
    ("家里电话：0571-86012345，晚上在家", "phone", "0571-86012345"),
    ("联系 +86 139 1234 5678 预约", "phone", "+86 139 1234 5678"),
    ("You can call me at (617) 555-0142 after six.", "phone", "(617) 555-0142"),
    ("邮箱 li.ming_88@mail.example.cn 收到报告", "email", "li.ming_88@mail.example.cn"),
    ("Send the scan to j.carter@clinic.example.org please", "email", "j.carter@clinic.example.org"),
    ("出生日期：1977年3月15日，既往体健", "birth_date", "1977年3月15日"),
    ("DOB: 04/22/1961, presenting with chest pain", "birth_date", "04/22/1961"),
    ("Date of birth March 3, 1958.", "birth_date", "March 3, 1958"),
    ("病历号：MZ2024031805 复诊", "record_number", "MZ2024031805"),
    ("住院号 880214，床号 12", "record_number", "880214"),
    ("MRN #4471902 admitted", "record_number", "4471902"),
    (f"医保扣款失败，卡号 {CARD}", "bank_card", CARD),
    ("Card 4111 1111 1111 1111 on file", "bank_card", "4111 1111 1111 1111"),
    ("住址：江苏省南京市鼓楼区中山北路105号，步行可到", "address", "江苏省南京市鼓楼区中山北路105号"),
    ("Home address: 48 Maple Ave. Springfield, then the ward.", "address", "48 Maple Ave. Springfield"),
    ("姓名：陈思远 性别：男", "name", "陈思远"),
    ("患者李某，女，62岁，咳嗽两周", "name", "李某"),
    ("患者周建华，男，45岁，胸闷", "name", "周建华"),
    ("Patient: Emily R. Watson, 34, fever", "name", "Emily R. Watson"),
    ("Mrs. Okafor reports dizziness", "name", "Okafor"),
]

LOOK_ALIKES = [
    "阿莫西林胶囊 500 mg，每日 3 次，连服 7 天",
    "空腹血糖 7.8 mmol/L，糖化血红蛋白 6.5%，肌酐 88 μmol/L",
    "白细胞 12.5×10^9/L，血压 140/90 mmHg，体温 38.5℃，心率 110 次/分",
    "2024年3月5日开始发烧，3月8日来诊",
    "Symptoms began on 2024-03-05 and peaked on 03/08/2024.",
    "国药准字H20055123，批号 20231105",
    "NDC 0002-3227-30, lot 4B17C",
    "ICD-10 I21.9；WHO 2021 指南第 3.2 节",
    f"编号 {WRONG_ID} 的记录",  # 18 characters shaped like an ID, wrong check character
    f"订单 {WRONG_CARD} 已发货",  # 19 digits failing Luhn
    "患者高血压10年，患者黄疸3天，患者男性，32岁",
    "patient: 45-year-old male with cough",
    "服用 1-2 片，必要时 4-6 小时重复",
    "2型糖尿病，BMI 27.4，eGFR 60 ml/min/1.73m²",
    "Take 0.25 g bid; call 911 in an emergency.",
    "Dr. House ordered an MRI",
]


@pytest.fixture(scope="module")
def patterns():
    return load_patterns(None)


@pytest.mark.parametrize(("text", "category", "identifier"), PLANTED, ids=[p[1] for p in PLANTED])
def test_planted_identifier_is_found_with_its_span(patterns, text, category, identifier):
    found = [(f.category, f.text) for f in find(text, patterns)]
    assert (category, identifier) in found
    assert len(found) == 1, found


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_look_alikes_are_not_identifiers(patterns, text):
    assert find(text, patterns) == []


def test_checksums_on_known_numbers():
    assert resident_id("11010519491231002X") and not resident_id("110105194912310021")
    assert luhn("4111111111111111") and not luhn("4111111111111112")
    assert not luhn("4111111111111"), "fewer than 16 digits is not a bank card"


def test_scan_reports_file_line_and_redacts_only_the_identifiers(tmp_path, capsys):
    rows = [
        {"conversations": [{"from": "human", "value": t}, {"from": "gpt", "value": "好的。"}]} for t, _, _ in PLANTED
    ]
    rows.insert(
        3, {"conversations": [{"from": "human", "value": "\n".join(LOOK_ALIKES)}, {"from": "gpt", "value": "嗯"}]}
    )
    source = write_jsonl(tmp_path / "in" / "notes.jsonl", rows)
    text_file = tmp_path / "in" / "pt" / "notes.txt"
    text_file.parent.mkdir()
    text_file.write_bytes("复诊：电话13912345678\r\n无标识的一行\r\n最后一行没有换行".encode())
    out = tmp_path / "redacted"
    assert scan_phi.main(["--file_path", str(tmp_path / "in"), "--redact_dir", str(out)]) == 1
    findings = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    lines = [line + (line > 3) for line in range(1, len(PLANTED) + 1)]  # the look-alike row is line 4
    assert [(f["line"], f["category"], f["text"]) for f in findings if f["file"] == str(source)] == [
        (line, category, identifier) for line, (_, category, identifier) in zip(lines, PLANTED, strict=True)
    ]
    assert [(f["file"], f["line"]) for f in findings if f["file"] != str(source)] == [(str(text_file), 1)]

    redacted_rows = [json.loads(line) for line in (out / "notes.jsonl").read_text(encoding="utf-8").splitlines()]
    placeholders = {"id_number": "[ID]", "bank_card": "[CARD]", "phone": "[PHONE]", "email": "[EMAIL]"}
    placeholders |= {"birth_date": "[DATE]", "record_number": "[MRN]", "address": "[ADDRESS]", "name": "[NAME]"}
    expected = [
        {
            "conversations": [
                {"from": "human", "value": t.replace(i, placeholders[c])},
                {"from": "gpt", "value": "好的。"},
            ]
        }
        for t, c, i in PLANTED
    ]
    expected.insert(3, rows[3])
    assert redacted_rows == expected
    # every byte outside the identifiers is unchanged: same JSON spacing, CRLF line ends, no final newline added
    assert (out / "notes.jsonl").read_bytes().count(b"\n") == len(rows)
    assert (out / "pt" / "notes.txt").read_bytes() == "复诊：电话[PHONE]\r\n无标识的一行\r\n最后一行没有换行".encode()
    assert scan_phi.main(["--file_path", str(out)]) == 0


def test_our_data_is_clean(capsys):
    assert scan_phi.main(["--file_path", str(ROOT / "data")]) == 0
    assert capsys.readouterr().out == ""


def test_medicalgpt_samples_redact_to_valid_json(reference_data, tmp_path, capsys):
    out = tmp_path / "redacted"
    scan_phi.main(["--file_path", str(reference_data), "--redact_dir", str(out)])
    assert capsys.readouterr().out, "the samples hold e-mail addresses and phone numbers"
    for path in out.rglob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            json.loads(line)
    assert scan_phi.main(["--file_path", str(out)]) == 0


def test_patterns_file_extends_the_table(tmp_path, capsys):
    extra = tmp_path / "hospital.yaml"
    extra.write_text(
        'patterns:\n  - category: insurance\n    pattern: "医保卡号[:：]\\\\s*(?P<span>[A-Z]\\\\d{9})"\n',
        encoding="utf-8",
    )
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "医保卡号：H123456789，已结算"}])
    out = tmp_path / "out"
    assert scan_phi.main(["--file_path", str(source), "--patterns", str(extra), "--redact_dir", str(out)]) == 1
    assert json.loads(capsys.readouterr().out)["category"] == "insurance"
    assert json.loads((out / "in.jsonl").read_text(encoding="utf-8")) == {"text": "医保卡号：[INSURANCE]，已结算"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"category": "x", "pattern": "(unclosed"}]', r"pattern 1 \(x\): invalid regular expression"),
        ('[{"category": "x", "pattern": "\\\\d+", "check": "crc"}]', "unknown check 'crc'"),
        ('[{"pattern": "\\\\d+"}]', "needs 'category' and 'pattern'"),
        ('{"rules": 3}', "expected a list of patterns"),
        ("[unclosed", "not valid YAML/JSON"),
    ],
)
def test_bad_patterns_file_is_named(tmp_path, content, message):
    extra = tmp_path / "bad.json"
    extra.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message) as err:
        scan_phi.main(["--file_path", str(ROOT / "data" / "sft"), "--patterns", str(extra)])
    assert str(extra) in str(err.value)


def test_redact_dir_must_not_hold_the_inputs(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "电话13912345678"}])
    with pytest.raises(UserError, match="holds the input files"):
        scan_phi.main(["--file_path", str(tmp_path / "in"), "--redact_dir", str(tmp_path / "in")])
    assert (tmp_path / "in" / "a.jsonl").read_text(encoding="utf-8").count("13912345678") == 1
