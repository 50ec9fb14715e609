"""A plain torchrun DDP training loop: the baseline ftl's loop is measured against.

    torchrun --nproc-per-node 2 -m scripts.bench.plain_ddp MODEL_DIR STEPS BATCH OUT_JSON

Nothing of ftl's training code (its own padding, its own loop): tokenises chats with the
tokenizer's template, pads, trains with AdamW. Writes per-step seconds and the wall time of the
first finished step (since ``FTL_BENCH_T0``, read through ``launcher.core.env``).
"""

from __future__ import annotations

import json
import random
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModelForCausalLM, AutoTokenizer

from launcher.core.env import bench_t0


def main() -> None:
    model_dir, steps, batch, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = DistributedDataParallel(AutoModelForCausalLM.from_pretrained(model_dir))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = random.Random(rank)
    letters = "abcdefghij"
    times: list[float] = []
    first_step_wall = None
    for _ in range(steps):
        rows = []
        for _ in range(batch):
            q = [rng.choice(letters) for _ in range(rng.randint(3, 6))]
            chat = [{"role": "user", "content": "reverse: " + " ".join(q)},
                    {"role": "assistant", "content": " ".join(reversed(q))}]
            rows.append(tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"])
        longest = max(map(len, rows))
        ids = torch.full((batch, longest), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        if first_step_wall is None:
            first_step_wall = time.time() - bench_t0(default=time.time())
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"step_s": times, "first_step_wall_s": first_step_wall}, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
