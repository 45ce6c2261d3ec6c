"""Engines that run a stage's per-item work somewhere other than a local process pool.

``ray_engine``: Ray Data actors on a local or remote Ray cluster (``--engine ray``).
Stages keep planning, manifest writing and reporting to themselves; an engine only
turns pending items into result rows, so every engine writes the same manifest.
"""
