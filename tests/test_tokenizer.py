"""The project's offline demo tokenizer and the chat-template helpers."""
import json

import pytest

from sdpo_jax import tokenizer as tk


@pytest.fixture(scope="module")
def demo_tok():
    return tk.build_demo_tokenizer()


MESSAGES = [
    {"role": "system", "content": "Answer with digits only."},
    {"role": "user", "content": "reverse 3 8 1 4"},
]


def test_build_is_deterministic_and_sized():
    """Two builds with the same seed give byte-identical tokenizer files and exactly vocab_size ids."""
    a = tk.build_demo_tokenizer(vocab_size=400)
    b = tk.build_demo_tokenizer(vocab_size=400)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 400
    assert max(a.get_vocab().values()) == 399


def test_digits_are_single_tokens(demo_tok):
    """Every digit is its own token, no vocabulary entry merges a digit with anything, and a digit
    task string encodes digit by digit."""
    vocab = demo_tok.get_vocab()
    for d in "0123456789":
        assert d in vocab
        assert demo_tok(d, add_special_tokens=False)["input_ids"] == [vocab[d]]
    merged_with_digit = [t for t in vocab if len(t) > 1 and any(c.isdigit() for c in t)]
    assert merged_with_digit == []
    ids = demo_tok("4183", add_special_tokens=False)["input_ids"]
    assert ids == [vocab["4"], vocab["1"], vocab["8"], vocab["3"]]
    # the synthetic task's op words (and their other names), after a space, are single tokens
    from sdpo_jax.envs import synthetic

    for word in (*synthetic.OPS, *synthetic.NAME_POOL):
        assert len(demo_tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, word


def test_special_tokens_and_roundtrip(demo_tok):
    """Special tokens are single ids (pad = <|endoftext|>, eos = <|im_end|>), <think> survives
    skip_special_tokens (as in Qwen3), and arbitrary unicode text round-trips exactly."""
    for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"):
        assert len(demo_tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    assert demo_tok.pad_token == "<|endoftext|>"
    assert demo_tok.eos_token == "<|im_end|>"
    text = "Hello, wörld! 日本語 \t tabs\n\nnew line {'a': [1, 2]} ```python\nprint(1)\n```"
    ids = demo_tok(text, add_special_tokens=False)["input_ids"]
    assert demo_tok.decode(ids) == text
    ids = demo_tok("<|im_start|><think>\nhmm</think>\n\n42<|im_end|>",
                   add_special_tokens=False)["input_ids"]
    assert demo_tok.decode(ids, skip_special_tokens=True) == "<think>\nhmm</think>\n\n42"


def test_chat_template_system_turn_and_enable_thinking(demo_tok):
    """The template keeps the system turn; enable_thinking=False appends Qwen3's empty think block
    to the generation prompt and True appends nothing; no generation prompt means no header."""
    off = tk.render_chat(demo_tok, MESSAGES, enable_thinking=False)
    on = tk.render_chat(demo_tok, MESSAGES, enable_thinking=True)
    base = ("<|im_start|>system\nAnswer with digits only.<|im_end|>\n"
            "<|im_start|>user\nreverse 3 8 1 4<|im_end|>\n")
    assert on == base + "<|im_start|>assistant\n"
    assert off == base + "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tk.render_chat(demo_tok, MESSAGES, enable_thinking=False,
                          add_generation_prompt=False) == base
    ids = tk.apply_chat_template(demo_tok, MESSAGES, enable_thinking=False)
    assert ids == demo_tok(off, add_special_tokens=False)["input_ids"]
    assert ids[0] == demo_tok.convert_tokens_to_ids("<|im_start|>")


def test_save_and_reload_offline(tmp_path, demo_tok):
    """save_pretrained output reloads with AutoTokenizer.from_pretrained (offline) and gives the same
    ids, chat template, pad token and left padding; load_tokenizer reads the same directory."""
    from transformers import AutoTokenizer

    out = tmp_path / "tok"
    tk.build_demo_tokenizer(out)
    reloaded = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    via_loader = tk.load_tokenizer(out)
    for tok in (reloaded, via_loader):
        assert len(tok) == len(demo_tok)
        assert tok.pad_token_id == demo_tok.pad_token_id
        assert tk.apply_chat_template(tok, MESSAGES, enable_thinking=False) == \
            tk.apply_chat_template(demo_tok, MESSAGES, enable_thinking=False)
        batch = tok(["1 2 3", "9"], padding=True, add_special_tokens=False)
        assert batch["input_ids"][1][0] == tok.pad_token_id  # left padded
        assert batch["attention_mask"][1][-1] == 1
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg.get("eos_token") == "<|im_end|>"


def test_load_tokenizer_errors_and_demo():
    """load_tokenizer('demo') builds the demo tokenizer; a missing path raises a clear error (it is
    never treated as a hub name)."""
    assert len(tk.load_tokenizer("demo")) == 512
    with pytest.raises(tk.TokenizerError, match="not a directory"):
        tk.load_tokenizer("/nonexistent/Qwen3-8B")
    with pytest.raises(ValueError, match="vocab_size"):
        tk.build_demo_tokenizer(vocab_size=100)


def test_apply_chat_template_with_template_without_enable_thinking():
    """A tokenizer whose template ignores enable_thinking (e.g. Llama-style with its own BOS text)
    still works, and the BOS written by the template is not doubled."""
    tok = tk.build_demo_tokenizer()
    tok.chat_template = ("<|endoftext|>{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}"
                         "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
    ids = tk.apply_chat_template(tok, MESSAGES, enable_thinking=True)
    assert ids.count(tok.pad_token_id) == 1
    assert tok.decode(ids).endswith("[assistant]")
    with pytest.raises(tk.TokenizerError, match="role"):
        tk.apply_chat_template(tok, [{"content": "x"}], enable_thinking=False)
