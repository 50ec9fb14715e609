"""Packing on variable-length chats: ftl ``sft`` against TRL's ``SFTTrainer``, packed and padded.

    python -m scripts.bench.packing [--repeats 3] [--steps 30] [--max-length 256]

Why a separate benchmark: ``scripts.bench.trl`` uses the reverse task, whose chats are all ~27
tokens, so padding costs little and packing has nothing to win. Real chat data mixes one-line
answers with long ones; padded to the longest chat of the batch, most of the compute goes to
padding. Here the chats' lengths are spread log-uniformly from ~16 tokens to ``max_length``
(a mix of long answers and long prompts with one-token answers), the regime packing is for.

Four trainers, same model (builtin tiny-llama-256, fp32, sdpa, 2 torch threads), same data,
loss on assistant tokens only, alternated run by run (the machine is shared):

- ftl padded: ``data.packing: false``, 16 chats per step padded to the longest;
- TRL padded: ``packing=False``, the same 16 chats per step;
- ftl packed: ``data.packing: true`` (best fit decreasing into ``max_length`` rows, TRL's
  packer; position ids restart, transformers builds a block-diagonal mask per row);
- TRL packed: ``packing=True`` with TRL's default ``packing_strategy='bfd'``, which forces
  ``padding_free``: the step's bins are flattened into one ``[1, rows*max_length]`` sequence
  with restarting position ids (the same per-example attention and labels as ftl).

Packed runs take as many rows per step as carry the same real tokens as 16 padded chats (from
each packer's measured fill), so every trainer does about the same useful work per step. The
figure is real (non-padding) tokens per second over the steps after 5 warm-up steps. Before
timing, a loss check feeds the same 48 chats through all four data paths at the initial
weights: equal losses prove the labels, masks and positions mean the same thing.

    chats.py     the fixed setup and the data (``variable_chats``)
    runners.py   one timed run per trainer (ftl padded/packed, TRL padded/packed)
    check.py     the same-chats loss check, the packers' fills, the optional profile
    report.py    the BENCHMARKS.md section
    __main__.py  the command line: check, then the runs alternated, then the section
"""
