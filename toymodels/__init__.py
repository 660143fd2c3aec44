"""Tiny and toy Qwen2 models built locally for CPU fleets (no model hub): torch and transformers,
imported lazily; nothing of the project."""
