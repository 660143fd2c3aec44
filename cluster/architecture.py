"""What the planner needs to know of a model: its parameter count and the shape of its attention.

Three sources, the first that answers wins:

1. the entry's own ``cascade.size`` hint (the fleet file states it; for models neither of the others
   knows);
2. the model's ``config.json`` when its weights are a local folder, with the parameter count read from
   the ``*.safetensors`` headers (exact, without loading a tensor) or, failing those, counted from the
   config as a Qwen2/Llama-style decoder;
3. the built-in table of the Qwen2.5 family (0.5B to 72B; Math, Coder, Instruct) for hub ids.

A model none of them knows is an error naming the model and the hint that would fix it. The table's
parameter counts are derived from the published ``config.json`` shapes by :func:`decoder_parameters`;
``tests/cluster/test_architecture.py`` pins them against the counts Qwen publishes.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.config import ModelSpec

__all__ = ["QWEN25_SHAPES", "Architecture", "ArchitectureError", "decoder_parameters", "model_architecture",
           "qwen25_architecture"]


class ArchitectureError(ValueError):
    """No source knows the model's size."""


@dataclass(frozen=True, slots=True)
class Architecture:
    """The facts of a decoder-only transformer that set its memory and its tensor-parallel sizes."""

    num_parameters: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int | None
    torch_dtype: str | None  # the checkpoint's dtype ("bfloat16"); None: not stated
    source: str  # where the facts came from, for the plan's report


@dataclass(frozen=True, slots=True)
class _Shape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool


# Qwen2.5 base and Instruct sizes (each size's config.json on the hub; Math and Coder share them).
QWEN25_SHAPES: dict[str, _Shape] = {
    "0.5b": _Shape(896, 4864, 24, 14, 2, 151936, True),
    "1.5b": _Shape(1536, 8960, 28, 12, 2, 151936, True),
    "3b": _Shape(2048, 11008, 36, 16, 2, 151936, True),
    "7b": _Shape(3584, 18944, 28, 28, 4, 152064, False),
    "14b": _Shape(5120, 13824, 48, 40, 8, 152064, False),
    "32b": _Shape(5120, 27648, 64, 40, 8, 152064, False),
    "72b": _Shape(8192, 29568, 80, 64, 8, 152064, False),
}
_QWEN25_VARIANT_SIZES = {"": set(QWEN25_SHAPES), "math-": {"1.5b", "7b", "72b"},
                         "coder-": {"0.5b", "1.5b", "3b", "7b", "14b", "32b"}}
# Math models were trained for 4k contexts; the others' Instruct configs state 32k.
_QWEN25_CONTEXT = {"": 32768, "math-": 4096, "coder-": 32768}
_QWEN25_NAME = re.compile(r"^qwen2\.5-(math-|coder-)?(\d+(?:\.\d+)?b)(-instruct)?$")


def decoder_parameters(*, hidden_size: int, intermediate_size: int, num_hidden_layers: int,
                       num_attention_heads: int, num_key_value_heads: int, vocab_size: int,
                       tie_word_embeddings: bool, head_dim: int | None = None, qkv_bias: bool = True) -> int:
    """Parameters of a Qwen2/Llama-style decoder: embeddings, per layer q/k/v/o projections (Qwen2 gives
    q, k and v a bias) and a gated MLP of three matrices, two RMSNorm weights per layer, the final norm,
    and an output head unless tied to the embeddings."""
    head_dim = head_dim or hidden_size // num_attention_heads
    q_size, kv_size = num_attention_heads * head_dim, num_key_value_heads * head_dim
    attention = hidden_size * q_size + 2 * hidden_size * kv_size + q_size * hidden_size
    if qkv_bias:
        attention += q_size + 2 * kv_size
    layer = attention + 3 * hidden_size * intermediate_size + 2 * hidden_size
    embeddings = vocab_size * hidden_size * (1 if tie_word_embeddings else 2)
    return num_hidden_layers * layer + embeddings + hidden_size


def qwen25_architecture(name: str) -> Architecture | None:
    """The table's facts for a Qwen2.5 hub id (``Qwen/Qwen2.5-Math-7B-Instruct``), else None."""
    match = _QWEN25_NAME.match(name.rsplit("/", 1)[-1].lower())
    if match is None:
        return None
    variant, size = match.group(1) or "", match.group(2)
    if size not in _QWEN25_VARIANT_SIZES[variant]:
        return None
    shape = QWEN25_SHAPES[size]
    params = decoder_parameters(
        hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads, vocab_size=shape.vocab_size,
        tie_word_embeddings=shape.tie_word_embeddings,
    )
    return Architecture(
        num_parameters=params, num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.hidden_size // shape.num_attention_heads, max_position_embeddings=_QWEN25_CONTEXT[variant],
        torch_dtype="bfloat16", source="Qwen2.5 table",
    )


def _safetensors_parameters(folder: Path) -> int | None:
    """Elements of every tensor in the folder's safetensors files, from their JSON headers alone."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dim in tensor["shape"]:
                    count *= int(dim)
                total += count
    return total


def _from_config_json(folder: Path) -> Architecture:
    config: dict[str, Any] = json.loads((folder / "config.json").read_text())
    config = config.get("text_config", config)  # multimodal wrappers nest the language model's facts
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
    except KeyError as exc:
        raise ArchitectureError(f"{folder / 'config.json'} has no {exc.args[0]!r}") from None
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    params = _safetensors_parameters(folder)
    if params is None:
        params = decoder_parameters(
            hidden_size=hidden, intermediate_size=int(config.get("intermediate_size", 4 * hidden)),
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
            vocab_size=int(config.get("vocab_size", 0)), tie_word_embeddings=bool(config.get("tie_word_embeddings")),
            head_dim=head_dim, qkv_bias=config.get("model_type") == "qwen2",
        )
    max_positions = config.get("max_position_embeddings")
    return Architecture(
        num_parameters=params, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, max_position_embeddings=int(max_positions) if max_positions else None,
        torch_dtype=config.get("torch_dtype") or config.get("dtype"), source=f"{folder}/config.json",
    )


def model_architecture(spec: ModelSpec) -> Architecture:
    """The model's facts from the first source that knows them (module docstring).

    Raises ``ArchitectureError`` naming the model and the ``cascade.size`` hint that would fix it.
    """
    if spec.cascade is not None and spec.cascade.size is not None:
        hint = spec.cascade.size
        return Architecture(
            num_parameters=round(hint.parameters_billion * 1e9), num_hidden_layers=hint.num_hidden_layers,
            num_attention_heads=hint.num_attention_heads,
            num_key_value_heads=hint.num_key_value_heads or hint.num_attention_heads, head_dim=hint.head_dim,
            max_position_embeddings=hint.max_position_embeddings, torch_dtype=None, source="cascade.size hint",
        )
    loading = spec.model_loading_config
    source = loading.model_source or loading.model_id
    folder = Path(source)
    if (folder / "config.json").is_file():
        return _from_config_json(folder)
    known = qwen25_architecture(source)
    if known is not None:
        return known
    where = "a local folder without config.json" if folder.is_dir() else "not in the Qwen2.5 table"
    raise ArchitectureError(
        f"{spec.model_id}: the size of {source!r} is unknown ({where}); give it in the entry's cascade.size "
        "(parameters_billion, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim)"
    )
