"""Tiny Qwen2-architecture models built locally and deterministically: the embedded CPU fleet's weights.

No model hub is reachable, so the CPU fleet (demo, tests, CI) runs real vLLM engines on models made
here: a byte-level BPE tokenizer trained on CPython's own standard library (a corpus every machine
has), a ChatML chat template, and a randomly initialised ``Qwen2ForCausalLM`` (seeded) saved as
safetensors. vLLM's CPU attention needs head_dim 32 or 64, hence hidden / heads below.

    build_tiny_model(Path(".cache/tiny/small"), TinySpec(hidden=64, layers=2, heads=2, kv_heads=1))

Needs the ``cpu`` extra (torch, transformers, tokenizers); imports them lazily.
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

from toymodels.qwen2 import SPECIAL_TOKENS, chatml_tokenizer, check_cpu_shape, qwen2_config, save_model

__all__ = ["TINY_FLEET", "TinySpec", "build_tiny_model"]

_MARKER = "cascade_tiny_model.json"


@dataclass(frozen=True)
class TinySpec:
    """Architecture and seed of one tiny model; the build is a pure function of it."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    ffn: int = 128
    vocab: int = 2048  # BPE merges stop here
    max_positions: int = 1024
    corpus_files: int = 120  # stdlib files (sorted) the tokenizer learns from
    seed: int = 0

    def __post_init__(self) -> None:
        check_cpu_shape(self.hidden, self.heads, self.kv_heads)

    @property
    def fingerprint(self) -> str:
        """Identifies the build: the spec plus the corpus's Python version."""
        payload = json.dumps({**asdict(self), "python": sys.version_info[:2]}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# The embedded CPU fleet: models of increasing size, so cost rises with index.
TINY_FLEET: dict[str, TinySpec] = {
    "tiny-small": TinySpec(hidden=64, layers=2, heads=2, kv_heads=1, ffn=128, seed=0),
    "tiny-large": TinySpec(hidden=256, layers=4, heads=4, kv_heads=2, ffn=768, seed=1),
}


def _corpus(n_files: int) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())[:n_files]
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def build_tiny_model(out: Path, spec: TinySpec) -> Path:
    """Build (or reuse, if the folder holds the same fingerprint) a tiny model in ``out``."""
    marker = out / _MARKER
    if marker.exists() and json.loads(marker.read_text()).get("fingerprint") == spec.fingerprint:
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec.corpus_files), trainer=trainer)
    tokenizer = chatml_tokenizer(tok)
    torch.manual_seed(spec.seed)
    config = qwen2_config(tokenizer, hidden=spec.hidden, layers=spec.layers, heads=spec.heads, kv_heads=spec.kv_heads,
                          ffn=spec.ffn, max_positions=spec.max_positions)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    return save_model(out, model, tokenizer, _MARKER, {"fingerprint": spec.fingerprint, "spec": asdict(spec)})
