"""Shared pieces of the on-policy RL strategies (``ppo``, ``grpo``): pure tensor math in ``math``."""
