"""Model fingerprints: stable for the same model and settings, changed by any file or engine setting."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import cluster.fingerprint as fingerprint
from cluster.config import FleetConfig, ModelSpec
from cluster.fingerprint import fleet_fingerprints, model_fingerprint


def _spec(source: str, model_id: str = "small", **fields: Any) -> ModelSpec:
    entry = {"model_loading_config": {"model_id": model_id, "model_source": source}, **fields}
    return FleetConfig.from_mapping({"models": [entry]}).models[0]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "small"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (folder / "sub" / "tokenizer.json").write_text('{"vocab": {}}')
    return folder


def test_local_folder_fingerprint_is_stable_and_short(model_dir: Path) -> None:
    first = model_fingerprint(_spec(str(model_dir)))
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert model_fingerprint(_spec(str(model_dir))) == first
    # The public model id is not part of it: the same weights served under another name are the same model.
    assert model_fingerprint(_spec(str(model_dir), model_id="renamed")) == first


@pytest.mark.parametrize(
    "change",
    [
        lambda d: (d / "config.json").write_text('{"hidden_size": 9}'),
        lambda d: (d / "sub" / "tokenizer.json").write_text('{"vocab": {"a": 1}}'),
        lambda d: (d / "model.safetensors").write_bytes(bytes(range(256)) * 4 + b"\0"),
        lambda d: (d / "generation_config.json").write_text("{}"),
        lambda d: (d / "config.json").unlink(),
        lambda d: (d / "sub" / "tokenizer.json").rename(d / "tokenizer.json"),
    ],
    ids=["edit", "edit-nested", "grow", "add", "remove", "move-between-folders"],
)
def test_any_file_change_changes_the_fingerprint(model_dir: Path, change: Any) -> None:
    before = model_fingerprint(_spec(str(model_dir)))
    change(model_dir)
    assert model_fingerprint(_spec(str(model_dir))) != before


def test_a_flipped_byte_inside_a_weight_file_changes_it(model_dir: Path) -> None:
    before = model_fingerprint(_spec(str(model_dir)))
    data = bytearray((model_dir / "model.safetensors").read_bytes())
    data[500] ^= 1  # same size, one bit
    (model_dir / "model.safetensors").write_bytes(bytes(data))
    assert model_fingerprint(_spec(str(model_dir))) != before


def _entry(folder: Path, **fields: Any) -> ModelSpec:
    loading = {"model_id": "small", "model_source": str(folder), **fields.pop("loading", {})}
    entry = {"model_loading_config": loading, "engine_kwargs": {"max_model_len": 1024}, **fields}
    return FleetConfig.from_mapping({"models": [entry]}).models[0]


@pytest.mark.parametrize(
    "fields",
    [
        {"engine_kwargs": {"max_model_len": 2048}},
        {"engine_kwargs": {"max_model_len": 1024, "dtype": "float16"}},
        {"engine_kwargs": {"max_model_len": 1024, "tensor_parallel_size": 2}},
        {"accelerator_type": "H100"},
        {"loading": {"tokenizer_source": "other/tokenizer"}},
    ],
    ids=["max_model_len", "dtype", "tensor_parallel", "accelerator", "tokenizer"],
)
def test_serving_settings_change_the_fingerprint(model_dir: Path, fields: dict[str, Any]) -> None:
    assert model_fingerprint(_entry(model_dir, **fields)) != model_fingerprint(_entry(model_dir))


def test_engine_kwargs_order_does_not_matter(model_dir: Path) -> None:
    a = _spec(str(model_dir), engine_kwargs={"max_model_len": 1024, "dtype": "bfloat16"})
    b = _spec(str(model_dir), engine_kwargs={"dtype": "bfloat16", "max_model_len": 1024})
    assert model_fingerprint(a) == model_fingerprint(b)


def test_hub_ids_are_hashed_by_name_and_revision() -> None:
    qwen = model_fingerprint(_spec("Qwen/Qwen2.5-7B-Instruct"))
    assert model_fingerprint(_spec("Qwen/Qwen2.5-7B-Instruct")) == qwen
    assert model_fingerprint(_spec("Qwen/Qwen2.5-14B-Instruct")) != qwen
    pinned = _spec("Qwen/Qwen2.5-7B-Instruct", engine_kwargs={"revision": "abc123"})
    assert model_fingerprint(pinned) != qwen
    # No model_source: the model id is the hub id.
    bare = FleetConfig.from_mapping({"models": [{"model_loading_config": {"model_id": "Qwen/Qwen2.5-7B-Instruct"}}]})
    assert model_fingerprint(bare.models[0]) == qwen


def test_large_files_are_hashed_by_size_and_edges(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the whole-file limit only the size and the first and last bytes count (documented trade-off)."""
    monkeypatch.setattr(fingerprint, "_WHOLE_FILE_BYTES", 256)
    monkeypatch.setattr(fingerprint, "_EDGE_BYTES", 64)
    weights = model_dir / "model.safetensors"  # 1024 bytes: above the patched limit
    before = model_fingerprint(_spec(str(model_dir)))
    data = bytearray(weights.read_bytes())
    data[512] ^= 1  # the middle: not read
    weights.write_bytes(bytes(data))
    assert model_fingerprint(_spec(str(model_dir))) == before
    data[10] ^= 1  # the header
    weights.write_bytes(bytes(data))
    header_changed = model_fingerprint(_spec(str(model_dir)))
    assert header_changed != before
    data[-3] ^= 1  # the tail
    weights.write_bytes(bytes(data))
    assert model_fingerprint(_spec(str(model_dir))) != header_changed


def test_fleet_fingerprints_by_model_id(model_dir: Path) -> None:
    fleet = FleetConfig.from_mapping({"models": [
        {"model_loading_config": {"model_id": "small", "model_source": str(model_dir)}},
        {"model_loading_config": {"model_id": "large", "model_source": "Qwen/Qwen2.5-72B-Instruct"},
         "engine_kwargs": {"tensor_parallel_size": 4}},
    ]})
    prints = fleet_fingerprints(fleet)
    assert list(prints) == ["small", "large"]
    assert prints == {spec.model_id: model_fingerprint(spec) for spec in fleet.models}
    assert prints["small"] != prints["large"]


def test_hub_download_cache_files_are_not_part_of_it(model_dir: Path) -> None:
    before = model_fingerprint(_spec(str(model_dir)))
    meta = model_dir / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "model.safetensors.metadata").write_text("etag\n1795400000.123\n")  # a download timestamp
    assert model_fingerprint(_spec(str(model_dir))) == before
