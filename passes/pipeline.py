"""The default passes per level, run to a fixed point (placeholder until the passes land)."""


def optimize(graph, level: int = 2) -> list:
    return []
