"""The embedded ``tiny`` model: built offline, saved as a normal Hugging Face folder, cached by its settings.

``build_tiny_model`` trains a byte-level BPE tokenizer on task text with the ``tokenizers`` library, adds a
ChatML chat template, initialises a small Llama-architecture model (about 1-2M parameters at the default
shape) and saves both with ``save_pretrained``: the folder loads with ``AutoModelForCausalLM`` /
``AutoTokenizer`` like any hub model. ``warm_start`` then fine-tunes it on task demonstrations (supervised,
loss on the completion tokens only) so that RL starts from a policy that can sometimes succeed.

Both steps are cached under ``cache_root`` in folders keyed by a hash of everything that determines their
content (settings, training text, seed, format version), written to a temporary folder and renamed into
place, so concurrent runs (seeds in parallel) never see a half-written model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from gdpo.assets import build_folder_once
from gdpo.config import TinyModelConfig, WarmStartConfig
from gdpo.rollout import encode_prompt

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "build_tiny_model",
    "completion_loss",
    "pad_batch",
    "sft_example",
    "warm_start",
]

FORMAT_VERSION = 1
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_tiny_model(
    cfg: TinyModelConfig, corpus: Sequence[str], cache_root: str | Path, seed: int = 0
) -> Path:
    """Build (or reuse) the tiny model + tokenizer folder for this shape, corpus and seed."""
    if not corpus:
        raise ValueError("build_tiny_model needs a non-empty text corpus to train the tokenizer")
    key = _digest(FORMAT_VERSION, asdict(cfg), _digest(list(corpus)), seed)
    return build_folder_once(Path(cache_root) / f"tiny-{key}", lambda tmp: _build(tmp, cfg, corpus, seed))


def _build(out: Path, cfg: TinyModelConfig, corpus: Sequence[str], seed: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
        model_max_length=cfg.max_positions,
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    model_cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(model_cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def warm_start(
    model_dir: str | Path,
    demonstrations: Sequence[tuple[list[dict], str]],
    cfg: WarmStartConfig,
    cache_root: str | Path,
    seed: int = 0,
) -> Path:
    """Supervised fine-tuning on (chat messages, assistant completion) pairs; returns the tuned folder."""
    if not demonstrations:
        raise ValueError(
            "warm_start needs at least one demonstration: raise data.options.num_demonstrations "
            "or set warm_start.enabled=false"
        )
    for name, value in (("steps", cfg.steps), ("batch_size", cfg.batch_size)):
        if value < 1:
            raise ValueError(
                f"warm_start.{name} must be >= 1 (got {value}); warm_start.enabled=false skips it"
            )
    if not cfg.lr > 0:
        raise ValueError(f"warm_start.lr must be > 0 (got {cfg.lr})")
    key = _digest(
        FORMAT_VERSION, str(Path(model_dir).resolve().name), asdict(cfg), _digest(list(demonstrations)), seed
    )
    target = Path(cache_root) / f"{Path(model_dir).name}-sft-{key}"
    return build_folder_once(target, lambda tmp: _sft(Path(model_dir), tmp, demonstrations, cfg, seed))


def _sft(model_dir: Path, out: Path, demonstrations, cfg: WarmStartConfig, seed: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    examples = [sft_example(tokenizer, messages, completion) for messages, completion in demonstrations]
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * (1 - s / cfg.steps)
    )
    model.train()
    for _ in range(cfg.steps):
        idx = torch.randint(len(examples), (min(cfg.batch_size, len(examples)),), generator=gen).tolist()
        input_ids, attention_mask, labels = pad_batch([examples[i] for i in idx], tokenizer.pad_token_id)
        loss = completion_loss(model, input_ids, attention_mask, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "warm_start.json").write_text(json.dumps({"final_loss": loss.item(), **asdict(cfg)}, indent=2))


def completion_loss(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """Next-token cross-entropy on the labelled (completion) positions only.

    The LM head runs on those positions alone: prompts are most of the tokens, and their logits are unused.
    """
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def sft_example(tokenizer, messages: list[dict], completion: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt + completion + EOS, and labels that are -100 on the prompt."""
    prompt_ids = encode_prompt(tokenizer, messages)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids


def pad_batch(examples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad (SFT only; generation pads left). Returns input ids, attention mask and labels."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(lab)] = torch.tensor(lab)
    return input_ids, attention_mask, labels
