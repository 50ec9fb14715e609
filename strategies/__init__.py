"""What is trained: one strategy plugin per method. See ``strategies.catalog``."""

from strategies import catalog as _catalog  # noqa: F401  (fills the registry)
from strategies.registry import STRATEGIES, StrategySpec, build_strategy

__all__ = ["STRATEGIES", "StrategySpec", "build_strategy"]
