"""GPU memory of one replica: weights, KV cache and headroom, per GPU of a tensor-parallel group.

The arithmetic the plan is made of (``docs/scale.md`` works it through for the default fleet):

- weights: parameter count x bytes of the serving dtype, split evenly over the replica's GPUs (vLLM
  shards the embeddings and the output head too);
- KV cache: layers x KV heads x head dim x 2 (a key and a value) x bytes of the KV dtype, per token,
  for ``max_model_len`` x ``max_num_seqs`` tokens; a GPU holds its share of the KV heads (one when the
  group is larger than the model's KV heads, which vLLM then replicates) and of the layers;
- headroom on each GPU for what vLLM holds beside them: activations at the peak of a batch, the
  sampler, CUDA graphs, and the collectives' buffers when a replica spans GPUs.

The CUDA context of each engine process lies outside ``gpu_memory_utilization`` (vLLM measures its
budget after creating the context): on a GPU that engines share, their fractions and their contexts
must fit together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cluster.architecture import Architecture
from cluster.config import ModelSpec

__all__ = ["COLLECTIVES_BYTES", "CUDA_CONTEXT_BYTES", "DEFAULT_MAX_NUM_SEQS", "HEADROOM_BYTES", "ReplicaMemory",
           "replica_memory", "tensor_parallel_problem"]

GIB = 2**30
HEADROOM_BYTES = 3 * GIB  # per GPU: activation peak, sampler, CUDA graphs (vLLM's profile of a 7-8B model)
COLLECTIVES_BYTES = 2 * GIB  # per GPU more when a replica spans GPUs: NCCL's buffers
CUDA_CONTEXT_BYTES = 1 * GIB  # per engine process and GPU, outside its gpu_memory_utilization
DEFAULT_MAX_NUM_SEQS = 256  # the batch the plan assumes where an entry sets no max_num_seqs

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}


@dataclass(frozen=True, slots=True)
class ReplicaMemory:
    """The memory figures of one replica of a model, as the plan reports them."""

    architecture: Architecture
    dtype_bytes: float  # per weight
    kv_dtype_bytes: int  # per cached key or value element
    max_model_len: int
    max_num_seqs: int

    @property
    def weights_bytes(self) -> int:
        return math.ceil(self.architecture.num_parameters * self.dtype_bytes)

    @property
    def kv_bytes_per_token(self) -> int:
        a = self.architecture
        return a.num_hidden_layers * a.num_key_value_heads * a.head_dim * 2 * self.kv_dtype_bytes

    @property
    def kv_cache_bytes(self) -> int:
        """The whole replica's KV cache for ``max_num_seqs`` sequences of ``max_model_len`` tokens."""
        return self.kv_bytes_per_token * self.max_model_len * self.max_num_seqs

    @staticmethod
    def headroom_bytes(gpus: int) -> int:
        """Headroom on each of a replica's GPUs."""
        return HEADROOM_BYTES + (COLLECTIVES_BYTES if gpus > 1 else 0)

    def kv_bytes_per_gpu_token(self, tensor_parallel: int, pipeline_parallel: int = 1) -> int:
        a = self.architecture
        heads = max(a.num_key_value_heads // tensor_parallel, 1)
        layers = math.ceil(a.num_hidden_layers / pipeline_parallel)
        return layers * heads * a.head_dim * 2 * self.kv_dtype_bytes

    def per_gpu_bytes(self, tensor_parallel: int, pipeline_parallel: int = 1, *, sequences: int | None = None) -> int:
        """What each GPU of a replica needs: its share of the weights and of the KV cache for ``sequences``
        full-length sequences (default ``max_num_seqs``), and the headroom."""
        gpus = tensor_parallel * pipeline_parallel
        seqs = self.max_num_seqs if sequences is None else sequences
        kv = self.kv_bytes_per_gpu_token(tensor_parallel, pipeline_parallel) * self.max_model_len * seqs
        return math.ceil(self.weights_bytes / gpus) + kv + self.headroom_bytes(gpus)

    def sequences_within(self, budget_bytes: float, tensor_parallel: int, pipeline_parallel: int = 1) -> int:
        """Full-length sequences whose KV cache fits in ``budget_bytes`` per GPU beside weights and headroom."""
        fixed = self.per_gpu_bytes(tensor_parallel, pipeline_parallel, sequences=0)
        per_sequence = self.kv_bytes_per_gpu_token(tensor_parallel, pipeline_parallel) * self.max_model_len
        return max(int((budget_bytes - fixed) // per_sequence), 0)


def _bytes_of(dtype: object, key: str, default: float) -> float:
    if dtype is None or dtype == "auto":
        return default
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"engine_kwargs.{key}: {dtype!r} is not a dtype the planner knows "
                         f"({', '.join(sorted(_DTYPE_BYTES))} or auto)")
    return _DTYPE_BYTES[str(dtype)]


def replica_memory(spec: ModelSpec, architecture: Architecture) -> ReplicaMemory:
    """The entry's memory figures; ``ValueError`` names the ``engine_kwargs`` key the planner cannot use."""
    kwargs = spec.engine_kwargs
    # vLLM's "auto" serves a 16-bit checkpoint in its own dtype and a 32-bit one in 16 bits.
    dtype_bytes = _bytes_of(kwargs.get("dtype"), "dtype", 2)
    quantization = kwargs.get("quantization")
    if quantization is not None:
        if quantization != "fp8":
            raise ValueError(f"engine_kwargs.quantization: {quantization!r} weights are not sized by the planner "
                             "(fp8 is)")
        dtype_bytes = 1
    kv_dtype = kwargs.get("kv_cache_dtype", "auto")
    if isinstance(kv_dtype, str) and kv_dtype.startswith("fp8"):
        kv_bytes = 1
    else:
        kv_bytes = int(_bytes_of(kv_dtype, "kv_cache_dtype", 2 if dtype_bytes < 2 else dtype_bytes))
    max_model_len = kwargs.get("max_model_len") or architecture.max_position_embeddings
    if not max_model_len:
        raise ValueError("engine_kwargs.max_model_len: required, the model's size source states no "
                         "max_position_embeddings")
    return ReplicaMemory(architecture=architecture, dtype_bytes=dtype_bytes, kv_dtype_bytes=kv_bytes,
                         max_model_len=int(max_model_len),
                         max_num_seqs=int(kwargs.get("max_num_seqs", DEFAULT_MAX_NUM_SEQS)))


def tensor_parallel_problem(architecture: Architecture, tensor_parallel: int, name: str = "the model") -> str | None:
    """Why vLLM would refuse this tensor-parallel size for the model, or None: it must divide the
    attention heads, and divide the KV heads or be a multiple of them (which vLLM then replicates)."""
    a = architecture
    if a.num_attention_heads % tensor_parallel:
        return f"{tensor_parallel} does not divide the {a.num_attention_heads} attention heads of {name}"
    kv = a.num_key_value_heads
    if (kv % tensor_parallel) if tensor_parallel <= kv else (tensor_parallel % kv):
        return f"{tensor_parallel} neither divides nor is a multiple of the {kv} KV heads of {name}"
    return None
