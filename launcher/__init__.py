"""ftl's launcher: how a run happens (CLI, config, planner, driver, per-rank loop, backends)."""

__version__ = "0.1.0"
