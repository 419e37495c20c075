"""Graph -> graph rewrites, one file each. Each pass is `def name(graph) -> bool` (changed or not)
and never raises for "not applicable". pipeline.optimize runs the list for a level to a fixed point."""
