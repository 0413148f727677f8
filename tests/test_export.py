"""tools/export_gguf.py: the GGUF read back by transformers' own GGUF loader tokenizes like the model and gives
its logits (f16 near-exact, q8_0 close, q4_0 loose) and the same greedy answers for f16; the Modelfile's Go
template, run in Go's text/template as Ollama runs it, renders every conversation byte for byte like our template;
bad input is named and leaves no file behind."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from tiny_model import build_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from medgpt.chat import get_template
from medgpt.errors import UserError
from tools import export_gguf

ROOT = Path(__file__).resolve().parents[1]
# max |logit difference| allowed, as a share of the largest |logit|
TOLERANCE = {"f16": 1e-3, "q8_0": 3e-2, "q4_0": 0.25}


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model_dir(request, tmp_path_factory) -> Path:
    """A tiny model of each exported family (Llama permutes its query/key rows for llama.cpp, Qwen2 does not)."""
    return build_tiny_model(tmp_path_factory.mktemp(request.param) / "model", architecture=request.param)


def export(model_dir: Path, out: Path, outtype: str, *extra: str) -> dict:
    flags = ["--model_path", str(model_dir), "--output_file", str(out / f"model.{outtype}.gguf"), "--outtype", outtype]
    return export_gguf.main([*flags, "--template_name", "chatml", *extra])


def held_out_prompts(count: int = 4) -> list[str]:
    template = get_template("chatml")
    rows = (
        json.loads(line) for line in (ROOT / "data/eval/sft/heldout.jsonl").read_text(encoding="utf-8").splitlines()
    )
    questions = [next(t["value"] for t in row["conversations"] if t["from"] == "human") for row in rows]
    return [template.render([{"role": "user", "content": q}], add_generation_prompt=True) for q in questions[:count]]


@pytest.mark.parametrize("outtype", ["f16", "q8_0", "q4_0"])
def test_gguf_round_trip_through_transformers(model_dir, tmp_path, outtype):
    summary = export(model_dir, tmp_path, outtype)
    gguf = Path(summary["gguf"])
    original = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    original_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name, dtype=torch.float32)
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf.name)
    assert loaded_tokenizer.eos_token == "<|im_end|>", "the template's stop token ends generation"
    for prompt in held_out_prompts():
        ids = original_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert loaded_tokenizer(prompt, add_special_tokens=False)["input_ids"] == ids
        with torch.no_grad():
            expected = original(torch.tensor([ids])).logits
            got = loaded(torch.tensor([ids])).logits
        assert (expected - got).abs().max() <= TOLERANCE[outtype] * expected.abs().max()
        if outtype == "f16":
            greedy = dict(max_new_tokens=12, do_sample=False, pad_token_id=original_tokenizer.pad_token_id)
            first = original.generate(torch.tensor([ids]), **greedy)
            assert torch.equal(loaded.generate(torch.tensor([ids]), **greedy), first)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file is left"


def test_gguf_metadata_carries_template_and_stop(tmp_path, tiny_model_dir):
    import gguf

    summary = export(tiny_model_dir, tmp_path, "q8_0")
    reader = gguf.GGUFReader(summary["gguf"])

    def value(key: str):
        return reader.fields[key].contents()

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert value("general.architecture") == "qwen2"
    assert value("tokenizer.chat_template") == get_template("chatml").to_jinja()
    assert value("tokenizer.ggml.eos_token_id") == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert value("tokenizer.ggml.pre") == "qwen2" and value("tokenizer.ggml.add_bos_token") is False
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types, "tied embeddings are written once"


# Conversations with every kind of turn; contents without surrounding whitespace (Go templates cannot trim).
CONVERSATIONS = [
    [{"role": "user", "content": "我发烧了，怎么办？"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is a normal pulse?"}],
    [
        {"role": "system", "content": "你是一名医生。"},
        {"role": "user", "content": "头痛三天。"},
        {"role": "assistant", "content": "有发烧吗？"},
        {"role": "user", "content": "没有。"},
    ],
    [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking."},
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "tool", "content": '{"sky": "clear"}'},
        {"role": "assistant", "content": "21 degrees, clear."},
        {"role": "user", "content": "Thanks!"},
    ],
]
TEMPLATES = ["smollm2", "qwen", "chatml", "llama3", "mistral", "llama2", "phi3", "gemma", "vicuna", "deepseek3"]


@pytest.fixture(scope="module")
def go_renderer(tmp_path_factory) -> Path:
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (make test installs golang-go where it runs as root)")
    out = tmp_path_factory.mktemp("go")
    env = {"GOCACHE": str(out / "cache"), "GOPATH": str(out / "path"), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    binary = out / "ollama_render"
    subprocess.run(
        ["go", "build", "-o", str(binary), str(ROOT / "tests/fixtures/ollama_render.go")], env=env, check=True
    )
    return binary


def ollama_render(binary: Path, template_file: Path, messages: list[dict], default_system: str) -> str:
    """What Ollama feeds the model: .System is the system messages joined (or the Modelfile's SYSTEM, added as a
    system message when the request has none), .Messages every message."""
    if not any(m["role"] == "system" for m in messages) and default_system:
        messages = [{"role": "system", "content": default_system}, *messages]
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    data = {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    done = subprocess.run([str(binary), str(template_file)], input=json.dumps(data), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", TEMPLATES)
def test_modelfile_template_renders_like_ours(name, go_renderer, tiny_model_dir, tmp_path):
    summary = export(tiny_model_dir, tmp_path, "f16", "--template_name", name)
    text = Path(summary["modelfile"]).read_text(encoding="utf-8")
    assert text.startswith("FROM ./model.f16.gguf\n")
    template = get_template(name)
    go_source = tmp_path / "template.tmpl"
    go_source.write_text(re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1), encoding="utf-8")
    system = re.search(r'SYSTEM """(.*?)"""', text, re.S)
    assert (system.group(1) if system else "") == template.default_system
    assert re.findall(r"PARAMETER stop (.*)", text) == [json.dumps(s, ensure_ascii=False) for s in template.stop_words]
    for messages in CONVERSATIONS:
        expected = template.render(messages, add_generation_prompt=True)
        assert ollama_render(go_renderer, go_source, messages, template.default_system) == expected


def test_modelfile_goes_where_asked_with_a_relative_from(tiny_model_dir, tmp_path):
    summary = export(tiny_model_dir, tmp_path / "gguf", "f16", "--modelfile", str(tmp_path / "ollama" / "Modelfile"))
    assert (tmp_path / "ollama" / "Modelfile").read_text(encoding="utf-8").startswith("FROM ./../gguf/model.f16.gguf")
    assert Path(summary["gguf"]).is_file()


def test_llama_cpp_answers_with_our_template(tiny_model_dir, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    summary = export(tiny_model_dir, tmp_path, "f16")
    llm = llama_cpp.Llama(model_path=summary["gguf"], n_ctx=256, verbose=False)
    prompt = get_template("chatml").render([{"role": "user", "content": "Hello"}], add_generation_prompt=True)
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    reference = AutoTokenizer.from_pretrained(tiny_model_dir)(prompt, add_special_tokens=False)["input_ids"]
    assert tokens == reference
    assert isinstance(llm(prompt, max_tokens=8, temperature=0)["choices"][0]["text"], str)


def test_an_adapter_folder_is_refused(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="holds a LoRA adapter, not a model: merge it first"):
        export(tmp_path / "adapter", tmp_path / "out", "f16")
    assert not (tmp_path / "out").exists()


def test_an_unsupported_architecture_is_refused(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UserError, match="model type 'gpt2' cannot be exported to GGUF yet"):
        export(tmp_path / "gpt2", tmp_path / "out", "f16")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--outtype", "q3_k"], "--outtype q3_k: use one of f32, f16, q8_0, q4_0"),
        (["--output_file", "model.bin"], r"--output_file model.bin: name it \*.gguf"),
        (["--template_name", "nonsense"], "--template_name nonsense"),
    ],
)
def test_bad_flags_are_named(tiny_model_dir, tmp_path, flags, message):
    base = ["--model_path", str(tiny_model_dir), "--output_file", str(tmp_path / "m.gguf")]
    with pytest.raises(UserError, match=message):
        export_gguf.main(base + flags)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tiny_model_dir, tmp_path):
    export(tiny_model_dir, tmp_path, "q8_0")
    with pytest.raises(UserError, match="exists; pass --overwrite True"):
        export(tiny_model_dir, tmp_path, "q8_0")
    export(tiny_model_dir, tmp_path, "q8_0", "--overwrite", "True")
