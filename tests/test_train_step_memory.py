"""The whole compiled train step at Qwen's vocabulary never holds a [T, V] logits array."""

from sdpo_jax import models, programs, train_step as ts

BIG_VOCAB = models.ModelConfig(model_type="qwen3", vocab_size=151936, hidden_size=64, num_layers=1, num_heads=4,
                               num_kv_heads=2, head_dim=16, intermediate_size=128, qk_norm="per_head",
                               attention_impl="blockwise", attention_block_size=256)
# Blockwise attention: with the plain one, the model's own [heads, T, T] scores and their backward (about
# 200 MiB here) would dominate; they are the model's concern, not the loss's.


def test_whole_train_step_temp_memory_below_half_a_logits_array():
    """1-layer model, V = 151936, T = 2048 completion tokens, B = 1, K = 100, EMA teacher: the compiled
    train step (student + teacher forwards, chunked top-K loss, backward, AdamW) has temporary memory
    (memory_analysis) below half of one fp32 [T, V] array. (Most of what remains is parameter-sized:
    the [V, D] embedding gradient, its unembedding twin and AdamW's temporaries.)"""
    settings = ts.StepSettings(teacher_kind="ema", topk=100, alpha=0.5, vocab_chunk=8192)
    optimizer = ts.make_optimizer(1e-5, 10)
    state = programs.abstract_train_state(BIG_VOCAB, settings, optimizer)
    batch = programs.abstract_minibatch(1, {"prompt": 16, "teacher_prompt": 32, "completion": 2048})
    step = ts.make_train_step(BIG_VOCAB, settings, optimizer)
    temp = step.jitted.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
    half_tv = 2048 * 151936 * 4 / 2
    print(f"train step temp {temp / 2**20:.1f} MiB; half of fp32 [T, V] {half_tv / 2**20:.1f} MiB")
    assert 0 < temp < half_tv, f"temp {temp / 2**20:.0f} MiB >= half of [T, V] fp32 {half_tv / 2**20:.0f} MiB"
