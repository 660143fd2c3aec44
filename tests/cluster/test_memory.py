"""The plan's memory figures for three Qwen2.5 sizes, against values computed here by hand from their
``config.json`` files, and the tensor-parallel sizes vLLM accepts.

Each size's facts are copied from its config.json on the hub; the arithmetic is written out in full, so
a reader can check it with a pen: parameters (embeddings, per layer q/k/v with bias, o, a gated MLP,
two norms; the final norm; an output head unless tied), weights = parameters x 2 bytes (bfloat16), KV
cache per token = layers x KV heads x head dim x 2 (K and V) x 2 bytes, and per GPU its share of both
plus the headroom (3 GiB, and 2 GiB more for the collectives of a replica over several GPUs).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.architecture import qwen25_architecture
from cluster.config import FleetConfig, ModelSpec
from cluster.memory import replica_memory, tensor_parallel_problem
from cluster.nodes import parse_nodes
from cluster.plan import ModelPlan, plan_fleet

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30


def _params(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, tied: bool) -> int:
    head_dim = hidden // heads
    q = hidden * hidden + hidden  # q_proj weight and bias
    kv = 2 * (hidden * kv_heads * head_dim + kv_heads * head_dim)  # k_proj and v_proj, weight and bias
    o = hidden * hidden  # o_proj, no bias
    mlp = 3 * hidden * intermediate  # gate, up, down
    norms = 2 * hidden  # input and post-attention RMSNorm
    return layers * (q + kv + o + mlp + norms) + vocab * hidden * (1 if tied else 2) + hidden


@pytest.fixture(scope="module")
def default_plan() -> dict[str, ModelPlan]:
    plan = plan_fleet(FleetConfig.from_file(REPO / "models.yaml"), parse_nodes("1x8xH100"))
    return {m.model_id: m for m in plan.models}


def test_qwen25_math_1_5b(default_plan: dict[str, ModelPlan]) -> None:
    """config.json: hidden 1536, intermediate 8960, 28 layers, 12 heads, 2 KV heads, vocab 151936, tied.
    models.yaml: max_model_len 4096, max_num_seqs 128, half an H100."""
    params = 28 * (1536 * 1536 + 1536 + 2 * (1536 * 256 + 256) + 1536 * 1536 + 3 * 1536 * 8960 + 2 * 1536) \
        + 151936 * 1536 + 1536
    assert params == _params(1536, 8960, 28, 12, 2, 151936, True) == 1_543_714_304
    weights = params * 2  # 3_087_428_608 bytes
    kv_per_token = 28 * 2 * 128 * 2 * 2  # 28_672 bytes
    kv_cache = kv_per_token * 4096 * 128  # 15_032_385_536 bytes = 14 GiB
    per_gpu = weights + kv_cache + 3 * GIB  # 21_341_039_616 bytes
    m = default_plan["qwen2.5-math-1.5b"]
    assert m.memory is not None
    assert m.memory.weights_bytes == weights == 3_087_428_608
    assert m.memory.kv_bytes_per_token == kv_per_token
    assert m.memory.kv_cache_bytes == kv_cache == 14 * GIB
    assert m.per_gpu_bytes == per_gpu == 21_341_039_616
    assert m.gpu_share == 0.5 and m.gpu_memory_utilization == 0.45


def test_qwen25_7b(default_plan: dict[str, ModelPlan]) -> None:
    """config.json: hidden 3584, intermediate 18944, 28 layers, 28 heads, 4 KV heads, vocab 152064, untied.
    models.yaml: max_model_len 8192, max_num_seqs 96, one H100."""
    params = 28 * (3584 * 3584 + 3584 + 2 * (3584 * 512 + 512) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584) \
        + 2 * 152064 * 3584 + 3584
    assert params == _params(3584, 18944, 28, 28, 4, 152064, False) == 7_615_616_512
    weights = params * 2  # 15_231_233_024 bytes
    kv_per_token = 28 * 4 * 128 * 2 * 2  # 57_344 bytes
    kv_cache = kv_per_token * 8192 * 96  # 45_097_156_608 bytes = 42 GiB
    per_gpu = weights + kv_cache + 3 * GIB  # 63_549_615_104 bytes
    m = default_plan["qwen2.5-7b"]
    assert m.memory is not None
    assert (m.memory.weights_bytes, m.memory.kv_cache_bytes) == (weights, kv_cache)
    assert m.per_gpu_bytes == per_gpu == 63_549_615_104
    assert per_gpu <= 0.90 * 79.2 * GIB  # fits the memory fraction models.yaml gives it
    assert m.tensor_parallel_size == 1 and m.kv_sequences == 96


def test_qwen25_72b_over_four_gpus(default_plan: dict[str, ModelPlan]) -> None:
    """config.json: hidden 8192, intermediate 29568, 80 layers, 64 heads, 8 KV heads, vocab 152064, untied.
    models.yaml: max_model_len 8192, max_num_seqs 48, tensor parallel 4 (each GPU holds 2 of the 8 KV heads)."""
    params = 80 * (8192 * 8192 + 8192 + 2 * (8192 * 1024 + 1024) + 8192 * 8192 + 3 * 8192 * 29568 + 2 * 8192) \
        + 2 * 152064 * 8192 + 8192
    assert params == _params(8192, 29568, 80, 64, 8, 152064, False) == 72_706_203_648
    weights = params * 2  # 145_412_407_296 bytes
    kv_per_token = 80 * 8 * 128 * 2 * 2  # 327_680 bytes
    kv_cache = kv_per_token * 8192 * 48  # 128_849_018_880 bytes = 120 GiB
    per_gpu = weights // 4 + 80 * 2 * 128 * 2 * 2 * 8192 * 48 + (3 + 2) * GIB  # 73_934_065_664 bytes
    m = default_plan["qwen2.5-72b"]
    assert m.memory is not None
    assert (m.memory.weights_bytes, m.memory.kv_cache_bytes) == (weights, kv_cache)
    assert m.per_gpu_bytes == per_gpu == 73_934_065_664
    assert per_gpu <= 0.92 * 79.2 * GIB and m.tensor_parallel_size == 4


@pytest.mark.parametrize(
    ("size", "tp", "problem"),
    [("72B", 3, "3 does not divide the 64 attention heads of m"), ("72B", 16, None), ("72B", 8, None),
     ("7B", 8, "8 does not divide the 28 attention heads of m"), ("7B", 4, None),
     ("7B", 7, "7 neither divides nor is a multiple of the 4 KV heads of m"),
     ("0.5B", 7, "7 neither divides nor is a multiple of the 2 KV heads of m"), ("0.5B", 2, None)],
)
def test_tensor_parallel_sizes_vllm_accepts(size: str, tp: int, problem: str | None) -> None:
    """vLLM splits attention heads evenly, and KV heads evenly or replicated (a multiple of them)."""
    arch = qwen25_architecture(f"Qwen/Qwen2.5-{size}-Instruct")
    assert arch is not None and tensor_parallel_problem(arch, tp, "m") == problem


def test_kv_heads_are_replicated_past_their_count() -> None:
    arch = qwen25_architecture("Qwen/Qwen2.5-72B-Instruct")
    assert arch is not None
    spec = ModelSpec.model_validate({"model_loading_config": {"model_id": "m"},
                                     "engine_kwargs": {"max_model_len": 1024, "max_num_seqs": 1}})
    memory = replica_memory(spec, arch)
    assert memory.kv_bytes_per_gpu_token(8) == 80 * 1 * 128 * 2 * 2  # one of the 8 KV heads per GPU
    assert memory.kv_bytes_per_gpu_token(16) == 80 * 1 * 128 * 2 * 2  # still one: vLLM replicates it
    assert memory.kv_bytes_per_gpu_token(2, 2) == 40 * 4 * 128 * 2 * 2  # pipeline stages split the layers


@pytest.mark.parametrize(
    ("kwargs", "weights_bytes", "kv_bytes_per_token", "problem"),
    [({"dtype": "float32"}, 4, 4, None), ({"quantization": "fp8"}, 1, 2, None),
     ({"kv_cache_dtype": "fp8_e5m2"}, 2, 1, None), ({"dtype": "int3"}, 0, 0, "engine_kwargs.dtype: 'int3'"),
     ({"quantization": "awq"}, 0, 0, "engine_kwargs.quantization: 'awq'")],
)
def test_dtypes(kwargs: dict[str, str], weights_bytes: int, kv_bytes_per_token: int, problem: str | None) -> None:
    arch = qwen25_architecture("Qwen/Qwen2.5-0.5B")
    assert arch is not None
    spec = ModelSpec.model_validate({"model_loading_config": {"model_id": "m"}, "engine_kwargs": kwargs})
    if problem:
        with pytest.raises(ValueError, match=problem):
            replica_memory(spec, arch)
        return
    memory = replica_memory(spec, arch)
    assert memory.weights_bytes == arch.num_parameters * weights_bytes
    assert memory.kv_bytes_per_token == 24 * 2 * 64 * 2 * kv_bytes_per_token
    assert memory.max_model_len == 32768 and memory.max_num_seqs == 256  # the assumed defaults
