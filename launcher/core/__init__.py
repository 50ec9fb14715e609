"""What every other layer may use; imports nothing else of ftl.

Errors with hints, named registries, lazy ``package.module:attr`` imports, cache paths, and the
process-level switches every process shares: failpoints, preemption requests, the terminal gate,
user code that travels with a run.
"""
