"""Getting a run going, on the laptop and on the Ray driver.

``ftl run``'s preparation (preflight, smoke shrinking, the run folder), the Ray driver entry point
and placement checks, and the commands that read finished runs (export, list).
"""
