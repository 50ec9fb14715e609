"""Commands built on top of runs: few-shot evaluation and hyperparameter sweeps."""
