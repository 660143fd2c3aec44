"""``cascade up``: the fleet on Ray Serve: vLLM replicas, the cascade controller and its loop, the
application builder and deployment onto a running Ray cluster."""
