"""Structured pruning: the channel dependency graph, importance, and the prune-channels pass."""
