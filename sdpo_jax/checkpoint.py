"""Orbax checkpoints of a run: train state (params, optimizer, teacher), rng, step, data iterator, config.

One `CheckpointManager` per run directory with three items:
  state  the train-state pytree (+ rng), restored into an abstract target carrying the *current* mesh's
         shardings, so a run can resume on a mesh of another shape;
  meta   JSON: step, the data-iterator state, counters, the config that wrote it.
  The grain iterator state is plain JSON (MapDataset iterators). Every process runs the same global
  iterator (train.py), so it is one state whatever the process count.

Several processes: every process calls `save` / `restore` (the state arrays are global and each
process writes its own shards; orbax writes the JSON meta from process 0 only). The directory must be
shared. A checkpoint written by P processes restores on any other count, one process included
(tests/test_multiprocess.py), because the restore target carries the current mesh's shardings.

Which checkpoints stay: the latest `max_to_keep`, and with `keep_best_metric` also the one with the best value
of that metric among the checkpoints saved with it (`save(..., metrics=...)`: the loop passes them at
evaluation steps only, so only those compete). Orbax's own `best_fn` with `max_to_keep` keeps the best N
*instead of* the latest N (orbax 0.12.8 `_get_default_preservation_policy`: BestN or LatestN), and keeps every
checkpoint without metrics unless told otherwise; so the policy here is its `AnyPreservationPolicy` of
LatestN(max_to_keep) and BestN(n=1, keep_checkpoints_without_metrics=False). `best_fn` is still set, because
orbax writes a step's metrics to disk (read back on resume) only when it is. `latest_step` (what resume
takes) is the newest step whatever its metric.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs with each leaf's current sharding: the restore target on the current mesh."""

    def one(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(one, tree)


class RunCheckpointer:
    """Save / restore a run's state under `<run_dir>/checkpoints`, asynchronously."""

    def __init__(self, run_dir: str, *, max_to_keep: int = 2, async_save: bool = True,
                 keep_best_metric: str | None = None, keep_best_mode: str = "max"):
        joined = os.path.join(run_dir, "checkpoints")
        self.directory = joined if "://" in joined else os.path.abspath(joined)  # gs:// stays as is
        self.keep_best_metric = keep_best_metric
        if keep_best_metric is None:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True)
        else:
            def metric(metrics: dict) -> float:
                return float(metrics[keep_best_metric])

            keep = checkpoint_managers.AnyPreservationPolicy([
                checkpoint_managers.LatestN(n=max_to_keep),
                checkpoint_managers.BestN(get_metric_fn=metric, reverse=keep_best_mode == "min", n=1,
                                          keep_checkpoints_without_metrics=False)])
            options = ocp.CheckpointManagerOptions(
                best_fn=metric, best_mode=keep_best_mode, preservation_policy=keep,
                enable_async_checkpointing=async_save, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the best keep_best_metric (None: keep-best off, or no step saved with it)."""
        return None if self.keep_best_metric is None else self._manager.best_step()

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False, metrics: dict | None = None) -> bool:
        """Start saving `state` (any pytree of arrays) and the JSON `meta` at `step`; with keep-best, the
        step's evaluation `metrics` (holding keep_best_metric) make it a candidate for the best."""
        if self.keep_best_metric is None or metrics is None or self.keep_best_metric not in metrics:
            metrics = None
        else:
            metrics = {self.keep_best_metric: float(metrics[self.keep_best_metric])}
        return self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force, metrics=metrics,
        )

    def restore(self, like_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore into the shapes, dtypes and shardings of `like_state` (the freshly built state)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to resume from in {self.directory}")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(like_state)), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def save_params(run_dir: str, params: Any, meta: dict, step: int = 0) -> str:
    """Write a params-only checkpoint (e.g. the demo's warm-started model); returns its directory."""
    ckpt = RunCheckpointer(run_dir, max_to_keep=1, async_save=False)
    try:
        ckpt.save(step, {"params": params}, meta, force=True)
    finally:
        ckpt.close()
    return ckpt.directory


def restore_params(run_dir: str, like_params: Any) -> tuple[Any, dict]:
    """Read a params-only checkpoint written by `save_params` into the layout of `like_params`."""
    ckpt = RunCheckpointer(run_dir, async_save=False)
    try:
        state, meta = ckpt.restore({"params": like_params})
    finally:
        ckpt.close()
    return state["params"], meta
