"""The run checkpointer's keep-last / keep-best policy (sdpo_jax/checkpoint.py) with fed metrics."""
import jax.numpy as jnp

from sdpo_jax.checkpoint import RunCheckpointer


def _save_run(run_dir, evaluations, *, steps=6, mode="max", max_to_keep=1):
    """Save steps 1..steps; `evaluations` maps a step to its eval/accuracy (the others carry no metrics)."""
    ckpt = RunCheckpointer(run_dir, max_to_keep=max_to_keep, async_save=False,
                           keep_best_metric="eval/accuracy", keep_best_mode=mode)
    for step in range(1, steps + 1):
        metrics = {"eval/accuracy": evaluations[step], "loss": 0.5} if step in evaluations else None
        ckpt.save(step, {"w": jnp.full((2,), float(step))}, {"step": step}, force=True, metrics=metrics)
    return ckpt


def test_keep_best_keeps_the_peak_and_the_latest_and_resume_takes_the_latest(tmp_path):
    """Invariant: evaluations at steps 2, 4, 6 peaking at 4 keep step 4 (best) and step 6 (latest,
    max_to_keep=1), delete the rest; a reopened checkpointer (a resumed run) still knows step 4 is best
    and restores the latest, step 6."""
    ckpt = _save_run(str(tmp_path), {2: 0.25, 4: 0.75, 6: 0.5})
    assert ckpt.all_steps() == [4, 6]
    assert ckpt.best_step() == 4
    ckpt.close()
    reopened = RunCheckpointer(str(tmp_path), max_to_keep=1, async_save=False, keep_best_metric="eval/accuracy")
    assert reopened.best_step() == 4 and reopened.latest_step() == 6
    state, meta = reopened.restore({"w": jnp.zeros((2,))})
    assert meta["step"] == 6 and float(state["w"][0]) == 6.0
    best_state, best_meta = reopened.restore({"w": jnp.zeros((2,))}, step=reopened.best_step())
    assert best_meta["step"] == 4 and float(best_state["w"][0]) == 4.0
    reopened.close()


def test_only_steps_with_an_evaluation_compete_for_best(tmp_path):
    """Invariant: steps saved without metrics never become the best, however late; with mode "min" the
    lowest evaluated value wins; the newest step survives even without metrics."""
    ckpt = _save_run(str(tmp_path), {3: 0.9, 5: 0.1}, steps=7, mode="min")
    assert ckpt.best_step() == 5
    assert ckpt.all_steps() == [5, 7]
    ckpt.close()
    no_eval = _save_run(str(tmp_path / "none"), {}, steps=3)
    assert no_eval.best_step() is None and no_eval.all_steps() == [3]
    no_eval.close()


def test_without_keep_best_the_latest_n_stay(tmp_path):
    """Invariant: keep-best off, metrics passed to save are ignored: the latest max_to_keep stay (the
    earlier behaviour) and there is no best step."""
    ckpt = RunCheckpointer(str(tmp_path), max_to_keep=2, async_save=False)
    for step in range(1, 5):
        ckpt.save(step, {"w": jnp.zeros((2,))}, {"step": step}, force=True, metrics={"eval/accuracy": 5.0 - step})
    assert ckpt.all_steps() == [3, 4] and ckpt.best_step() is None
    ckpt.close()
