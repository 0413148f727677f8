"""The knowledge base (medgpt.retrieval): passages on sentence boundaries, every document kind, the incremental
index, BM25 and fused ranking, the "not covered" path, and grounded answers through the chat engine."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from medgpt.errors import UserError
from medgpt.retrieval import chunking, documents, grounding, search
from medgpt.retrieval.knowledge import KnowledgeBase, RetrievalArguments

ROOT = Path(__file__).resolve().parents[1]


def text_pdf(path: Path, pages: list[str]) -> Path:
    """A minimal PDF with one line of ASCII text per page (Helvetica), offsets computed as the format wants."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        page, content = len(objects) + 1, len(objects) + 2
        kids.append(f"{page} 0 R")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content} 0 R "
            f"/Resources << /Font << /F1 {len(pages) * 2 + 3} 0 R >> >> >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(out)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "发热.md").write_text(
        "# 儿童发热\n\n三个月以下的婴儿发热应当立即就医。对乙酰氨基酚两次用药至少间隔4小时。", encoding="utf-8"
    )
    (docs / "asthma.txt").write_text(
        "In the yellow zone take two to four puffs of the reliever inhaler. Rinse your mouth after steroid doses.",
        encoding="utf-8",
    )
    text_pdf(docs / "warfarin.pdf", ["Warfarin leaflet for patients.", "The target INR range is 2.0 to 3.0."])
    return docs


def test_passages_end_on_sentences_and_overlap():
    text = "发热是指体温升高。儿童体温超过三十八度半可以服药！持续三天不退，应当就医。Drink water. See a doctor soon."
    passages = chunking.chunks(text, 30, 12)
    assert all(len(p) <= 30 for p in passages)
    assert passages == [
        "发热是指体温升高。儿童体温超过三十八度半可以服药！",
        "超过三十八度半可以服药！持续三天不退，应当就医。",  # no whole sentence fits the overlap: its last characters
        "持续三天不退，应当就医。Drink water.",  # a whole sentence repeated
        "See a doctor soon.",  # overlap dropped: with it the passage would exceed the size
    ]
    assert chunking.sentences("A. B? 中文。x") == ["A.", "B?", "中文。", "x"]
    assert chunking.chunks("", 40, 5) == []


def test_every_document_kind_is_read_with_pages_and_lines(folder, tmp_path):
    docx = pytest.importorskip("docx")
    document = docx.Document()
    document.add_paragraph("Stroke: use the FAST test.")
    document.add_table(rows=1, cols=2).rows[0].cells[0].text = "Time"
    document.save(folder / "stroke.docx")
    rows = [{"问": "流感疫苗何时接种？", "答": "流感季节之前。"}, {"问": "狂犬病疫苗？", "答": "被咬后尽快接种。"}]
    (folder / "faq.txt").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    found, problems = documents.document_files([folder])
    assert [name for _, name in found] == ["asthma.txt", "faq.txt", "stroke.docx", "warfarin.pdf", "发热.md"]
    assert problems == []
    pdf = documents.read_document(folder / "warfarin.pdf", 2**20)
    assert [(u.location, u.text.strip()) for u in pdf] == [
        ("page 1", "Warfarin leaflet for patients."),
        ("page 2", "The target INR range is 2.0 to 3.0."),
    ]
    faq = documents.read_document(folder / "faq.txt", 2**20)
    assert [u.location for u in faq] == ["line 1", "line 2"] and faq[
        1
    ].text == "问: 狂犬病疫苗？\n答: 被咬后尽快接种。"
    assert "FAST test" in documents.read_document(folder / "stroke.docx", 2**20)[0].text


def test_bad_files_are_named_and_the_rest_is_indexed(folder, tmp_path):
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    writer.write(folder / "locked.pdf")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (folder / "scan.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    (folder / "huge.md").write_text("big. " * 300_000)
    (folder / "image.png").write_bytes(b"\x89PNG")
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the folder")
    os.symlink(outside, folder / "link.txt")
    kb = KnowledgeBase([folder], tmp_path / "index", max_file_mb=1)
    report = kb.update()
    reasons = {p.file: p.reason for p in report.problems}
    assert "encrypted PDF" in reasons["locked.pdf"] and "not a readable PDF" in reasons["broken.pdf"]
    assert "binary" in reasons["scan.txt"] and "--max_file_mb 1" in reasons["huge.md"]
    assert "not a document kind" in reasons["image.png"] and "out of the folder" in reasons["link.txt"]
    assert sorted(report.read) == ["asthma.txt", "warfarin.pdf", "发热.md"]
    assert all(name != "secret.txt" and "outside" not in p["text"] for name, p in kb.passages)
    assert "skipped locked.pdf: an encrypted PDF" in str(report)


def test_an_empty_folder_or_a_missing_one_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"--knowledge_dir .*empty: no readable document text"):
        KnowledgeBase.from_args(RetrievalArguments(knowledge_dir=str(tmp_path / "empty")))
    with pytest.raises(UserError, match="no such folder"):
        KnowledgeBase.from_args(RetrievalArguments(knowledge_dir=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="--sim_model bge: not a local folder"):
        KnowledgeBase.from_args(RetrievalArguments(knowledge_dir=str(tmp_path), sim_model="bge"))
    with pytest.raises(UserError, match="--chunk_overlap 300"):
        RetrievalArguments(chunk_size=250, chunk_overlap=300)


def test_only_changed_files_are_read_again(folder):
    kb = KnowledgeBase.from_args(RetrievalArguments(knowledge_dir=str(folder)))
    assert (folder / ".medgpt_index" / "manifest.json").is_file()
    again = KnowledgeBase([folder], folder / ".medgpt_index")
    assert again.update().read == [], "a fresh process reuses the saved index"
    (folder / "asthma.txt").write_text("Peak flow below half of your best is an emergency.", encoding="utf-8")
    os.utime(folder / "发热.md")  # touched, same content: hashed, not read
    (folder / "warfarin.pdf").unlink()
    report = again.update()
    assert report.read == ["asthma.txt"] and report.reused == ["发热.md"] and report.removed == ["warfarin.pdf"]
    assert again.search("peak flow emergency")[0].file == "asthma.txt"
    assert not any(p.file == "warfarin.pdf" for p in again.search("INR range warfarin")), "gone files are dropped"
    assert len(kb.passages) == 4


def test_search_finds_the_answer_and_knows_when_nothing_matches(folder):
    kb = KnowledgeBase([folder], None)
    kb.update()
    top = kb.search("婴儿发热要去医院吗？")[0]
    assert (top.number, top.file, top.location) == (1, "发热.md", "")
    pdf = kb.search("What INR range should I aim for on warfarin?")[0]
    assert (pdf.file, pdf.location, pdf.source) == ("warfarin.pdf", "page 2", "warfarin.pdf, page 2")
    assert kb.search("带状疱疹会传染吗？") == [] and kb.search("How is a broken wrist treated?") == []


def test_coverage_and_fusion_on_hand_computed_values():
    index = search.LexicalIndex([["fever", "child"], ["fever"], ["cough"]])
    idf = {t: np.log(1 + (3 - df + 0.5) / (df + 0.5)) for t, df in (("fever", 2), ("child", 1), ("rash", 0))}
    assert index.coverage(["fever", "child"], 0) == pytest.approx(1.0)
    assert index.coverage(["fever", "rash"], 1) == pytest.approx(idf["fever"] / (idf["fever"] + idf["rash"]))
    # passage 0: 1/62 + 1/61 = 0.0325, 1: 1/63 + 1/62 = 0.0320, 2: 1/61 = 0.0164 (in one ranking only)
    assert search.reciprocal_rank_fusion([[2, 0, 1], [0, 1]]) == [0, 1, 2]
    assert search.ranking(np.array([0.0, 2.0, 2.0, 1.0])) == [1, 2, 3]


def test_the_prompt_numbers_passages_and_marks_citations(folder):
    kb = KnowledgeBase([folder], None)
    kb.update()
    passages = kb.search("婴儿发热要去医院吗？")
    prompt = grounding.grounded_question("婴儿发热要去医院吗？", passages)
    assert prompt.startswith("请只根据下面编号的文档段落回答问题") and "[1] (发热.md)" in prompt
    assert prompt.endswith("问题：婴儿发热要去医院吗？")
    assert "do not cover it" in grounding.grounded_question("Is shingles contagious?", [])
    marked = grounding.cited("见 [1]。", passages)
    assert marked[0]["cited"] and marked[0]["source"] == "发热.md"


def test_dense_search_is_fused_and_its_embeddings_are_cached(folder, tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("sentence_transformers")
    encoder = search.DenseEncoder(str(tiny_model_dir))  # any local model folder: mean pooling over its states
    kb = KnowledgeBase([folder], tmp_path / "index", encoder=encoder, min_similarity=2.0)
    kb.update()
    assert kb.embeddings.shape[0] == len(kb.passages)
    assert np.allclose(np.linalg.norm(kb.embeddings, axis=1), 1, atol=1e-5)
    assert len(list((tmp_path / "index" / "embeddings").glob("*.npy"))) == 3
    assert kb.search("What INR range on warfarin?")[0].similarity is not None
    calls = []
    monkeypatch.setattr(encoder, "encode", lambda texts: calls.append(texts) or np.zeros((len(texts), 1)))
    KnowledgeBase([folder], tmp_path / "index", encoder=encoder).update()
    assert calls == [], "unchanged documents are not embedded again"
    KnowledgeBase([folder], tmp_path / "index", chunk_overlap=10, encoder=encoder).update()
    assert len(calls) == 3, "passages cut otherwise are embedded anew"


def test_project_documents_and_questions_are_consistent():
    """Every answerable benchmark question's evidence is in its file, so recall@k measures retrieval alone."""
    questions = [json.loads(line) for line in (ROOT / "data/eval/knowledge/questions.jsonl").read_text().splitlines()]
    for q in questions:
        if q["file"] and q["evidence"]:
            assert q["evidence"] in (ROOT / "data/knowledge" / q["file"]).read_text(encoding="utf-8"), q
    assert sum(not q["file"] for q in questions) >= 10
