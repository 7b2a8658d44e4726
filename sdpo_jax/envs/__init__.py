"""Environments: score(problem, completion, *, truncated=False) -> Score(reward, feedback, info).

Built-in: code (sandboxed LiveCodeBench / HumanEval tests), math (boxed answers + math-verify),
mcq (SciKnowEval <answer>X</answer>), tooluse (ToolAlpaca actions), synthetic (the demo task).
`get_env(name_or_import_path)` finds one; `Scorer` scores many in parallel.
"""

from sdpo_jax.envs.base import BUILTIN_ENVS, Score, Scorer, get_env

__all__ = ["BUILTIN_ENVS", "Score", "Scorer", "get_env"]
