"""A knowledge base over a folder of documents: passages indexed once and kept up to date, searched for each
question, and the prompt that makes the model answer from them and cite them.

    kb = KnowledgeBase([Path("guidelines")])
    report = kb.update()               # reads new and changed files only (content hashes), reports problems
    passages = kb.search("儿童发热怎么办？")  # numbered, above the relevance threshold, best first

The index lives in `<folder>/.medgpt_index` (or --index_dir): manifest.json with each file's size, mtime, SHA-256 and
passages, and one embedding file per document and model when a dense model is used. A file whose size and mtime
are unchanged is not read again; one whose content hash is unchanged is not chunked or embedded again.
"""

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medgpt import atomic
from medgpt.errors import UserError
from medgpt.retrieval import chunking, documents, search

logger = logging.getLogger(__name__)
INDEX_FOLDER = ".medgpt_index"
FORMAT = 1


@dataclass
class RetrievalArguments:
    """Knowledge-base flags of every front end (chatpdf.py, inference.py, openai_api.py, gradio_demo.py)."""

    knowledge_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folders or files of documents (.txt .md .pdf .docx .jsonl), comma-separated; answers cite them."
        },
    )
    chunk_size: int = field(default=250, metadata={"help": "Longest passage in characters."})
    chunk_overlap: int = field(default=50, metadata={"help": "Characters a passage repeats from the one before."})
    top_k: int = field(default=5, metadata={"help": "Passages put into the prompt at most."})
    min_coverage: float = field(
        default=0.3,
        metadata={"help": "A passage is relevant when it holds this share of the question's IDF weight (0-1)."},
    )
    sim_model: str | None = field(
        default=None, metadata={"help": "Local sentence-transformers folder: dense search fused with BM25."}
    )
    min_similarity: float = field(
        default=0.6, metadata={"help": "With --sim_model: a passage this close (cosine) is relevant too."}
    )
    index_dir: str | None = field(default=None, metadata={"help": f"Index folder (default: <folder>/{INDEX_FOLDER})."})
    max_file_mb: float = field(default=50, metadata={"help": "Larger documents are skipped with a message."})

    def __post_init__(self) -> None:
        if self.chunk_size < 20 or not 0 <= self.chunk_overlap < self.chunk_size:
            raise UserError(
                f"--chunk_size {self.chunk_size} / --chunk_overlap {self.chunk_overlap}: the size must be at least 20 "
                "characters and the overlap from 0 to less than the size."
            )
        if self.top_k < 1 or not 0 <= self.min_coverage <= 1 or not -1 <= self.min_similarity <= 1:
            raise UserError(
                f"--top_k {self.top_k} (>= 1), --min_coverage {self.min_coverage} (0-1), --min_similarity "
                f"{self.min_similarity} (-1 to 1): a value is out of range."
            )


@dataclass
class Passage:
    """A retrieved passage as front ends show it: number in the prompt, file, page or line, text and scores."""

    number: int
    file: str
    location: str
    text: str
    coverage: float
    similarity: float | None = None

    @property
    def source(self) -> str:
        return f"{self.file}, {self.location}" if self.location else self.file

    def as_dict(self) -> dict:
        return {**asdict(self), "source": self.source}


@dataclass
class IndexReport:
    read: list[str] = field(default_factory=list)  # files read and chunked now
    reused: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    problems: list[documents.Problem] = field(default_factory=list)
    passages: int = 0

    def __str__(self) -> str:
        text = (
            f"knowledge base: {self.passages} passages from {len(self.read) + len(self.reused)} files "
            f"({len(self.read)} read now, {len(self.reused)} unchanged, {len(self.removed)} gone)"
        )
        return "\n".join([text, *(f"  skipped {p}" for p in self.problems)])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class KnowledgeBase:
    def __init__(
        self,
        roots: list[Path],
        index_dir: Path | None = None,
        chunk_size: int = 250,
        chunk_overlap: int = 50,
        top_k: int = 5,
        min_coverage: float = 0.3,
        encoder: search.DenseEncoder | None = None,
        min_similarity: float = 0.6,
        max_file_mb: float = 50,
    ) -> None:
        self.roots, self.index_dir = list(roots), index_dir
        self.chunk_size, self.chunk_overlap, self.top_k = chunk_size, chunk_overlap, top_k
        self.min_coverage, self.encoder, self.min_similarity = min_coverage, encoder, min_similarity
        self.max_bytes = int(max_file_mb * 2**20)
        self.files: dict[str, dict] = {}  # display name -> manifest entry
        self.passages: list[tuple[str, dict]] = []
        self.lexical = search.LexicalIndex([])
        self.embeddings = np.zeros((0, 0), dtype=np.float32)
        self._load_manifest()

    @classmethod
    def from_args(cls, retrieval_args: RetrievalArguments) -> "KnowledgeBase | None":
        """The knowledge base the flags ask for, indexed and reported on stderr; None without --knowledge_dir."""
        if not retrieval_args.knowledge_dir:
            return None
        roots = [Path(p.strip()) for p in retrieval_args.knowledge_dir.split(",") if p.strip()]
        for root in roots:
            if not root.exists():
                raise UserError(f"--knowledge_dir {root}: no such folder or file; give the folder of your documents.")
        sim_model = retrieval_args.sim_model
        if sim_model and not Path(sim_model).is_dir():
            raise UserError(
                f"--sim_model {sim_model}: not a local folder. Give the folder of a sentence-transformers model "
                "(nothing is downloaded), or leave the flag out for BM25 alone."
            )
        first = roots[0] if roots[0].is_dir() else roots[0].parent
        kb = cls(
            roots,
            Path(retrieval_args.index_dir) if retrieval_args.index_dir else first / INDEX_FOLDER,
            retrieval_args.chunk_size,
            retrieval_args.chunk_overlap,
            retrieval_args.top_k,
            retrieval_args.min_coverage,
            search.DenseEncoder(sim_model) if sim_model else None,
            retrieval_args.min_similarity,
            retrieval_args.max_file_mb,
        )
        report = kb.update()
        logger.info("%s", report)
        if not kb.passages:
            where = ", ".join(str(r) for r in roots)
            raise UserError(
                f"--knowledge_dir {where}: no readable document text found"
                + (f" ({len(report.problems)} files skipped, listed above)" if report.problems else "")
                + "; put .txt, .md, .pdf, .docx or .jsonl files there."
            )
        return kb

    # ---------------------------------------------------------------- index

    def _settings(self) -> dict:
        return {"format": FORMAT, "chunk_size": self.chunk_size, "chunk_overlap": self.chunk_overlap}

    def _load_manifest(self) -> None:
        manifest = self.index_dir / "manifest.json" if self.index_dir else None
        if manifest and manifest.is_file():
            try:
                saved = json.loads(manifest.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                logger.warning("%s is damaged; the knowledge base is indexed again", manifest)
                return
            if saved.get("settings") == self._settings():
                self.files = saved.get("files", {})

    def add_roots(self, paths: list[Path]) -> IndexReport:
        """More documents (the web page's uploads), indexed at once."""
        self.roots.extend(p for p in paths if p not in self.roots)
        return self.update()

    def update(self) -> IndexReport:
        """Bring the index up to date with the folders: new and changed files read, gone ones dropped."""
        report = IndexReport()
        found, report.problems = documents.document_files(self.roots)
        files: dict[str, dict] = {}
        for path, name in found:
            stat = path.stat()
            entry = self.files.get(name)
            if entry and (entry["size"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
                files[name] = entry
                report.reused.append(name)
                continue
            digest = _sha256(path)
            if entry and entry["sha256"] == digest:
                files[name] = {**entry, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
                report.reused.append(name)
                continue
            try:
                units = documents.read_document(path, self.max_bytes)
            except documents.Unreadable as err:
                report.problems.append(documents.Problem(name, str(err)))
                continue
            passages = [
                {"text": text, "location": unit.location}
                for unit in units
                for text in chunking.chunks(unit.text, self.chunk_size, self.chunk_overlap)
            ]
            files[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest, "passages": passages}
            report.read.append(name)
        report.removed = sorted(set(self.files) - set(files))
        self.files = files
        self._rebuild()
        report.passages = len(self.passages)
        self._save()
        return report

    def _embedding_file(self, entry: dict) -> Path | None:
        if not (self.encoder and self.index_dir):
            return None
        model = hashlib.sha256(str(Path(self.encoder.name).resolve()).encode()).hexdigest()[:12]
        passages = f"{self.chunk_size}-{self.chunk_overlap}"  # the same document cut otherwise has other passages
        return self.index_dir / "embeddings" / f"{entry['sha256'][:32]}-{model}-{passages}.npy"

    def _rebuild(self) -> None:
        self.passages = [(name, p) for name, entry in self.files.items() for p in entry["passages"]]
        self.lexical = search.LexicalIndex([search.tokens(p["text"]) for _, p in self.passages])
        if not self.encoder:
            return
        blocks = []
        for entry in self.files.values():
            cached = self._embedding_file(entry)
            block = np.load(cached) if cached and cached.is_file() else None
            if block is None or block.shape[0] != len(entry["passages"]):  # absent, or left by another version
                block = self.encoder.encode([p["text"] for p in entry["passages"]])
                if cached:
                    with atomic.staged_file(cached) as staging, staging.open("wb") as f:
                        np.save(f, block)
            blocks.append(block)
        self.embeddings = np.concatenate(blocks) if blocks else np.zeros((0, 0), dtype=np.float32)

    def _save(self) -> None:
        if not self.index_dir:
            return
        try:
            atomic.write_text(
                self.index_dir / "manifest.json",
                json.dumps({"settings": self._settings(), "files": self.files}, ensure_ascii=False),
            )
        except OSError as err:  # a read-only share of documents: work from memory, say how to keep the index
            logger.warning(
                "cannot write the index to %s (%s): it is kept in memory only; give --index_dir a writable folder",
                self.index_dir,
                os.strerror(err.errno) if err.errno else err,
            )
            self.index_dir = None

    # ---------------------------------------------------------------- search

    def search(self, question: str, top_k: int | None = None) -> list[Passage]:
        """The passages relevant to `question`, best first and numbered from 1; empty when none is relevant."""
        query = search.tokens(question)
        rankings = [search.ranking(self.lexical.scores(query))]
        similarity = None
        if self.encoder and len(self.passages):
            similarity = self.embeddings @ self.encoder.encode([question])[0]
            rankings.append(search.ranking(similarity + 1))  # +1: every passage ranked, cosine may be <= 0
        found = []
        for index in search.reciprocal_rank_fusion(rankings):
            coverage = self.lexical.coverage(query, index)
            cosine = None if similarity is None else float(similarity[index])
            if coverage >= self.min_coverage or (cosine is not None and cosine >= self.min_similarity):
                name, passage = self.passages[index]
                found.append(Passage(len(found) + 1, name, passage["location"], passage["text"], coverage, cosine))
            if len(found) == (top_k or self.top_k):
                break
        return found
