"""Benchmarks that append a section to BENCHMARKS.md: ``python -m scripts.bench.<name>``.

    common.py       machine/version header, run preparation, load and contention sampling
    backends.py     ZeRO-2/3 and FSDP2 against DDP, step time (torchrun, 2 ranks)
    overhead.py     ftl's start-up and step time against a plain torchrun DDP loop
    plain_ddp.py    that plain loop (``torchrun -m scripts.bench.plain_ddp``)
    trl.py          ftl ``sft`` against TRL's SFTTrainer, no packing
    packing/        ftl ``sft`` against TRL, packed and padded, on variable-length chats
    packing_dpo.py  packed against unpacked DPO
    mfu.py          model FLOPs utilisation, packing x gradient checkpointing
    memory.py       memory switches: chunked cross-entropy, checkpointing, activation offload
    sp.py           Ulysses sequence parallelism on long sequences
    ppo.py          PPO/GRPO sync against one-step-off async
    rollout.py      vLLM against HF generate
"""
