"""``cascade up``: the fleet on Ray Serve: vLLM replicas, the cascade controller (a plain class) and its
loop, its HTTP routes, the one exception -> HTTP table, the application builder and deployment onto a
running Ray cluster."""
