"""sampling.generate end to end on tiny random models: HF greedy parity, sampler/trainer log-prob
parity, stop ids, the KV cache really used, one compile per key, sharded == unsharded."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdpo_jax import models, sampling
from sdpo_jax.sampling_ops import truncation_mask
from tests.hf_tiny import tiny_model_dir

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14],
           [3, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140], [17, 18, 19, 20, 21]]
BUCKETS = (8, 16)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """(cfg, params) of a tiny untied random Qwen3 loaded from a saved HF directory."""
    return models.load_pretrained(tiny_model_dir(tmp_path_factory.mktemp("qwen3"), "qwen3"))


def _generate(cfg, params, prompts=PROMPTS, **kw):
    args = dict(max_new_tokens=10, temperature=0.0, eos_ids=[], n=1, rng=0, prompt_buckets=BUCKETS)
    args.update(kw)
    return sampling.generate(cfg, params, prompts, **args)


def _expected_after_stops(tokens, logprobs, stop_ids, pad_id):
    """What stop ids must do to a stop-free greedy run: cut each row after its first stop token."""
    tokens, logprobs = tokens.copy(), logprobs.copy()
    lengths, finish = [], []
    for row in range(tokens.shape[0]):
        hits = np.flatnonzero(np.isin(tokens[row], stop_ids))
        end = hits[0] + 1 if len(hits) else tokens.shape[1]
        tokens[row, end:], logprobs[row, end:] = pad_id, 0.0
        lengths.append(end)
        finish.append(sampling.FINISH_STOP if len(hits) else sampling.FINISH_LENGTH)
    return tokens, logprobs, np.array(lengths), np.array(finish)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama3"])
def test_greedy_tokens_equal_transformers_generate(family, tmp_path):
    """Greedy `generate` gives the same tokens as transformers' generate (PyTorch fp32) on a batch
    of left-padded prompts of different lengths, stop ids included (rows end at different steps)."""
    import torch
    import transformers

    path = tiny_model_dir(tmp_path, family)
    cfg, params = models.load_pretrained(path)
    free = _generate(cfg, params, prompts=PROMPTS)
    assert len(np.unique(free.tokens)) > 8  # not a degenerate model: the comparison means something
    stop_ids = sorted({int(free.tokens[0, 4]), int(free.tokens[2, 6])})
    ours = _generate(cfg, params, prompts=PROMPTS, eos_ids=stop_ids)

    hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    ids, mask = sampling.pad_to_bucket(PROMPTS, BUCKETS, pad_id=0)
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                          max_new_tokens=10, do_sample=False, eos_token_id=stop_ids, pad_token_id=0)
    hf_tokens = np.zeros((len(PROMPTS), 10), np.int32)
    hf_tokens[:, : out.shape[1] - ids.shape[1]] = out[:, ids.shape[1]:].numpy()
    np.testing.assert_array_equal(ours.tokens, hf_tokens)
    assert (ours.finish_reason == sampling.FINISH_STOP).sum() >= 1


def _teacher_forced_logprobs(cfg, params, prompts, out, n, temperature):
    """log_softmax(forward(prompt | completion) / T) at each completion token, plus the mask."""
    ids_bp, mask_bp = sampling.pad_to_bucket(prompts, BUCKETS, pad_id=0)
    ids_rp, mask_rp = np.repeat(ids_bp, n, axis=0), np.repeat(mask_bp, n, axis=0)
    width = out.tokens.shape[1]
    comp_mask = np.arange(width)[None, :] < out.lengths[:, None]
    ids = np.concatenate([ids_rp, out.tokens], axis=1)
    mask = np.concatenate([mask_rp, comp_mask.astype(np.int32)], axis=1)
    logits = models.forward(cfg, params, jnp.asarray(ids), jnp.asarray(mask))
    prompt_len = ids_rp.shape[1]
    logits = logits[:, prompt_len - 1: prompt_len - 1 + width].astype(jnp.float32) / temperature
    logp = jax.nn.log_softmax(logits, axis=-1)
    chosen = np.asarray(jnp.take_along_axis(logp, jnp.asarray(out.tokens)[..., None], -1)[..., 0])
    return chosen, comp_mask, np.asarray(logits)


def test_sampler_logprobs_equal_trainer_forward_fp32_and_bf16_figure(qwen3):
    """The log-probs `generate` returns equal log_softmax(forward(...)/T) of the teacher-forced
    sequence to <= 1e-5 in fp32 (0 on padding); prints the bf16 sampler-vs-trainer gap."""
    cfg, params = qwen3
    temperature, n = 0.7, 2
    out = _generate(cfg, params, temperature=temperature, n=n, rng=3)
    chosen, comp_mask, _ = _teacher_forced_logprobs(cfg, params, PROMPTS, out, n, temperature)
    gap = np.abs(np.where(comp_mask, chosen - out.logprobs, 0.0)).max()
    assert gap <= 1e-5, f"fp32 sampler/trainer log-prob gap {gap:.2e}"
    assert np.all(out.logprobs[~comp_mask] == 0.0)

    cfg16 = cfg.replace(compute_dtype="bfloat16")
    params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out16 = _generate(cfg16, params16, temperature=temperature, n=n, rng=3)
    chosen16, mask16, _ = _teacher_forced_logprobs(cfg16, params16, PROMPTS, out16, n, temperature)
    gap16 = np.abs(np.where(mask16, chosen16 - out16.logprobs, 0.0))
    print(f"\nbf16 sampler vs bf16 trainer log-prob gap: max {gap16.max():.3e}, "
          f"mean {gap16[mask16].mean():.3e} (fp32: max {gap:.2e})")
    assert gap16.max() < 0.1


def test_stop_ids_end_rows_one_by_one(qwen3):
    """Several stop ids end rows at different steps: tokens are the stop-free greedy run cut after
    the first stop token (included), then pad; lengths, finish reasons and log-probs follow; the
    loop stops as soon as the last row is done."""
    cfg, params = qwen3
    free = _generate(cfg, params)
    stop_ids = sorted({int(free.tokens[0, 2]), int(free.tokens[1, 8])} - {int(free.tokens[3, 0])})
    out = _generate(cfg, params, eos_ids=stop_ids, pad_id=0)
    tokens, logprobs, lengths, finish = _expected_after_stops(free.tokens, free.logprobs,
                                                              stop_ids, 0)
    assert len(set(lengths.tolist())) >= 2, "choose stop ids that end rows at different steps"
    np.testing.assert_array_equal(out.tokens, tokens)
    np.testing.assert_array_equal(out.lengths, lengths)
    np.testing.assert_array_equal(out.finish_reason, finish)
    np.testing.assert_allclose(out.logprobs, logprobs, atol=1e-6)
    assert out.num_decode_steps == lengths.max() - 1  # 9 when some row ran to max_new_tokens


def test_kv_cache_used_no_TxT_buffer_and_early_exit(qwen3):
    """The compiled decode program holds the [L, B, S, K, H] cache (CPU) but no [S, S] (or T x T) buffer,
    and when every row stops early the loop runs fewer than max_new_tokens steps."""
    cfg, params = qwen3
    width, prompt_len = 10, 16
    slots = prompt_len + width  # 26: a number that shows up only as the cache length
    ids, mask = sampling.pad_to_bucket(PROMPTS, BUCKETS, pad_id=0)
    spec = sampling.SamplingSpec(0.0, 0, 1.0)
    stop_e, pad, key = jnp.full((8,), -1, jnp.int32), jnp.int32(0), jax.random.key(0)
    programs = sampling.SamplingPrograms(cfg)
    state = programs.prefill(spec, 1, width, jnp.dtype("float32"), params, jnp.asarray(ids), jnp.asarray(mask),
                             stop_e, pad, key)
    lowered = programs.decode.lower(spec, params, state, stop_e, pad, key)
    hlo = lowered.compile().as_text()
    assert re.search(rf"\[{cfg.num_layers},4,{slots},{cfg.num_kv_heads},{cfg.head_dim}\]", hlo)  # [L,B,S,K,H] on CPU
    assert not re.search(rf"\b{slots},{slots}\b", hlo), "an [S, S] buffer in the decode program"

    free = _generate(cfg, params, max_new_tokens=width)
    stop_ids = sorted(set(free.tokens[:, 3].tolist()))  # every row stops by its 4th token
    out = _generate(cfg, params, max_new_tokens=width, eos_ids=stop_ids)
    assert np.all(out.finish_reason == sampling.FINISH_STOP) and out.lengths.max() <= 4
    assert out.num_decode_steps == out.lengths.max() - 1 < width - 1
    assert free.num_decode_steps == width - 1


def test_one_compile_per_bucket_batch_and_length(qwen3):
    """A second generate with the same (prompt bucket, batch, max_new_tokens) compiles nothing,
    even with other prompts of the same bucket, another rng and other stop ids; a new bucket
    compiles one prefill and one decode."""
    cfg, params = qwen3
    sizes = lambda: tuple(sampling.default_programs(cfg, None).compile_counts().values())  # noqa: E731
    before = sizes()
    _generate(cfg, params, max_new_tokens=7, temperature=1.0, rng=1, eos_ids=[3])
    first = sizes()
    assert first == (before[0] + 1, before[1] + 1)
    other = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [4], [9, 9], list(range(30, 46))]  # still bucket 16
    _generate(cfg, params, prompts=other, max_new_tokens=7, temperature=1.0, rng=2, eos_ids=[5])
    assert sizes() == first
    _generate(cfg, params, prompts=[[1, 2], [3], [4, 5, 6], [7]], max_new_tokens=7, temperature=1.0,
              rng=2, eos_ids=[5])  # bucket 8
    assert sizes() == (first[0] + 1, first[1] + 1)


def test_n_samples_layout_determinism_and_truncation(qwen3):
    """Row r is prompt r // n: the n samples of a prompt are distinct draws; the same rng gives the
    same output, another rng another; with top-k/top-p every sampled token lies inside the
    truncated set of the teacher-forced logits, and top_k=1 equals greedy."""
    cfg, params = qwen3
    out = _generate(cfg, params, temperature=1.0, n=3, rng=11)
    again = _generate(cfg, params, temperature=1.0, n=3, rng=11)
    other = _generate(cfg, params, temperature=1.0, n=3, rng=12)
    assert out.tokens.shape == (len(PROMPTS) * 3, 10)
    np.testing.assert_array_equal(out.tokens, again.tokens)
    np.testing.assert_array_equal(out.logprobs, again.logprobs)
    assert not np.array_equal(out.tokens, other.tokens)
    for prompt in range(len(PROMPTS)):
        group = out.tokens[prompt * 3: prompt * 3 + 3]
        assert len({tuple(row) for row in group}) == 3, "the n samples of a prompt are copies"

    trunc = _generate(cfg, params, temperature=1.5, top_k=5, top_p=0.8, n=2, rng=4)
    _, comp_mask, scaled = _teacher_forced_logprobs(cfg, params, PROMPTS, trunc, 2, 1.5)
    allowed = np.asarray(truncation_mask(jnp.asarray(scaled.reshape(-1, scaled.shape[-1])),
                                         top_k=5, top_p=0.8)).reshape(scaled.shape)
    picked = np.take_along_axis(allowed, trunc.tokens[..., None], -1)[..., 0]
    assert picked[comp_mask].all()
    top1 = _generate(cfg, params, temperature=1.0, top_k=1, rng=4)
    np.testing.assert_array_equal(top1.tokens, _generate(cfg, params).tokens)


def test_sharded_generate_equals_unsharded(qwen3):
    """On 8 fake devices (data 2 x fsdp 2 x tensor 2), greedy generate from fsdp-sharded weights
    and sampled generate from the fsdp-free decode copy equal the unsharded runs; B·n = 6 rows is
    padded to a multiple of 4 and trimmed back."""
    from sdpo_jax.models import param_shardings
    from sdpo_jax.sharding import make_mesh, shard_params

    cfg, params = qwen3
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sharded = shard_params(params, param_shardings(cfg, mesh))
    copy = sampling.decode_weights_program(cfg.replace(compute_dtype="float32"), mesh, gathered=True)(sharded)
    assert all("fsdp" not in str(x.sharding.spec) for x in jax.tree.leaves(copy))
    assert any("tensor" in str(x.sharding.spec) for x in jax.tree.leaves(copy))
    prompts = PROMPTS[:3]
    for weights, kw in ((sharded, dict(temperature=0.0)), (copy, dict(temperature=1.0, rng=5))):
        ref = _generate(cfg, params, prompts=prompts, n=2, **kw)
        got = _generate(cfg, weights, prompts=prompts, n=2, mesh=mesh, **kw)
        assert got.tokens.shape == ref.tokens.shape == (6, 10)
        np.testing.assert_array_equal(got.tokens, ref.tokens)
        np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-5)


def test_set_up_programs_carry_shardings_and_donate_the_decode_state(qwen3):
    """The programs set-up makes for a mesh and a weight layout (`SamplingPrograms`) compile with the decode
    state's shardings (`decode_state_shardings`) in and out, donate the state (the prefill's cache is consumed),
    compile once per bucket, give the same tokens as `generate`'s default programs, and refuse weights
    placed in another layout than the one they were made for (no silent re-sharding)."""
    from sdpo_jax.models import param_shardings
    from sdpo_jax.sharding import make_mesh, shard_params

    cfg, params = qwen3
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sharded = shard_params(params, param_shardings(cfg, mesh))
    programs = sampling.SamplingPrograms(cfg, mesh, gathered=False)
    got = _generate(cfg, sharded, prompts=PROMPTS, n=2, temperature=1.0, rng=3, mesh=mesh, programs=programs)
    ref = _generate(cfg, sharded, prompts=PROMPTS, n=2, temperature=1.0, rng=3, mesh=mesh)
    np.testing.assert_array_equal(got.tokens, ref.tokens)
    assert programs.compile_counts() == {"prefill": 1, "decode": 1}
    _generate(cfg, sharded, prompts=[list(range(3, 15))] * 4, n=2, temperature=1.0, rng=4, mesh=mesh,
              programs=programs)  # the same bucket, other prompts and key: no compile
    assert programs.compile_counts() == {"prefill": 1, "decode": 1}

    ids, mask = sampling.pad_to_bucket(PROMPTS, BUCKETS, pad_id=0)
    rows = sampling._row_sharding(mesh, 2)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    stop_e, pad = jax.device_put(jnp.full((8,), -1, jnp.int32), replicated), jax.device_put(jnp.int32(0), replicated)
    key = jax.device_put(jax.random.key(0), replicated)
    spec = sampling.SamplingSpec(1.0, 0, 1.0)
    with jax.set_mesh(mesh):
        statics = (spec, 2, 10, jnp.dtype("float32"))
        state = programs.prefill(*statics, sharded, jax.device_put(ids, rows), jax.device_put(mask, rows), stop_e,
                                 pad, key)
        compiled = programs.decode.lower(spec, sharded, state, stop_e, pad, key).compile()
        expected = sampling.decode_state_shardings(programs.model_cfg, mesh)
        for name, value in state.items():
            for leaf in jax.tree.leaves(value):
                assert leaf.sharding.is_equivalent_to(expected[name], leaf.ndim), name
        out_state_shardings = compiled.output_shardings[0]
        assert out_state_shardings["cache"]["k"].is_equivalent_to(expected["cache"], 5)
        final, _ = programs.decode(spec, sharded, state, stop_e, pad, key)
        assert state["cache"]["k"].is_deleted() and not final["tokens"].is_deleted()
        copy = sampling.decode_weights_program(cfg, mesh, gathered=True)(sharded)
        with pytest.raises(ValueError, match="does not match the sharding"):
            programs.prefill(*statics, copy, jax.device_put(ids, rows), jax.device_put(mask, rows), stop_e, pad,
                             key)


def test_bad_input_errors(qwen3):
    """Clear errors: a prompt longer than the largest bucket (its index and length), a stop id
    outside the vocabulary, n < 1, an empty prompt."""
    cfg, params = qwen3
    with pytest.raises(ValueError, match="sequence 1 has length 17"):
        _generate(cfg, params, prompts=[[1], list(range(17))])
    with pytest.raises(ValueError, match="stop id 256 .* outside the vocabulary"):
        _generate(cfg, params, eos_ids=[2, 256])
    with pytest.raises(ValueError, match="n=0"):
        _generate(cfg, params, n=0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        _generate(cfg, params, prompts=[[1], []])
