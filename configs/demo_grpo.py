"""The CPU demo with GRPO instead of SDPO: same warm start, same budget, scalar rewards only.

    python -m sdpo_jax.main --config=configs/demo_grpo.py
"""

from configs import demo


def get_config():
    c = demo.get_config()
    c.run_dir = "runs/demo_grpo"
    c.loss.objective = "grpo"
    c.teacher.kind = "live"  # GRPO needs no teacher copy
    c.eval.min_gain_points = None  # the floor is the SDPO demo's
    return c
