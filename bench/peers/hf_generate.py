"""The transformers peer of `bench/decode.py`, run alone in its own process (torch only: no JAX is imported here,
so the two thread pools never compete).

    python bench/peers/hf_generate.py save --dir DIR --config_json '{...}'     # random Qwen2 weights, seed 0
    python bench/peers/hf_generate.py time --dir DIR --prompts PROMPTS.npy --new_tokens N --temperature T \
        --repeats R [--threads K]

`save` writes a Hugging Face directory that `bench/decode.py` then loads into JAX, so both sides read the same
weights. `time` runs `generate(use_cache=True)` on the [B, P] prompts of the .npy file: exactly N new tokens per
row (sampled at temperature T, no top-k/top-p; T = 0 is greedy), one warm-up call of 8 tokens, then R timed
calls; it prints one JSON line {"wall_s": median, "cpu_s": median, "calls": R, "jax_loaded": false} (whether
JAX got imported into this process: it must not be).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def save(directory: str, config_json: str) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(**json.loads(config_json)))
    model.float().eval().save_pretrained(directory)


def time_generate(directory: str, prompts_npy: str, new_tokens: int, temperature: float, repeats: int) -> dict:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
    ids = torch.tensor(np.load(prompts_npy), dtype=torch.long)
    mask = torch.ones_like(ids)
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else \
        dict(do_sample=False)

    def call(count):
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=count, min_new_tokens=count,
                                 use_cache=True, pad_token_id=0, **sampling)
        assert out.shape == (ids.shape[0], ids.shape[1] + count)

    call(8)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        call(new_tokens)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "calls": repeats,
            "jax_loaded": "jax" in sys.modules}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("save", "time"))
    parser.add_argument("--dir", required=True)
    parser.add_argument("--config_json")
    parser.add_argument("--prompts")
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.command == "save":
        save(args.dir, args.config_json)
        return
    import torch

    torch.set_num_threads(args.threads or os.cpu_count())
    print(json.dumps(time_generate(args.dir, args.prompts, args.new_tokens, args.temperature, args.repeats)))


if __name__ == "__main__":
    main()
