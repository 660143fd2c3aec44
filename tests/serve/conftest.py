"""Real-engine tests: tiny models built once per session, vLLM configured for a 2-core CPU machine.

The environment is fixed here, before any test imports vllm or starts Ray (shared/docs/cpu-stack.md
§4; Ray workers inherit it): one OpenMP thread (else 25x slower under contention), no torch.compile on
the first logprobs request, 1 GiB of KV cache, no hub access. The in-process engine switch
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) is set by the one test that wants it: Serve replicas run
``AsyncLLM``, which needs multiprocessing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for _key, _value in {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "OMP_NUM_THREADS": "1",
    "TORCHDYNAMO_DISABLE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("transformers", reason="the cpu extra is not installed")
    from toymodels.tiny import TINY_FLEET, build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {name: build_tiny_model(root / name, spec) for name, spec in TINY_FLEET.items()}
