"""PPO (RLHF): optimise the SFT model against a trained reward model, with a critic and a KL penalty.

Policy = the SFT model + LoRA (or full weights); reference = the same weights with the adapter switched off (full
fine-tuning keeps a frozen copy); critic = the reward model with a LoRA of its own (or --value_model_path), or with
--value_head_on_policy a value head on the policy's backbone (cheaper; the value loss then trains the policy too);
reward model = frozen, scoring each answer as text in its own template. Prompts: any chat, Alpaca, question or
prompt rows (a chat's final answer is dropped). Metrics use TRL's PPO names (objective/scores, objective/kl, ...).

    python ppo_training.py --sft_model_path merged-sft --reward_model_path merged-rm --template_name qwen2.5 \
        --train_file_dir data/sft --response_length 256 --num_train_epochs 1 --output_dir outputs-ppo
    torchrun --nproc_per_node 8 ppo_training.py --deepspeed zero2.json ...
    python ppo_training.py --config ppo.yaml --kl_coef 0.02    # CLI flags override the file
"""

import dataclasses

from transformers import AutoTokenizer, TrainingArguments

from medgpt import args, model, prompts, saving
from medgpt.errors import UserError, run_cli
from medgpt.generation import stop_strings
from medgpt.ppo import REFERENCE_ADAPTER, PPOArguments, PPOTrainer
from medgpt.scoring import RewardModelScorer

ARG_TYPES = (*args.CHAT_STAGE_ARGUMENTS, PPOArguments, args.OutputArguments, TrainingArguments)
DEFAULTS = args.RL_STAGE_DEFAULTS


def load_critic(model_args, lora_args, training_args, ppo_args, value_model_path: str, tokenizer):
    """The critic: a one-score sequence classifier read at every token, started from the reward model (or
    --value_model_path). It reads the policy's tokens, so its vocabulary must be the policy's."""
    try:
        critic_vocab = AutoTokenizer.from_pretrained(value_model_path).get_vocab()
    except (OSError, ValueError) as err:
        raise UserError(
            f"--value_model_path/--reward_model_path {value_model_path}: cannot load it ({err})."
        ) from None
    if critic_vocab != tokenizer.get_vocab():
        raise UserError(
            f"the critic starts from {value_model_path}, whose tokenizer differs from the policy's "
            f"({model_args.model_name_or_path}); the critic reads the policy's tokens. Pass --value_model_path with "
            "a model that shares the policy's tokenizer (e.g. the SFT model itself). The reward model may keep its "
            "own tokenizer: it scores answers as text."
        )
    critic_args = dataclasses.replace(model_args, model_name_or_path=value_model_path, tokenizer_name_or_path=None)
    critic_args.trust_remote_code = model_args.trust_remote_code
    critic_lora = dataclasses.replace(lora_args, peft_path=None)  # --peft_path continues the policy's adapter only
    length = ppo_args.max_source_length + ppo_args.response_length  # the policy's RoPE, the critic's too
    return model.load_model(critic_args, critic_lora, tokenizer, training_args, length, task="reward")


def main(argv: list[str] | None = None) -> PPOTrainer:
    model_args, lora_args, data_args, chat_args, ppo_args, output_args, training_args = args.parse(
        ARG_TYPES, argv, DEFAULTS
    )
    args.check_args(model_args, lora_args, data_args, training_args, output_args)
    if training_args.neftune_noise_alpha:
        raise UserError(
            f"--neftune_noise_alpha (--neft_alpha) {training_args.neftune_noise_alpha}: NEFTune noises the embeddings "
            "of supervised training; PPO learns from its own samples, where it cannot act. Drop the flag."
        )
    if not ppo_args.reward_model_path:
        raise UserError("--reward_model_path is required: the merged reward model (run_rm.sh, then merge).")
    tokenizer, template = model.load_chat_tokenizer(model_args, chat_args, padding_side="left")

    # Prompts are read, validated and tokenized before anything is written to output_dir.
    def tokenize(rows, name):
        return prompts.tokenize_prompts(
            rows,
            tokenizer,
            template,
            ppo_args.max_source_length,
            ppo_args.system_prompt,
            data_args.preprocessing_num_workers,
            data_args.overwrite_cache,
            what=name,
        )

    splits = prompts.load_prompt_splits(data_args, training_args, model_args.cache_dir, tokenize, "tokenize prompts")

    scorer = RewardModelScorer(ppo_args.reward_model_path, device=training_args.device)
    length = ppo_args.max_source_length + ppo_args.response_length
    policy = model.load_model(model_args, lora_args, tokenizer, training_args, length)
    if lora_args.use_peft and lora_args.peft_path:
        # The reference is the policy PPO starts from: base + the adapter it continues, kept frozen beside it.
        policy.load_adapter(lora_args.peft_path, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    critic = None  # --value_head_on_policy: a head on the policy's backbone, made by the trainer
    if not ppo_args.value_head_on_policy:
        critic_path = ppo_args.value_model_path or ppo_args.reward_model_path
        critic = load_critic(model_args, lora_args, training_args, ppo_args, critic_path, tokenizer)
    trainer = PPOTrainer(
        policy=policy,
        critic=critic,
        ref_policy=None if lora_args.use_peft else model.load_model(model_args, None, tokenizer, max_length=length),
        scorer=scorer,
        ppo_args=ppo_args,
        stops=stop_strings(template),
        args=training_args,
        train_dataset=splits.get("train"),
        eval_dataset=splits.get("validation"),
        processing_class=tokenizer,
    )
    return saving.train_and_evaluate(trainer, template, chat_args.tool_format)


if __name__ == "__main__":
    run_cli(main, training=True)
