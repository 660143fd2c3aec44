"""What every locally built Qwen2 model shares: the ChatML template and special tokens, the shapes
vLLM's CPU backend can run, and the config, save and marker steps of a build.

The tiny (random) and toy (trained) models differ in their tokenizer and in whether they train;
everything a vLLM engine reads from the folder is made here, so both fleets load the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["CHATML_TEMPLATE", "SPECIAL_TOKENS", "chatml_tokenizer", "check_cpu_shape", "qwen2_config", "save_model"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM CPU attention backend


def check_cpu_shape(hidden: int, heads: int, kv_heads: int) -> None:
    """Raise ``ValueError`` unless vLLM's CPU backend can run attention of this shape."""
    head_dim, rest = divmod(hidden, heads)
    if rest or head_dim not in _CPU_HEAD_DIMS:
        raise ValueError(f"hidden/heads = {hidden}/{heads}: vLLM's CPU attention needs head_dim in {_CPU_HEAD_DIMS}")
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")


def chatml_tokenizer(tok: Any) -> Any:
    """A ``tokenizers.Tokenizer`` as a transformers tokenizer that ends turns with ``<|im_end|>``."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        chat_template=CHATML_TEMPLATE,
    )


def qwen2_config(tokenizer: Any, *, hidden: int, layers: int, heads: int, kv_heads: int, ffn: int,
                 max_positions: int) -> Any:
    """The ``Qwen2Config`` of a model with tied embeddings over ``tokenizer``'s vocabulary."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=ffn,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        bos_token_id=None,
    )


def save_model(out: Path, model: Any, tokenizer: Any, marker_name: str, marker: dict[str, Any]) -> Path:
    """Write bfloat16 safetensors, the tokenizer, the generation config, then the marker file.

    The marker goes last: a folder holds a finished build exactly when its marker names the build.
    """
    import torch
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    config = model.config
    GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id).save_pretrained(out)
    (out / marker_name).write_text(json.dumps(marker, indent=2))
    return out
