"""Model and tokenizer loading: special tokens, LoRA targets, resize, dtype, RoPE, attention, quantization."""

import pytest
import torch
from transformers import AutoTokenizer, TrainingArguments

from medgpt import args, model
from medgpt.args import ChatArguments, LoraArguments, ModelArguments
from medgpt.errors import UserError


def load(tiny_model_dir, lora: LoraArguments | None = None, max_length: int | None = None, **model_kwargs):
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), **model_kwargs)
    tokenizer = model.load_tokenizer(model_args)
    training_args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    return tokenizer, model.load_model(model_args, lora, tokenizer, training_args, max_length)


@pytest.fixture
def no_pad_model(tmp_path):
    """A tiny Llama-style checkpoint whose tokenizer and config have no pad token (like Llama-2)."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path / "llama", architecture="llama", pad=False)


def test_missing_pad_token_is_set_on_tokenizer_and_model_config(no_pad_model):
    tokenizer, lm = load(no_pad_model)
    assert tokenizer.pad_token == tokenizer.eos_token
    assert lm.config.pad_token_id == tokenizer.pad_token_id == lm.generation_config.pad_token_id
    batch = tokenizer(["short", "a longer prompt here"], padding=True, return_tensors="pt")
    assert torch.isfinite(lm(**batch).logits).all(), "batches > 1 work without a native pad token"


def test_all_targets_every_linear_layer_but_the_head(tiny_model_dir):
    _, lm = load(tiny_model_dir, LoraArguments(target_modules="all"))
    adapted = {name.split(".")[-4] for name, _ in lm.named_parameters() if "lora_A" in name}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("lm_head" in name and "lora" in name for name, _ in lm.named_parameters())


def test_listed_targets_and_modules_to_save(tiny_model_dir):
    _, lm = load(tiny_model_dir, LoraArguments(target_modules="q_proj,v_proj", modules_to_save="embed_tokens"))
    adapted = {name.split(".")[-4] for name, _ in lm.named_parameters() if "lora_A" in name}
    assert adapted == {"q_proj", "v_proj"}
    trainable = [name for name, p in lm.named_parameters() if p.requires_grad]
    assert any("embed_tokens.modules_to_save" in name for name in trainable)


def test_bad_target_module_is_a_clear_error(tiny_model_dir):
    with pytest.raises(UserError, match="--target_modules nonexistent_proj"):
        load(tiny_model_dir, LoraArguments(target_modules="nonexistent_proj"))


def test_embeddings_grow_with_the_tokenizer(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_tokens(["高血压", "metformin"])
    tokenizer.save_pretrained(tmp_path / "tok")
    grown, lm = load(
        tiny_model_dir,
        LoraArguments(modules_to_save="embed_tokens,lm_head"),
        tokenizer_name_or_path=str(tmp_path / "tok"),
    )
    assert len(grown) == 602 and lm.get_input_embeddings().weight.shape[0] == 640  # rounded up to a multiple of 64


def test_full_fine_tuning_keeps_the_requested_dtype(tiny_model_dir):
    _, lm = load(tiny_model_dir, LoraArguments(use_peft=False), torch_dtype="bfloat16")
    assert {p.dtype for p in lm.parameters()} == {torch.bfloat16}, "no upcast to fp32"
    assert lm.config.use_cache is False, "no KV cache while training (it would break packed attention masks)"


def test_lora_on_a_bf16_base_keeps_the_base_in_bf16(tiny_model_dir):
    _, lm = load(tiny_model_dir, LoraArguments(), torch_dtype="bfloat16")
    frozen = {p.dtype for p in lm.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}


def test_rope_scaling_stretches_the_context(tiny_model_dir):
    _, lm = load(tiny_model_dir, None, max_length=3000, rope_scaling="linear")
    assert lm.config.rope_parameters["rope_type"] == "linear" and lm.config.rope_parameters["factor"] == 3.0
    _, plain = load(tiny_model_dir, None, max_length=512, rope_scaling="linear")
    assert plain.config.rope_parameters["rope_type"] == "default", "no scaling when the length fits"


def test_eager_and_sdpa_attention_agree(tiny_model_dir):
    _, eager = load(tiny_model_dir, None, attn_implementation="eager")
    _, sdpa = load(tiny_model_dir, None, attn_implementation="sdpa")
    ids = torch.tensor([[1, 30, 40, 50, 2]])
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.allclose(eager(ids).logits, sdpa(ids).logits, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
def test_flash_attention_without_gpu_says_how_to_fix(tiny_model_dir):
    with pytest.raises(UserError, match="flash-attn package and a CUDA GPU"):
        load(tiny_model_dir, None, flash_attn=True)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="cannot load the tokenizer from"):
        model.load_tokenizer(ModelArguments(model_name_or_path=str(tmp_path / "nothing-here")))


def test_unknown_template_lists_choices(tiny_model_dir):
    with pytest.raises(UserError, match="Choose one of: .*qwen2.5"):
        model.load_chat_tokenizer(
            ModelArguments(model_name_or_path=str(tiny_model_dir)), ChatArguments(template_name="qwen9")
        )


def test_named_template_becomes_the_tokenizer_chat_template(tiny_model_dir):
    from template import get_template

    tokenizer, template = model.load_chat_tokenizer(
        ModelArguments(model_name_or_path=str(tiny_model_dir)), ChatArguments(template_name="llama3")
    )
    assert tokenizer.chat_template == get_template("llama3").to_jinja() and template.name == "llama3"


@pytest.fixture(scope="module")
def wider_model_dir(tmp_path_factory):
    """bitsandbytes quantizes in blocks of 64 values, so its layers need a hidden size of at least 64."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("wide") / "model", hidden=64)


def test_qlora_loads_4bit_nf4_with_trainable_adapters(wider_model_dir):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    tokenizer, lm = load(wider_model_dir, LoraArguments(qlora=True))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in lm.modules())
    quant = lm.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.quant_state
    assert quant.quant_type == "nf4"
    assert lm.get_nb_trainable_parameters()[0] > 0
    with torch.no_grad():
        assert torch.isfinite(lm(**tokenizer("fever", return_tensors="pt")).logits).all()


def test_load_in_8bit(wider_model_dir):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    _, lm = load(wider_model_dir, LoraArguments(), load_in_8bit=True)
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in lm.modules())


def test_lora_hyperparameters_reach_peft(tiny_model_dir):
    _, lm = load(tiny_model_dir, LoraArguments(lora_rank=4, lora_alpha=8, lora_dropout=0.1))
    config = lm.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)


def test_hub_flags_reach_from_pretrained(tiny_model_dir, monkeypatch):
    """cache_dir, model_revision, hf_hub_token and trust_remote_code are passed to every hub load."""
    seen = []
    original = AutoTokenizer.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        seen.append(kwargs)
        return original(cls, path)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(spy))
    (model_args,) = args.parse(
        (ModelArguments,),
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--cache_dir",
            "/tmp/c",
            "--model_revision",
            "v2",
            "--hf_hub_token",
            "secret",
            "--trust_remote_code",
            "True",
        ],
    )
    model.load_tokenizer(model_args)
    assert seen[0] == {"cache_dir": "/tmp/c", "revision": "v2", "token": "secret", "trust_remote_code": True}
