"""``cluster.architecture``: the Qwen2.5 table, local config.json + safetensors headers, the size hint."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from cluster.architecture import ArchitectureError, decoder_parameters, model_architecture, qwen25_architecture
from cluster.config import ConfigError, FleetConfig, ModelSpec

# The parameter counts Qwen publishes for each size (model cards, safetensors index totals / 2 bytes).
PUBLISHED = {
    "0.5B": 494_032_768, "1.5B": 1_543_714_304, "3B": 3_085_938_688, "7B": 7_615_616_512,
    "14B": 14_770_033_664, "32B": 32_763_876_352, "72B": 72_706_203_648,
}  # fmt: skip


@pytest.mark.parametrize(("size", "count"), sorted(PUBLISHED.items()))
def test_table_parameter_counts_are_the_published_ones(size: str, count: int) -> None:
    arch = qwen25_architecture(f"Qwen/Qwen2.5-{size}-Instruct")
    assert arch is not None and arch.num_parameters == count


def test_qwen25_72b_facts_are_its_config_json() -> None:
    """Qwen/Qwen2.5-72B-Instruct config.json: 80 layers, 64 heads, 8 KV heads, hidden 8192 (head dim 128)."""
    arch = qwen25_architecture("Qwen/Qwen2.5-72B-Instruct")
    assert arch is not None
    shape = (arch.num_hidden_layers, arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim)
    assert shape == (80, 64, 8, 128)
    assert arch.max_position_embeddings == 32768 and arch.source == "Qwen2.5 table"


@pytest.mark.parametrize(
    ("name", "layers", "context"),
    [("Qwen/Qwen2.5-Math-1.5B-Instruct", 28, 4096), ("Qwen/Qwen2.5-Math-7B", 28, 4096),
     ("qwen/qwen2.5-math-72b-instruct", 80, 4096), ("Qwen/Qwen2.5-Coder-0.5B-Instruct", 24, 32768),
     ("Qwen/Qwen2.5-Coder-32B-Instruct", 64, 32768), ("Qwen2.5-3B", 36, 32768)],
)
def test_variants_share_the_base_sizes(name: str, layers: int, context: int) -> None:
    arch = qwen25_architecture(name)
    assert arch is not None and arch.num_hidden_layers == layers and arch.max_position_embeddings == context


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-Math-3B", "Qwen/Qwen2.5-Coder-72B-Instruct", "Qwen/Qwen2.5-7B-AWQ",
                                  "Qwen/Qwen2-7B-Instruct", "meta-llama/Llama-3.1-8B"])
def test_names_outside_the_family_are_unknown(name: str) -> None:
    assert qwen25_architecture(name) is None


def _spec(source: str, **extra: Any) -> ModelSpec:
    return ModelSpec.model_validate({"model_loading_config": {"model_id": "m", "model_source": source}, **extra})


def _write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A safetensors file whose header names the tensors; the data is never read by the planner."""
    header = {name: {"dtype": "BF16", "shape": shape, "data_offsets": [0, 0]} for name, shape in shapes.items()}
    header["__metadata__"] = {"format": "pt"}  # type: ignore[dict-item]
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_a_local_model_is_read_from_config_json_and_safetensors_headers(tmp_path: Path) -> None:
    config = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 512,
              "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    _write_safetensors(tmp_path / "model-1.safetensors", {"embed": [100, 64], "w": [64, 128]})
    _write_safetensors(tmp_path / "model-2.safetensors", {"v": [3, 5, 7]})
    arch = model_architecture(_spec(str(tmp_path)))
    assert arch.num_parameters == 100 * 64 + 64 * 128 + 3 * 5 * 7
    assert (arch.num_hidden_layers, arch.num_key_value_heads, arch.head_dim) == (2, 2, 16)
    assert arch.max_position_embeddings == 512 and arch.source.endswith("config.json")


def test_without_safetensors_the_count_comes_from_the_config(tmp_path: Path) -> None:
    shape = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", **shape}))
    assert model_architecture(_spec(str(tmp_path))).num_parameters == PUBLISHED["1.5B"] == decoder_parameters(**shape)


def test_the_size_hint_wins_and_an_unknown_model_names_it() -> None:
    with pytest.raises(ArchitectureError, match=r"m: the size of 'meta-llama/Llama-3.1-8B' is unknown .*cascade\.size"):
        model_architecture(_spec("meta-llama/Llama-3.1-8B"))
    hint = {"parameters_billion": 8.03, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128}
    arch = model_architecture(_spec("meta-llama/Llama-3.1-8B", cascade={"size": hint}))
    assert arch.num_parameters == 8_030_000_000 and arch.num_key_value_heads == 8
    assert arch.source == "cascade.size hint"


def test_a_size_hint_is_checked_with_its_key_path() -> None:
    size = {"parameters_billion": 8, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 5,
            "head_dim": 128}
    data = {"models": [{"model_loading_config": {"model_id": "m"}, "cascade": {"size": size}}]}
    with pytest.raises(ConfigError) as info:
        FleetConfig.from_mapping(data)
    assert info.value.problems == ["models[0].cascade.size: num_key_value_heads: 5 does not divide "
                                   "num_attention_heads 32"]
    data["models"][0]["cascade"] = {"size": {"parameters_billion": 8, "layers": 32}}
    with pytest.raises(ConfigError, match=r"models\[0\]\.cascade\.size\.layers: unknown key"):
        FleetConfig.from_mapping(data)
