"""Planning, on the laptop or login node, before anything is submitted.

Model facts, the per-GPU memory model, ``sharding: auto``, the planner and its views (text and
chart). Plain arithmetic over config and ``config.json`` files: it never imports torch or Ray.
"""
