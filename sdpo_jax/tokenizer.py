"""The project's own offline tokenizer, plus tokenizer loading and chat templating helpers.

`build_demo_tokenizer` trains a small byte-level BPE (Qwen2-style pre-tokenisation, every digit its
own token) on text generated here, deterministically, and wraps it as a `transformers` fast
tokenizer with a Qwen3-style chat template. No file or network access is needed, so tests and the
CPU demo can run anywhere; `save_pretrained` output reloads with `AutoTokenizer.from_pretrained`.

`apply_chat_template` is the one way the project turns chat messages into prompt ids, for the demo
tokenizer and for real Hugging Face tokenizers alike (`enable_thinking` is passed through to the
template; templates that do not use it ignore it).
"""
from __future__ import annotations

import os
import random
from typing import Any, Sequence

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)  # control tokens: dropped by skip_special_tokens
THINK_TOKENS = (THINK_OPEN, THINK_CLOSE)  # single ids, kept when decoding (as in Qwen3)

# Qwen2/Qwen3 pre-tokenisation regex: letters runs, single digits, punctuation runs, whitespace.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen3-style: system/user/assistant turns; the generation prompt gets an empty think block when
# enable_thinking is False, nothing otherwise (Qwen3's default is thinking on).
DEMO_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

_WORDS = (
    "reverse sort add one to each digit the digits of number numbers answer question solve "
    "correct correctly solution feedback from your unsuccessful earlier attempt original wrong "
    "position positions should be is are expected got length too long short missing extra only "
    "output input format please reply with a an and or not of in on for it this that you your "
    "system user assistant think step by final result sum product count repeat swap rotate "
    "left right first last even odd double minus plus times equal digits string list test case "
    "error runtime time limit exceeded python code def return print if else while true false "
    "none class self import value values truncated yes no"
).split()

_OPS = ("reverse", "sort", "inc", "dec", "rotate", "max", "min", "first", "last",  # the synthetic task's ops
        "flip", "order", "up", "down", "spin", "top", "low", "head", "tail",  # and other names for them
        "zap", "mix", "pick", "turn", "move", "keep", "shift", "drop", "lift", "swap", "step", "hop", "fold", "grab",
        "cut")
_SENTENCES = (
    "Apply the ops left to right. Answer with digits only.",
    "Format error: answer with digits only, like 1 2 3 or 123; got",
    "Truncated attempt: the answer was cut off at the length limit.",
    "Answer with the digits only, then stop.",
    "The answer has 3 digits; it should have 4.",
    "Missing at the end:",
    "The following is feedback from your unsuccessful earlier attempt:",
    "Your answer is wrong.",
)


def _demo_corpus(seed: int = 0, num_lines: int = 4000) -> list[str]:
    """Deterministic training text: digit-string tasks, feedback-like sentences, chat scaffolding."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        kind = (0, 1, 2, 3, 4, 4, 5, 5, 5, 5)[rng.randrange(10)]  # 5: the synthetic task's feedback
        digits = " ".join(str(rng.randrange(10)) for _ in range(rng.randint(2, 8)))
        ops = " ".join(rng.choice(_OPS) for _ in range(rng.randint(1, 3)))
        if kind == 0:
            lines.append(f"{ops} {digits}")
        elif kind == 5 and rng.random() < 0.2:  # chat scaffolding, as the templates write it
            lines.append(f"{IM_START}user\n{ops} {digits}{IM_END}\n{IM_START}assistant\n")
        elif kind == 5:  # the synthetic env's default feedback
            attempt = digits.replace(" ", "")[:rng.randint(1, 3)]
            lines.append(f"Test case: {ops} {digits.replace(' ', '')} -> {rng.randrange(10)}. "
                         f"Your answer {attempt} is wrong; {ops} means {rng.choice(_OPS)} {rng.choice(_OPS)}.")
        elif kind == 4:
            lines.append(rng.choice(_SENTENCES))
        elif kind == 1:
            answer = "".join(str(rng.randrange(10)) for _ in range(rng.randint(2, 8)))
            pos, want = rng.randint(1, 8), rng.randrange(10)
            lines.append(f"Wrong answer {answer}. Position {pos} should be {want}.")
        elif kind == 2:
            lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) + ".")
        else:
            lines.append(
                "\nCorrect solution:\n\n" + digits.replace(" ", "")
                + "\n\nCorrectly solve the original question."
            )
    return lines


def _train_backend(vocab_size: int, seed: int):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(THINK_TOKENS),
        min_frequency=2,
        show_progress=False,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=12,
    )
    tok.train_from_iterator(_demo_corpus(seed), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tok


def build_demo_tokenizer(out_dir: str | os.PathLike | None = None, *, vocab_size: int = 512,
                         seed: int = 0):
    """Train the demo byte-level BPE (deterministic for `seed`) and return a fast HF tokenizer.

    The vocabulary holds the 256 byte symbols, the special tokens `<|endoftext|>` (also pad),
    `<|im_start|>`, `<|im_end|>` (eos), the non-special `<think>` / `</think>`, and merges up to
    `vocab_size`; digits are never merged, so each digit is one token. When `out_dir` is given the
    tokenizer is also written there with `save_pretrained`.
    """
    from transformers import PreTrainedTokenizerFast

    minimum = 256 + len(SPECIAL_TOKENS) + len(THINK_TOKENS)
    if not minimum + 16 <= vocab_size <= 4096:
        raise ValueError(
            f"build_demo_tokenizer: vocab_size={vocab_size} is outside [{minimum + 16}, 4096]; the "
            f"byte alphabet and special tokens alone take {minimum} ids (try 300-600).")
    backend = _train_backend(vocab_size, seed)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        unk_token=None,
        padding_side="left",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = DEMO_CHAT_TEMPLATE
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


class TokenizerError(ValueError):
    """The tokenizer cannot be loaded or used (`load_tokenizer`, `render_chat`); the message names the path or
    the message and what would work."""


def load_tokenizer(path_or_name: str | os.PathLike, **kwargs):
    """Return a tokenizer: "demo" builds the project's own one; anything else is a local directory
    loaded with `AutoTokenizer.from_pretrained` (offline: it never downloads)."""
    if str(path_or_name) == "demo":
        return build_demo_tokenizer(**kwargs)
    from transformers import AutoTokenizer

    path = os.fspath(path_or_name)
    if not os.path.isdir(path):
        raise TokenizerError(
            f"load_tokenizer: {path!r} is not a directory. Pass 'demo' for the built-in tokenizer or "
            "a local directory holding tokenizer.json / tokenizer_config.json (e.g. a downloaded "
            "checkpoint); hub names are not fetched.")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, **kwargs)
    if getattr(tokenizer, "pad_token_id", None) is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render_chat(tokenizer, messages: Sequence[dict[str, Any]], *, enable_thinking: bool,
                add_generation_prompt: bool = True) -> str:
    """The chat-templated text of `messages` (with `enable_thinking` passed to the template)."""
    if not getattr(tokenizer, "chat_template", None):
        raise TokenizerError(
            f"apply_chat_template: tokenizer {type(tokenizer).__name__} has no chat_template; use a "
            "chat/instruct checkpoint's tokenizer or load_tokenizer('demo').")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise TokenizerError(f"apply_chat_template: messages[{i}] = {message!r} needs 'role' and "
                             "'content' keys")
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking)


def apply_chat_template(tokenizer, messages: Sequence[dict[str, Any]], *, enable_thinking: bool,
                        add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the chat-templated `messages`.

    The text is rendered by the tokenizer's own template and encoded without adding special tokens
    again (templates such as Llama 3's already write their BOS), which is what `transformers` does.
    """
    text = render_chat(tokenizer, messages, enable_thinking=enable_thinking,
                       add_generation_prompt=add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
