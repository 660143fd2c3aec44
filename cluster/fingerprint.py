"""Fingerprints of the fleet's models: what calibration artifacts are bound to.

A calibration measures one model as one engine ran it, so its artifacts name, per model, a hash of the
model's source and the settings that change its answers or its speed: the weights and tokenizer files
(a local folder), or the hub id and revision; the vLLM engine arguments; the accelerator type; the GPUs
per replica. Loading artifacts with a fleet whose fingerprints differ is refused with the models named.

Files under 64 MiB are hashed whole; larger ones (real weights) by size plus their first and last MiB:
the safetensors header (every tensor's name, shape and offset) is at the start, and reading 100 GB of
weights at every controller start is not an option.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cluster.config import FleetConfig, ModelSpec

__all__ = ["fleet_fingerprints", "model_fingerprint"]

_WHOLE_FILE_BYTES = 64 << 20
_EDGE_BYTES = 1 << 20


def _hash_file(digest: hashlib._Hash, path: Path, name: str) -> None:
    size = path.stat().st_size
    digest.update(f"{name}:{size}\n".encode())
    with path.open("rb") as fh:
        if size <= _WHOLE_FILE_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(fh.read(_EDGE_BYTES))
            fh.seek(size - _EDGE_BYTES)
            digest.update(fh.read(_EDGE_BYTES))


def model_fingerprint(spec: ModelSpec) -> str:
    """A 16-hex-digit hash of the model's source and serving settings (module docstring)."""
    loading = spec.model_loading_config
    source = loading.model_source or loading.model_id
    digest = hashlib.sha256()
    settings = {
        "engine_kwargs": spec.engine_kwargs,
        "accelerator_type": spec.accelerator_type,
        "gpus_per_replica": spec.gpus_per_replica,
        "tokenizer_source": loading.tokenizer_source,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    folder = Path(source)
    if folder.is_dir():
        # Hub download caches (``.cache/huggingface``: timestamps) say nothing about the model.
        files = sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts)
        for path in files:
            _hash_file(digest, path, path.relative_to(folder).as_posix())
    else:
        digest.update(f"hub:{source}".encode())  # a hub id: the revision is in engine_kwargs when pinned
    return digest.hexdigest()[:16]


def fleet_fingerprints(fleet: FleetConfig) -> dict[str, str]:
    """Model id → fingerprint, for every model of the fleet."""
    return {spec.model_id: model_fingerprint(spec) for spec in fleet.models}
