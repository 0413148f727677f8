"""Loading tokenizers and models: dtype, attention kernel, quantization, LoRA, embedding resize, special tokens."""

import importlib.util
import json
import logging
import math
import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    TrainingArguments,
    set_seed,
)

from medgpt import vocabulary
from medgpt.args import ChatArguments, LoraArguments, ModelArguments, is_distributed
from medgpt.chat import get_template, read_template_name, with_tool_format
from medgpt.dropout import use_cpu_fast_lora_dropout
from medgpt.errors import UserError

logger = logging.getLogger(__name__)


def _hub_kwargs(model_args: ModelArguments) -> dict:
    return {
        "trust_remote_code": model_args.trust_remote_code,
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.hf_hub_token,
    }


def _cannot_load(what: str, path: str, err: Exception) -> UserError:
    first_line = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    return UserError(
        f"cannot load the {what} from {path!r}: {first_line}. Point the model flag (--model_name_or_path, "
        "--tokenizer_name_or_path, --base_model, ...) at a local model folder, or a hub id when you are online."
    )


def load_tokenizer(model_args: ModelArguments, padding_side: str = "right", stop_words: tuple[str, ...] = ()):
    """The tokenizer with usable eos and pad tokens."""
    path = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **_hub_kwargs(model_args))
    except (OSError, ValueError) as err:
        raise _cannot_load("tokenizer", path, err) from None
    if tokenizer.eos_token is None:
        stops = [s for s in stop_words if s in tokenizer.get_vocab()]
        if not stops:
            raise UserError(f"the tokenizer of {path} has no eos token and the template names none; add one to it.")
        tokenizer.eos_token = stops[0]
        logger.info("tokenizer had no eos token; using the template's stop string %r", stops[0])
    if tokenizer.pad_token is None:
        # Padding is masked out of attention and loss, so any existing token works; no new embedding row needed.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        logger.info("tokenizer had no pad token; using %r", tokenizer.pad_token)
    tokenizer.padding_side = padding_side
    return tokenizer


def load_chat_tokenizer(model_args: ModelArguments, chat_args: ChatArguments, padding_side: str = "right"):
    """Tokenizer and chat template. A named template also becomes the tokenizer's chat_template, so every saved
    model carries the exact format it was trained with and inference renders the same text."""
    named = chat_args.template_name not in (None, "auto")
    try:
        template = get_template(chat_args.template_name) if named else None
        tokenizer = load_tokenizer(model_args, padding_side, template.stop_words if named else ())
        template = template or get_template(chat_args.template_name, tokenizer)
        if chat_args.tool_format:
            template = with_tool_format(template, chat_args.tool_format)
    except ValueError as err:
        if isinstance(err, UserError):
            raise
        raise UserError(
            f"--template_name {chat_args.template_name} / --tool_format {chat_args.tool_format}: {err}"
        ) from None
    if named:
        tokenizer.chat_template = template.to_jinja()
    return tokenizer, template


def padding_free(model_args: ModelArguments) -> bool:
    """FlashAttention-2 takes variable-length sequences, so batches need no padding at all."""
    return model_args.attention() == "flash_attention_2"


def quantization_config(model_args: ModelArguments, lora_args: LoraArguments | None) -> BitsAndBytesConfig | None:
    qlora = bool(lora_args and lora_args.qlora)
    if not (qlora or model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("--load_in_4bit/--load_in_8bit/--qlora need bitsandbytes: pip install bitsandbytes")
    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = getattr(torch, model_args.dtype()) if model_args.dtype() else torch.float32
    if not torch.cuda.is_available() and compute == torch.float16:
        compute = torch.float32  # fp16 matmuls are not implemented for the CPU path
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4" if qlora else "fp4",
        bnb_4bit_use_double_quant=qlora,
        bnb_4bit_compute_dtype=compute,
    )


def _device_map(model_args: ModelArguments, training_args: TrainingArguments | None, quantized: bool):
    if is_distributed() or (training_args is not None and training_args.deepspeed):
        return None  # DDP / DeepSpeed place the model themselves; a device_map would fight them
    if quantized:
        return {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"}
    if not torch.cuda.is_available():
        return None
    return model_args.placement()


def _check_attention(name: str) -> None:
    if name == "flash_attention_2" and (
        importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available()
    ):
        raise UserError(
            "--flash_attn / --attn_implementation flash_attention_2 needs the flash-attn package and a CUDA GPU; "
            "install it (pip install flash-attn --no-build-isolation) or use --attn_implementation sdpa."
        )


def _rope_scaling(config, model_args: ModelArguments, max_length: int | None) -> None:
    if not model_args.rope_scaling:
        return
    if not max_length:  # every model of a run must share one RoPE: none may silently skip it
        raise UserError(
            f"--rope_scaling {model_args.rope_scaling}: this stage gives no training length to scale the context "
            "to (its prompts are not cut to a fixed length); drop --rope_scaling, or merge a scaled model first."
        )
    context = getattr(config, "max_position_embeddings", None)
    if not context:
        raise UserError(f"--rope_scaling: {model_args.model_name_or_path} has no max_position_embeddings to scale.")
    factor = float(math.ceil(max_length / context)) if max_length > context else 1.0
    if factor > 1.0:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        config.rope_parameters = {"rope_type": model_args.rope_scaling, "factor": factor, "rope_theta": theta}
        logger.info(
            "RoPE %s scaling, factor %.1f (%d tokens > context %d)",
            model_args.rope_scaling,
            factor,
            max_length,
            context,
        )
    else:
        logger.info("--rope_scaling not needed: %d tokens fit the model's %d context", max_length, context)


def sync_special_tokens(model: PreTrainedModel, tokenizer) -> None:
    """Copy the tokenizer's pad/eos/bos ids into the model config and generation config (MedicalGPT never did,
    which broke batches > 1 on models without a pad token)."""
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, name)
        if value is not None:
            setattr(model.config, name, value)
            if getattr(model, "generation_config", None) is not None and name != "eos_token_id":
                setattr(model.generation_config, name, value)
    if getattr(model, "generation_config", None) is not None and tokenizer.eos_token_id is not None:
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if tokenizer.eos_token_id not in eos:
            model.generation_config.eos_token_id = eos + [tokenizer.eos_token_id] if eos else tokenizer.eos_token_id


def load_model(
    model_args: ModelArguments,
    lora_args: LoraArguments | None,
    tokenizer,
    training_args: TrainingArguments | None = None,
    max_length: int | None = None,
    task: str = "causal",
    grow_embeddings: bool = True,
) -> PreTrainedModel:
    """Base model in its own dtype (never upcast to fp32), optionally quantized, with LoRA when use_peft.
    Embeddings grow to a larger tokenizer (training); with grow_embeddings=False that is an error instead."""
    if training_args is not None:
        set_seed(training_args.seed)  # the same LoRA initialisation on every run (and so the same model hash)
    path = model_args.model_name_or_path
    try:
        config = AutoConfig.from_pretrained(path, **_hub_kwargs(model_args))
    except (OSError, ValueError) as err:
        raise _cannot_load("model config", path, err) from None
    _rope_scaling(config, model_args, max_length)
    _check_attention(model_args.attention())
    quantization = quantization_config(model_args, lora_args)
    model_class = AutoModelForSequenceClassification if task == "reward" else AutoModelForCausalLM
    if task == "reward":
        config.num_labels = 1  # one score per sequence
    dtype = getattr(torch, model_args.dtype()) if model_args.dtype() else "auto"
    try:
        model = model_class.from_pretrained(
            path,
            config=config,
            dtype=dtype,
            attn_implementation=model_args.attention(),
            quantization_config=quantization,
            device_map=_device_map(model_args, training_args, quantization is not None),
            **_hub_kwargs(model_args),
        )
    except (OSError, ValueError) as err:
        raise _cannot_load("model weights", path, err) from None

    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows and not grow_embeddings:
        raise UserError(
            f"the tokenizer has {len(tokenizer)} tokens but {path} has {rows} embedding rows; pass --resize_emb True."
        )
    vocabulary.grow_embeddings(model, tokenizer)
    if len(tokenizer) > rows and lora_args and lora_args.use_peft and not lora_args.modules_to_save:
        if not lora_args.train_new_token_rows:
            logger.warning(
                "the new embedding rows stay untrained under LoRA; add --train_new_token_rows True (only the new "
                "rows) or --modules_to_save embed_tokens,lm_head (whole matrices)"
            )
    sync_special_tokens(model, tokenizer)
    checkpointing = training_args is not None and bool(
        getattr(training_args, "activation_checkpointing", False) or training_args.gradient_checkpointing
    )
    if training_args is not None:
        # No KV cache in training: it is useless there, conflicts with checkpointing, and its presence stops
        # transformers from deriving the per-sample attention mask of packed rows from their position ids.
        model.config.use_cache = False
    if lora_args is None or not lora_args.use_peft:
        return model
    new_rows = vocabulary.trainable_rows(model, tokenizer) if lora_args.train_new_token_rows else None
    return add_lora(model, lora_args, task, quantization is not None, checkpointing, new_rows)


def add_lora(
    model: PreTrainedModel,
    lora_args: LoraArguments,
    task: str,
    quantized: bool,
    checkpointing: bool,
    new_rows: list[int] | dict[str, list[int]] | None = None,
):
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the gradient at layer 0
    if lora_args.peft_path:
        logger.info("continuing training of the adapter in %s", lora_args.peft_path)
        model = PeftModel.from_pretrained(model, lora_args.peft_path, is_trainable=True)
    else:
        targets = [m.strip() for m in lora_args.target_modules.split(",") if m.strip()]
        modules_to_save = [m.strip() for m in (lora_args.modules_to_save or "").split(",") if m.strip()]
        config = LoraConfig(
            r=lora_args.lora_rank,
            lora_alpha=lora_args.lora_alpha,
            lora_dropout=lora_args.lora_dropout,
            target_modules="all-linear" if targets == ["all"] else targets,
            modules_to_save=modules_to_save or None,
            trainable_token_indices=new_rows,  # --train_new_token_rows: only the merged tokens' embedding rows
            task_type=TaskType.SEQ_CLS if task == "reward" else TaskType.CAUSAL_LM,
            # Tied input/output embeddings must stay tied when one of them is trained in full (modules_to_save).
            ensure_weight_tying=bool(modules_to_save) and bool(getattr(model.config, "tie_word_embeddings", False)),
        )
        try:
            model = get_peft_model(model, config)
        except ValueError as err:
            raise UserError(f"--target_modules {lora_args.target_modules}: {str(err).splitlines()[0]}") from None
    if os.environ.get("MEDGPT_LORA_DROPOUT") != "torch":  # "torch" keeps nn.Dropout: a benchmark configuration
        use_cpu_fast_lora_dropout(model)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    return model


def saved_task(model_dir: str, lora_model: str | None = None, trust_remote_code: bool = False) -> str | None:
    """What a saved model is: "reward" (a one-score sequence classifier, or a SEQ_CLS adapter), "causal" (a language
    model, or a CAUSAL_LM adapter), or None when its folder says neither (load_saved then names what is wrong).
    The one reward-model detection: evaluation, reward scoring and merging ask it."""
    adapter_config = Path(lora_model or "", "adapter_config.json")
    if lora_model and adapter_config.is_file():
        return "reward" if json.loads(adapter_config.read_text()).get("task_type") == "SEQ_CLS" else "causal"
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return "reward"
    return "causal" if architectures and all(name.endswith("ForCausalLM") for name in architectures) else None


def load_saved(
    model_dir: str,
    lora_model: str | None = None,
    *,
    task: str = "causal",
    template_name: str | None = None,
    tokenizer_path: str | None = None,
    padding_side: str = "left",
    torch_dtype: str | None = None,
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    resize_emb: bool = False,
    trust_remote_code: bool = False,
    flags: tuple[str, str] = ("--base_model", "--lora_model"),
):
    """(model, tokenizer, template) of a saved model folder, or of a base model plus a LoRA adapter folder.

    The chat template is the one the model was trained with (template_config.json beside the weights or the
    adapter) unless `template_name` is given. The tokenizer is the adapter's when it saved one (a grown
    vocabulary travels with the adapter), else the model's. task="reward" loads a one-score sequence classifier.
    Used by inference, merge, reward scoring, PPO and GRPO; `flags` name the options in error messages.

        lm, tokenizer, template = load_saved("merged-sft")
        rm, rm_tokenizer, rm_template = load_saved("merged-sft", "outputs-rm", task="reward")
    """
    from peft import PeftModel

    for flag, folder in zip(flags, (model_dir, lora_model), strict=True):
        if folder and not Path(folder).is_dir() and (folder.startswith((".", "/", "~")) or folder.count("/") > 1):
            raise UserError(f"{flag} {folder}: no such folder; point it at a saved model folder.")
    if lora_model and not Path(lora_model, "adapter_config.json").is_file():
        raise UserError(f"{flags[1]} {lora_model} holds no adapter_config.json; point it at a saved LoRA adapter.")
    has_tokenizer = lora_model and Path(lora_model, "tokenizer_config.json").is_file()
    model_args = ModelArguments(
        model_name_or_path=model_dir,
        tokenizer_name_or_path=tokenizer_path or (lora_model if has_tokenizer else None),
        load_in_8bit=load_in_8bit,
        load_in_4bit=load_in_4bit,
        torch_dtype=torch_dtype,
    )
    model_args.trust_remote_code = trust_remote_code
    saved_name, tool_format = read_template_name(lora_model or model_dir)
    chat_args = ChatArguments(template_name=template_name or saved_name, tool_format=tool_format)
    try:
        tokenizer, template = load_chat_tokenizer(model_args, chat_args, padding_side=padding_side)
        lm = load_model(model_args, None, tokenizer, task=task, grow_embeddings=resize_emb)
    except UserError as err:
        raise UserError(f"{flags[0]} {model_dir}: {err}") from None
    if task == "reward" and lm.config.pad_token_id is None:
        lm.config.pad_token_id = tokenizer.pad_token_id  # a sequence classifier finds the last token by padding
    if lora_model:
        lm = PeftModel.from_pretrained(lm, lora_model)
    return lm.eval(), tokenizer, template
