"""Compare sdpo_jax's logits with transformers' on a real checkpoint.

    python -m sdpo_jax.tools.check_hf --model_dir /path/to/Qwen3-8B
    python -m sdpo_jax.tools.check_hf --model_dir DIR --dtype bfloat16 --attention_impl blockwise

Loads DIR with `sdpo_jax.models.load_pretrained` and with `AutoModelForCausalLM` (PyTorch, CPU or
CUDA), encodes a few chat prompts with the directory's tokenizer (`enable_thinking` passed through;
random token ids when DIR has no tokenizer), left-pads them into one batch, and prints per prompt
the max |logit difference|, the argmax agreement and KL(hf || ours) over the valid positions.
Exit code 0 when every max difference is within --atol, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

from sdpo_jax import cli

DEFAULT_PROMPTS = (
    "What is 17 * 23? Answer with the number only.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain in one sentence why the sky is blue.",
)


def _encode(model_dir: str, prompts, enable_thinking: bool, vocab: int):
    """Token id lists per prompt: chat-templated when DIR has a tokenizer, else random ids."""
    has_tokenizer = any(os.path.exists(os.path.join(model_dir, f))
                        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))
    if not has_tokenizer:
        import numpy as np
        rng = np.random.default_rng(0)
        print(f"note: {model_dir} has no tokenizer; using random token ids")
        return [list(rng.integers(0, vocab, 8 + 5 * i)) for i in range(len(prompts))], None
    from sdpo_jax.tokenizer import apply_chat_template, load_tokenizer

    tok = load_tokenizer(model_dir)
    seqs = []
    for p in prompts:
        msgs = [{"role": "user", "content": p}]
        if getattr(tok, "chat_template", None):
            seqs.append(apply_chat_template(tok, msgs, enable_thinking=enable_thinking))
        else:
            seqs.append(list(tok(p)["input_ids"]))
    return seqs, tok


def compare(model_dir: str, *, prompts=DEFAULT_PROMPTS, dtype: str = "float32",
            attention_impl: str = "plain", enable_thinking: bool = False,
            device: str = "auto") -> list[dict]:
    """Per prompt: {"tokens", "max_abs_diff", "argmax_agree", "kl"} of ours vs transformers."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers

    from sdpo_jax import models

    cfg, params = models.load_pretrained(model_dir, dtype=dtype, compute_dtype=dtype,
                                         attention_impl=attention_impl, scan_layers=True)
    seqs, _ = _encode(model_dir, prompts, enable_thinking, cfg.vocab_size)
    b, t = len(seqs), max(len(s) for s in seqs)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    ids = np.full((b, t), pad, np.int64)
    mask = np.zeros((b, t), np.int64)
    for i, s in enumerate(seqs):  # left padding
        ids[i, t - len(s):] = s
        mask[i, t - len(s):] = 1
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)

    ours = np.asarray(jax.jit(models.forward, static_argnums=0)(
        cfg, params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool)))
    del params

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype), attn_implementation="eager").to(device).eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, device=device),
                 attention_mask=torch.tensor(mask, device=device),
                 position_ids=torch.tensor(positions, device=device)).logits.float().cpu().numpy()

    results = []
    for i, s in enumerate(seqs):
        valid = mask[i].astype(bool)
        a, r = ours[i][valid].astype(np.float64), ref[i][valid].astype(np.float64)
        log_p = r - np.logaddexp.reduce(r, axis=-1, keepdims=True)
        log_q = a - np.logaddexp.reduce(a, axis=-1, keepdims=True)
        kl = float((np.exp(log_p) * (log_p - log_q)).sum(-1).max())
        results.append({"tokens": len(s), "max_abs_diff": float(np.abs(a - r).max()),
                        "argmax_agree": float((a.argmax(-1) == r.argmax(-1)).mean()), "kl": kl})
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model_dir", required=True, help="local Hugging Face checkpoint directory")
    ap.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16, both sides")
    ap.add_argument("--attention_impl", default="plain", help="plain | blockwise | cudnn | splash")
    ap.add_argument("--enable_thinking", action="store_true")
    ap.add_argument("--prompt", action="append", help="a prompt (repeatable); default: 3 built-ins")
    ap.add_argument("--device", default="auto", help="torch device for transformers")
    ap.add_argument("--atol", type=float, default=None,
                    help="max |logit diff| that passes (default 1e-3 fp32, 0.5 bf16)")
    args = ap.parse_args(argv)
    return cli.exit_code(lambda: _compare_and_report(args))


def _compare_and_report(args) -> int:
    atol = args.atol if args.atol is not None else (1e-3 if args.dtype == "float32" else 0.5)
    results = compare(args.model_dir, prompts=tuple(args.prompt or DEFAULT_PROMPTS),
                      dtype=args.dtype, attention_impl=args.attention_impl,
                      enable_thinking=args.enable_thinking, device=args.device)
    ok = True
    for i, r in enumerate(results):
        passed = r["max_abs_diff"] <= atol
        ok &= passed
        print(f"prompt {i}: {r['tokens']} tokens, max |diff| {r['max_abs_diff']:.3e}, argmax agree "
              f"{r['argmax_agree']:.1%}, max KL {r['kl']:.2e} {'ok' if passed else 'FAIL'}")
    print(f"{'PASS' if ok else 'FAIL'} (atol {atol:g}, dtype {args.dtype}, "
          f"attention {args.attention_impl})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
