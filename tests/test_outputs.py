"""What a run writes besides metrics: sample logs, the keep-best checkpoint, and every output on a gs://
run directory. The runs are in process (the demo config with test_train_loop's TINY overrides), so the test
sees the batch each step trained on."""
import ast
import json
import os

import numpy as np
import pytest
from etils.epath import testing as epath_testing

import configs.demo
from sdpo_jax import batch as batch_lib
from sdpo_jax import config as config_lib
from sdpo_jax import rollout, setup, train
from sdpo_jax.checkpoint import RunCheckpointer
from sdpo_jax.envs import synthetic
from sdpo_jax.logging import read_jsonl, read_tensorboard_texts
from tests.test_train_loop import TINY


def _tiny_config(run_dir, *extra):
    """configs/demo.py with the command-line overrides TINY + extra applied as main.py would."""
    cfg = configs.demo.get_config()
    for flag in (*TINY, *extra):
        dotted, text = flag.removeprefix("--config.").split("=", 1)
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *groups, leaf = dotted.split(".")
        node = cfg
        for group in groups:
            node = node[group]
        node[leaf] = value
    cfg.run_dir = run_dir
    config_lib.validate(cfg)
    return cfg


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """A 3-step run with samples every step, an evaluation at step 2, a checkpoint every step (one kept)
    and keep-best on eval/accuracy; records each step's scorer inputs and the batch it trained on."""
    run_dir = str(tmp_path_factory.mktemp("outputs") / "run")
    cfg = _tiny_config(run_dir, "--config.train.steps=3", "--config.logging.samples_every=1",
                       "--config.logging.samples_rows=3", "--config.logging.tensorboard=True",
                       "--config.eval.every=2", "--config.eval.at_start=False", "--config.data.eval_prompts=2",
                       "--config.eval.n=2", "--config.checkpoint.max_to_keep=1",
                       "--config.checkpoint.keep_best_metric=eval/accuracy")
    scored, built = [], []
    real_score_rows, real_build = rollout.score_rows, batch_lib.build

    def score_rows(actor, row_problems, texts, truncated):
        scored.append((list(row_problems), list(texts), list(truncated)))
        return real_score_rows(actor, row_problems, texts, truncated)

    def build(roll, tokenizer, settings):
        out = real_build(roll, tokenizer, settings)
        built.append(out[0])
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rollout, "score_rows", score_rows)
        patch.setattr(batch_lib, "build", build)
        run = setup.build_run(cfg)
        tokenizer = run.actor.tokenizer
        assert train.loop(run) == 0
    return run_dir, cfg, tokenizer, scored, built


def test_samples_hold_the_teacher_prompt_and_feedback_the_step_trained_on(recorded_run):
    """Invariant: samples.jsonl has logging.samples_rows records per step; each record's teacher_prompt is
    the detokenised teacher_prompt_ids row (mask 1) of the batch that step trained on, its prompt the
    prompt_ids row, and its feedback what the environment's score() returns for that row's problem and
    completion (recomputed here); some record carries real feedback; TensorBoard holds the same text."""
    run_dir, cfg, tokenizer, scored, built = recorded_run
    records = read_jsonl(os.path.join(run_dir, "samples.jsonl"))
    assert [r["step"] for r in records] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    rollout_calls = [call for call in scored if len(call[1]) == len(built[0].rewards)]  # not the evaluation's
    assert len(rollout_calls) == len(built) == 3
    options = cfg.env.options.to_dict()
    for record in records:
        batch = built[record["step"] - 1]
        row = record["row"]
        teacher_ids = np.asarray(batch.teacher_prompt_ids[row])[np.asarray(batch.teacher_prompt_mask[row]) == 1]
        assert record["teacher_prompt"] == tokenizer.decode(teacher_ids.tolist(), skip_special_tokens=False)
        prompt_ids = np.asarray(batch.prompt_ids[row])[np.asarray(batch.prompt_mask[row]) == 1]
        assert record["prompt"] == tokenizer.decode(prompt_ids.tolist(), skip_special_tokens=False)
        problems, texts, truncated = rollout_calls[record["step"] - 1]
        assert record["completion"] == texts[row]
        score = synthetic.score(problems[row], texts[row], truncated=truncated[row], **options)
        assert record["feedback"] == score.feedback and record["reward"] == score.reward
        assert record["self_distilled"] == bool(batch.sd_mask[row])
    assert any(r["feedback"] for r in records), "no record with feedback: the check above proved nothing"
    with_feedback = [r for r in records if r["teacher_context"] == "feedback"]
    assert all(r["feedback"].split(".")[0] in r["teacher_prompt"] for r in with_feedback)
    events = os.listdir(os.path.join(run_dir, "tensorboard"))
    texts = read_tensorboard_texts(os.path.join(run_dir, "tensorboard", events[0]))
    assert [step for step, _ in texts] == [1, 2, 3]
    assert records[-1]["completion"] in texts[-1][1]["samples"]


def test_keep_best_saves_the_evaluation_step_and_the_latest(recorded_run):
    """Invariant: with keep_best_metric and max_to_keep=1 a 3-step run evaluated at step 2 keeps step 2 (the
    only step with an evaluation, saved with its eval/accuracy) and step 3 (the latest); step 1 is gone; a
    resumed checkpointer takes step 3."""
    run_dir, cfg, _, _, _ = recorded_run
    directory = os.path.join(run_dir, "checkpoints")
    assert sorted(int(d) for d in os.listdir(directory) if d.isdigit()) == [2, 3]
    metrics = json.loads(open(os.path.join(directory, "2", "metrics", "metrics")).read())
    evaluated = [r for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if "eval/accuracy" in r]
    assert [r["step"] for r in evaluated] == [2] and metrics == {"eval/accuracy": evaluated[0]["eval/accuracy"]}
    assert not os.path.exists(os.path.join(directory, "3", "metrics"))
    reopened = RunCheckpointer(run_dir, max_to_keep=1, keep_best_metric="eval/accuracy")
    assert reopened.best_step() == 2 and reopened.latest_step() == 3
    reopened.close()


def _bucket_mapped_to(local_root):
    """mock_epath functions that map gs://bucket/... onto local_root/... (the OS backend underneath; local
    paths pass through)."""
    def local(path):
        path = os.fspath(path)
        if not path.startswith("gs://"):
            return path
        assert path.startswith("gs://bucket"), path
        return os.path.join(local_root, path.removeprefix("gs://bucket").lstrip("/"))

    def one_path(original, path, *args, **kwargs):
        return original(local(path), *args, **kwargs)

    def two_paths(original, path, dst, *args, **kwargs):
        return original(local(path), local(dst), *args, **kwargs)

    def walk(original, top, **kwargs):
        for root, dirs, files in original(local(top), **kwargs):
            yield "gs://bucket/" + os.path.relpath(root, local_root), dirs, files

    def glob(original, pattern):
        return ["gs://bucket/" + os.path.relpath(p, local_root) for p in original(local(pattern))]

    names = ("exists", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rmtree", "stat")
    return dict({name: one_path for name in names}, copy=two_paths, rename=two_paths, replace=two_paths,
                walk=walk, glob=glob)


def test_every_output_lands_in_a_gs_run_dir(tmp_path):
    """Invariant: with run_dir=gs://bucket/run (etils.epath mocked onto a local directory) a 2-step run
    writes metrics.jsonl (both steps), TensorBoard events (scalars and sample text), samples.jsonl,
    evals.jsonl, config.json, the plot and the Hugging Face export (config, weights, tokenizer) under the
    bucket; nothing lands in the working directory's gs: folder. Orbax reaches GCS with its own client,
    past epath, so this run's checkpointer (unused: no checkpoint is saved) opens a local directory."""
    cfg = _tiny_config("gs://bucket/run", "--config.train.steps=2", "--config.logging.samples_every=1",
                       "--config.logging.tensorboard=True", "--config.logging.plot=True",
                       "--config.checkpoint.export_hf_at_end=True", "--config.checkpoint.every=0",
                       "--config.checkpoint.at_end=False", "--config.eval.every=2", "--config.eval.at_start=False",
                       "--config.data.eval_prompts=2", "--config.eval.n=2")
    real_checkpointer = setup.ckpt_lib.RunCheckpointer
    with epath_testing.mock_epath(**_bucket_mapped_to(str(tmp_path))), pytest.MonkeyPatch.context() as patch:
        patch.setattr(setup.ckpt_lib, "RunCheckpointer",
                      lambda run_dir, **kwargs: real_checkpointer(str(tmp_path / "local"), **kwargs))
        assert train.loop(setup.build_run(cfg)) == 0
    run = tmp_path / "run"
    assert [r["step"] for r in read_jsonl(str(run / "metrics.jsonl"))] == [1, 2]
    assert [r["step"] for r in read_jsonl(str(run / "samples.jsonl"))] == [1] * 4 + [2] * 4
    assert [r["step"] for r in read_jsonl(str(run / "evals.jsonl"))] == [2]
    assert json.loads((run / "config.json").read_text())["run_dir"] == "gs://bucket/run"
    (events,) = (run / "tensorboard").iterdir()
    assert [step for step, _ in read_tensorboard_texts(str(events))] == [1, 2]
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (run / "hf_export" / name).stat().st_size > 0, name
    assert not os.path.exists("gs:"), "an output bypassed epath and was written to ./gs:/"
