"""Teacher-prompt construction (docs/ALGORITHM.md §3): official texts, selection, masks, metrics, truncation.

The expected user texts below are literals copied from docs/ALGORITHM.md §3.4 (solution block
"\\nCorrect solution:\\n\\n" + demo, feedback block "\\nThe following is feedback from your
unsuccessful earlier attempt:\\n\\n" + fb, then "\\n\\nCorrectly solve the original question."),
never produced by the code under test.
"""
import numpy as np
import pytest

from sdpo_jax import reprompt
from sdpo_jax.tokenizer import build_demo_tokenizer

SYSTEM = "Answer with digits only."
PROMPT = "reverse 3 8 1 4"
HEADER_OFF = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def tok():
    return build_demo_tokenizer()


def chat(prompt=PROMPT):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def full_text(user_text, header=HEADER_OFF):
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user_text}<|im_end|>\n"
            + header)


# Group "a": sample 0 succeeds (with a think block), 1 fails with feedback, 2 succeeds.
# Group "b": sample 3 fails with feedback, 4 fails without feedback.
COMPLETIONS = ["<think>\nreverse it</think>\n\n4183", "3814", "4183 ", "1834", "48"]
REWARDS = [1.0, 0.0, 1.0, 0.0, 0.0]
FEEDBACKS = [None, "Wrong answer 3814. Position 1 should be 4.", "",
             "Wrong answer 1834. Position 1 should be 4.", "   "]
GROUPS = ["a", "a", "a", "b", "b"]


def build(tok, **kw):
    args = dict(messages_per_sample=[chat()] * 5, completions_text=COMPLETIONS, rewards=REWARDS,
                feedbacks=FEEDBACKS, group_ids=GROUPS)
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    return reprompt.build_teacher_prompts(tok, **args, **kw)


def test_official_texts_solution_feedback_both_neither(tok):
    """The teacher prompt is the official text for the four cases: solution only, feedback only,
    both (feedback_only_without_solution=False) and neither (the original prompt, mask 0)."""
    out = build(tok)
    solution = ("reverse 3 8 1 4\nCorrect solution:\n\n4183"
                "\n\nCorrectly solve the original question.")
    feedback = ("reverse 3 8 1 4\nThe following is feedback from your unsuccessful earlier "
                "attempt:\n\nWrong answer 1834. Position 1 should be 4."
                "\n\nCorrectly solve the original question.")
    neither = "reverse 3 8 1 4"
    assert tok.decode(out.ids[1]) == full_text(solution)  # feedback dropped: a solution exists
    assert tok.decode(out.ids[3]) == full_text(feedback)
    assert tok.decode(out.ids[4]) == full_text(neither)
    np.testing.assert_array_equal(out.sd_mask, [1, 1, 1, 1, 0])

    both_out = build(tok, feedback_only_without_solution=False)
    both = ("reverse 3 8 1 4\nCorrect solution:\n\n4183\nThe following is feedback from your "
            "unsuccessful earlier attempt:\n\nWrong answer 3814. Position 1 should be 4."
            "\n\nCorrectly solve the original question.")
    assert tok.decode(both_out.ids[1]) == full_text(both)
    assert both_out.texts[1] == both


def test_excludes_self_and_takes_first_sibling(tok):
    """A successful sample is shown the first OTHER success of its group (sample 0 gets sample 2's
    text, samples 1 and 2 get sample 0's); with self-exclusion off it is shown its own text; a lone
    success without feedback gets mask 0."""
    out = build(tok)
    assert out.texts[0] == ("reverse 3 8 1 4\nCorrect solution:\n\n4183 "
                            "\n\nCorrectly solve the original question.")
    assert "\n\n4183\n\nCorrectly" in out.texts[2]
    own = build(tok, dont_reprompt_on_self_success=False)
    assert own.texts[0] == ("reverse 3 8 1 4\nCorrect solution:\n\n4183"
                            "\n\nCorrectly solve the original question.")
    lone = reprompt.build_teacher_prompts(
        tok, [chat()] * 2, ["4183", "1"], [1.0, 0.0], [None, None], [7, 7])
    np.testing.assert_array_equal(lone.sd_mask, [0, 1])
    assert lone.texts[0] == PROMPT


def test_think_blocks_stripped_from_demonstrations(tok):
    """<think>...</think> and the whitespace after it are removed from demonstrations (several
    blocks too), and kept when remove_thinking=False."""
    assert reprompt.strip_thinking("<think>a\nb</think>\n\n x<think></think>y") == "xy"
    kept = build(tok, remove_thinking=False)
    assert "<think>\nreverse it</think>\n\n4183" in kept.texts[1]
    assert "<think>" not in build(tok).texts[1]


def test_threshold_and_feedback_flags(tok):
    """Success is reward >= threshold; include_feedback=False ignores all feedback; blank feedback
    is not available."""
    out = reprompt.build_teacher_prompts(
        tok, [chat()] * 3, ["a", "b", "c"], [0.5, 0.49, 0.0], [None, None, "fb"], [0, 0, 0],
        success_threshold=0.5)
    assert out.texts[1].startswith(PROMPT + "\nCorrect solution:\n\na\n")
    no_fb = build(tok, include_feedback=False)
    assert no_fb.metrics["feedback_available_fraction"] == 0.0
    np.testing.assert_array_equal(no_fb.sd_mask, [1, 1, 1, 0, 0])


def test_metrics(tok):
    """The five official metrics on a hand-counted batch."""
    m = build(tok).metrics
    assert m["success_group_fraction"] == pytest.approx(1 / 2)
    assert m["success_sample_fraction"] == pytest.approx(3 / 5)
    assert m["feedback_available_fraction"] == pytest.approx(2 / 5)
    assert m["feedback_used_fraction"] == pytest.approx(1 / 5)
    assert m["reprompt_sample_fraction"] == pytest.approx(4 / 5)


def test_enable_thinking_system_turn_and_token_ids(tok):
    """System messages are kept, enable_thinking is passed to the template, and completions given
    as token ids are decoded with skip_special_tokens."""
    ids = [tok("4183", add_special_tokens=False)["input_ids"] + [tok.eos_token_id], [5]]
    out = reprompt.build_teacher_prompts(tok, [chat()] * 2, ids, [1.0, 0.0], None, [0, 0],
                                         enable_thinking=True)
    text = tok.decode(out.ids[1])
    assert text == full_text("reverse 3 8 1 4\nCorrect solution:\n\n4183"
                             "\n\nCorrectly solve the original question.",
                             header="<|im_start|>assistant\n")


def test_truncation_trims_context_never_the_header(tok):
    """Over max_len, the demonstration / feedback text is cut (counted in num_trimmed) while the
    question, instruction and assistant header stay; impossible budgets raise naming the sample."""
    long_demo = "1 2 3 4 5 6 7 8 9 0 " * 60
    long_fb = "Position 3 should be 7. " * 60
    msgs = [chat()] * 3
    header_ids = tok(HEADER_OFF, add_special_tokens=False)["input_ids"]
    full = reprompt.build_teacher_prompts(tok, msgs, [long_demo, "x", "y"], [1, 0, 0],
                                          [None, None, long_fb], ["g", "g", "h"])
    assert full.num_trimmed == 0
    max_len = 120
    out = reprompt.build_teacher_prompts(tok, msgs, [long_demo, "x", "y"], [1, 0, 0],
                                         [None, None, long_fb], ["g", "g", "h"], max_len=max_len)
    assert out.num_trimmed == 2  # sample 1 (demo) and 2 (feedback); sample 0 has no context
    for i in (1, 2):
        assert max_len - 8 <= len(out.ids[i]) <= max_len
        assert out.ids[i][-len(header_ids):] == header_ids
        assert out.texts[i].startswith(PROMPT + "\n")
        assert out.texts[i].endswith("\n\nCorrectly solve the original question.")
        assert tok.decode(out.ids[i]) == full_text(out.texts[i])
    assert long_demo.startswith(out.texts[1].split("Correct solution:\n\n")[1].split("\n\nCorr")[0])
    # both blocks at once share the budget
    both = reprompt.build_teacher_prompts(tok, msgs[:2], [long_demo, "x"], [1, 0],
                                          [None, long_fb], ["g", "g"], max_len=max_len,
                                          feedback_only_without_solution=False)
    assert both.num_trimmed == 1 and len(both.ids[1]) <= max_len
    assert "Correct solution:\n\n1 2" in both.texts[1] and "attempt:\n\nPosition 3" in both.texts[1]
    with pytest.raises(ValueError, match=r"sample 1 \(group 'g'\).*max_len=40"):
        reprompt.build_teacher_prompts(tok, msgs, [long_demo, "x", "y"], [1, 0, 0],
                                       [None, None, None], ["g", "g", "h"], max_len=40)


def test_bad_inputs_raise_clear_errors(tok):
    """Length mismatches, a template without its field and a last message that is not the user
    turn raise ValueErrors that say what is wrong."""
    with pytest.raises(ValueError, match="len\\(rewards\\)=1"):
        reprompt.build_teacher_prompts(tok, [chat()] * 2, ["a", "b"], [1.0], None, [0, 0])
    with pytest.raises(ValueError, match="successful_previous_attempt"):
        reprompt.build_teacher_prompts(tok, [chat()], ["a"], [1.0], None, [0],
                                       solution_template="Solution: {solution}")
    with pytest.raises(ValueError, match="sample 0.*user turn"):
        reprompt.build_teacher_prompts(tok, [[{"role": "system", "content": "s"}]], ["a"], [1.0],
                                       None, [0])
