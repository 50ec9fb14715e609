"""Datasets: sources (files, hub, builtin tasks), formats, tokenized batches, samplers."""
