"""The CPU demo with ANSWER-REVEALING feedback: "Wrong answer 3; expected 2 (positions 1 wrong)."

    python -m sdpo_jax.main --config=configs/demo_answer_feedback.py

Not the paper's rich-feedback setting: the feedback states this question's answer, so the self-teacher
only has to copy it, and the gain measures copying a label out of the context (the regime the paper
switches off for tool use because the feedback would leak the answer). Kept for comparison with
configs/demo.py, whose feedback never states the answer. Its own warm start directory: the warm start
reads the feedback too.
"""

from configs import demo


def get_config():
    c = demo.get_config()
    c.run_dir = "runs/demo_answer_feedback"
    c.env.options.feedback_style = "expected"
    c.checkpoint.warm_start_dir = "runs/demo_answer_feedback_warm_start"
    c.eval.min_gain_points = None  # the floor is the default demo's
    return c
