"""The transformers peer of `bench/forward.py`, run alone in its own process (torch only: no JAX is imported).

    python bench/peers/hf_forward.py save --dir DIR --config_json '{"model_type": ..., ...}' --dtype float32
    python bench/peers/hf_forward.py time --dir DIR --ids IDS.npy --iters N --check_out LOGITS.npy

`save` writes a random model (seed 0, sdpa attention) as a Hugging Face directory that `bench/forward.py` then
loads into JAX, so both sides hold the same weights. `time` runs the forward (logits, no gradient) on the [B, S]
ids of the .npy file with a full attention mask, on CUDA when there is one: one warm-up call, then N timed
calls; it saves the logits of the first row's first 64 tokens to --check_out (the JAX side compares them with its
own) and prints one JSON line {"median_s", "torch", "transformers", "threads", "device", "jax_loaded"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np


def save(directory: str, config_json: str, dtype: str) -> None:
    import torch
    import transformers

    kw = json.loads(config_json)
    config = transformers.AutoConfig.for_model(kw.pop("model_type"), **kw)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.to(getattr(torch, dtype)).eval().save_pretrained(directory)


def time_forward(directory: str, ids_npy: str, iters: int, check_out: str) -> dict:
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa").to(device).eval()
    ids = torch.tensor(np.load(ids_npy), dtype=torch.long, device=device)
    mask = torch.ones_like(ids)

    def call(i, m):
        with torch.no_grad():
            logits = model(input_ids=i, attention_mask=m).logits
        if device == "cuda":
            torch.cuda.synchronize()
        return logits

    call(ids, mask)  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call(ids, mask)
        times.append(time.perf_counter() - start)
    np.save(check_out, call(ids[:1, :64], mask[:1, :64]).float().cpu().numpy())
    return {"median_s": statistics.median(times), "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "device": device, "jax_loaded": "jax" in sys.modules}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("save", "time"))
    parser.add_argument("--dir", required=True)
    parser.add_argument("--config_json")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--ids")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--check_out")
    args = parser.parse_args()
    if args.command == "save":
        save(args.dir, args.config_json, args.dtype)
    else:
        print(json.dumps(time_forward(args.dir, args.ids, args.iters, args.check_out)))


if __name__ == "__main__":
    main()
