"""Where metrics go: metrics.jsonl, Weights & Biases, and the console."""
