"""The demo's warm-start check: `first_token_accuracy` is the share of examples whose first answer token
is the model's argmax after the (left-padded) prompt."""
import jax
import numpy as np

from sdpo_jax import models, warm_start as ws

MODEL = models.ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=32, num_layers=1, num_heads=2,
                           num_kv_heads=1, head_dim=16, intermediate_size=64, qk_norm="per_head")


def test_first_token_accuracy_counts_argmax_hits_after_left_padded_prompts():
    """With answers set to each prompt's own argmax next token (computed one unpadded prompt at a time)
    the accuracy is 1; with every other answer replaced by a different token it is exactly 1/2."""
    params = models.init_params(MODEL, jax.random.key(0), std=0.5)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, 64, size=int(n))) for n in rng.integers(3, 12, size=8)]
    argmax = [int(np.argmax(np.asarray(models.forward(MODEL, params, np.array([p], np.int32),
                                                      np.ones((1, len(p)), np.int32)))[0, -1])) for p in prompts]
    hits = [(p, [a, 0]) for p, a in zip(prompts, argmax)]
    assert ws.first_token_accuracy(MODEL, params, hits, pad_id=0, prompt_buckets=(16,)) == 1.0
    half = [(p, [a if i % 2 else (a + 1) % 64, 0]) for i, (p, a) in enumerate(zip(prompts, argmax))]
    assert ws.first_token_accuracy(MODEL, params, half, pad_id=0, prompt_buckets=(16,)) == 0.5
