"""Write the paper's LiveCodeBench v6 train and eval files (configs/lcb_qwen3_8b.py's data).

    python -m sdpo_jax.tools.prepare_lcb --out /data/lcb_v6
    python -m sdpo_jax.tools.prepare_lcb --out /data/lcb_v6 --source DIR   # test*.jsonl already fetched

Source: `livecodebench/code_generation_lite` at revision `refs/pr/6`, its raw `test*.jsonl` files
(test.jsonl, test2.jsonl, ... read in that order) fetched with `huggingface_hub` (the `datasets`
versions this project pins refuse the repository's loading script). As the official SDPO code:
questions with contest date in [2025-02-01, 2025-05-01) (131 at that revision), private tests only
(decoded with the no-globals unpickler of `sdpo_jax.envs.code`), 6 s per test, the signature line
for functional questions (`sdpo_jax.envs.code.from_livecodebench`). `eval.jsonl` keeps every test;
`train.jsonl` the same questions with half of each one's tests (at least one), chosen as the official
`data/split_tests.py` does: numpy's legacy generator seeded 0, one `choice(n, max(1, int(n / 2)),
replace=False)` per question in file order, indices sorted (`paper_test_split`). Prints and writes
`summary.json`: questions, tests and test types per split. Exit 0 written, 2 bad input or no data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys

import numpy as np

from sdpo_jax import cli

REPO_ID = "livecodebench/code_generation_lite"
REVISION = "refs/pr/6"
WINDOW = ("2025-02-01", "2025-05-01")  # contest dates [start, end) of the paper's LCBv6 questions
TRAIN_FRACTION = 0.5
SPLIT_SEED = 0


class PrepareError(ValueError):
    """Input that cannot become the paper's files; the message says what to fetch or fix."""


def _test_file_order(name: str) -> int:
    """test.jsonl -> 1, test2.jsonl -> 2, ...: the order the repository's loading script reads them."""
    match = re.fullmatch(r"test(\d*)\.jsonl", os.path.basename(name))
    return int(match.group(1) or 1) if match else -1


def fetch_test_files(revision: str = REVISION) -> list[str]:
    """Local paths of the repository's test*.jsonl at `revision`, downloaded (or taken from the Hugging Face
    cache) with huggingface_hub, in reading order. Raises PrepareError saying what to fetch when offline."""
    try:
        from huggingface_hub import hf_hub_download, list_repo_files

        names = [f for f in list_repo_files(REPO_ID, repo_type="dataset", revision=revision) if _test_file_order(f) > 0]
        if not names:
            raise PrepareError(f"{REPO_ID}@{revision} has no test*.jsonl files")
        return [hf_hub_download(REPO_ID, name, repo_type="dataset", revision=revision)
                for name in sorted(names, key=_test_file_order)]
    except PrepareError:
        raise
    except Exception as err:  # offline, HF_HUB_OFFLINE=1, no access
        raise PrepareError(
            f"could not fetch {REPO_ID}@{revision} ({type(err).__name__}: {err}). On a machine with access run\n"
            f"  huggingface-cli download {REPO_ID} --repo-type dataset --revision {revision} "
            "--include 'test*.jsonl' --local-dir DIR\nthen copy DIR here and pass --source DIR") from err


def local_test_files(source: str) -> list[str]:
    """The test*.jsonl files in directory `source`, in reading order."""
    if not os.path.isdir(source):
        raise PrepareError(f"--source {source!r} is not a directory")
    names = sorted((f for f in os.listdir(source) if _test_file_order(f) > 0), key=_test_file_order)
    if not names:
        raise PrepareError(f"--source {source!r} holds no test*.jsonl files (test.jsonl, test2.jsonl, ...)")
    return [os.path.join(source, f) for f in names]


def read_rows(paths: list[str]) -> list[dict]:
    """Every row of the files, in order; a line that is not a JSON object names its file:line."""
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise PrepareError(f"{path}:{number}: invalid JSON ({err.msg})") from err
                if not isinstance(row, dict):
                    raise PrepareError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
                rows.append(dict(row, _where=f"{path}:{number}"))
    return rows


def contest_date(row: dict) -> dt.datetime:
    value = row.get("contest_date")
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError as err:
        raise PrepareError(f"{row['_where']}: column 'contest_date' is {value!r}, not an ISO date") from err


def in_window(rows: list[dict], start: str, end: str) -> list[dict]:
    lo, hi = dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)
    return [r for r in rows if lo <= contest_date(r) < hi]


def to_problems(rows: list[dict]) -> list[dict]:
    """`from_livecodebench` per row (private tests, 6 s each); a row it refuses names its file:line."""
    from sdpo_jax.envs.code import from_livecodebench

    problems = []
    for row in rows:
        try:
            problems.append(from_livecodebench({k: v for k, v in row.items() if k != "_where"}))
        except (KeyError, ValueError, TypeError) as err:
            raise PrepareError(f"{row['_where']}: {err}") from err
    return problems


def paper_test_split(problems: list[dict], *, seed: int = SPLIT_SEED, fraction: float = TRAIN_FRACTION) -> list[dict]:
    """The training copies: each problem keeps `max(1, int(n * fraction))` of its n tests, drawn as the
    official `data/split_tests.py` draws them (one legacy numpy generator seeded `seed`, one
    `choice(n, keep, replace=False)` per problem in order, indices sorted)."""
    rng = np.random.RandomState(seed)
    out = []
    for problem in problems:
        tests = problem["tests"]
        n = len(tests["inputs"])
        keep = np.sort(rng.choice(n, size=max(1, int(n * fraction)), replace=False))
        reduced = dict(tests, inputs=[tests["inputs"][i] for i in keep], outputs=[tests["outputs"][i] for i in keep])
        out.append(dict(problem, tests=reduced))
    return out


def summarize(problems: list[dict]) -> dict:
    counts = [len(p["tests"]["inputs"]) for p in problems]
    types = {}
    for p in problems:
        types[p["tests"]["type"]] = types.get(p["tests"]["type"], 0) + 1
    return {"questions": len(problems), "tests": int(sum(counts)),
            "tests_per_question": {"min": min(counts), "mean": round(float(np.mean(counts)), 2), "max": max(counts)},
            "test_types": types}


def _write_jsonl(path: str, problems: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in problems)


def prepare(out_dir: str, *, source: str | None = None, revision: str = REVISION, start: str = WINDOW[0],
            end: str = WINDOW[1], seed: int = SPLIT_SEED) -> dict:
    """Write out_dir/{train,eval}.jsonl and summary.json; return the summary."""
    paths = local_test_files(source) if source else fetch_test_files(revision)
    rows = read_rows(paths)
    chosen = in_window(rows, start, end)
    if not chosen:
        raise PrepareError(f"no question has a contest date in [{start}, {end}) among the {len(rows)} rows of "
                           f"{len(paths)} file(s)")
    evaluation = to_problems(chosen)
    train = paper_test_split(evaluation, seed=seed)
    os.makedirs(out_dir, exist_ok=True)
    _write_jsonl(os.path.join(out_dir, "train.jsonl"), train)
    _write_jsonl(os.path.join(out_dir, "eval.jsonl"), evaluation)
    summary = {"source": source or f"{REPO_ID}@{revision}", "files": [os.path.basename(p) for p in paths],
               "rows_read": len(rows), "contest_dates": [start, end], "split_seed": seed,
               "train": summarize(train), "eval": summarize(evaluation)}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for train.jsonl, eval.jsonl, summary.json")
    parser.add_argument("--source", default=None, help="a directory holding the fetched test*.jsonl (offline)")
    parser.add_argument("--revision", default=REVISION)
    parser.add_argument("--start", default=WINDOW[0], help="first contest date kept (ISO)")
    parser.add_argument("--end", default=WINDOW[1], help="first contest date no longer kept (ISO)")
    parser.add_argument("--seed", type=int, default=SPLIT_SEED, help="the test split's numpy seed")
    args = parser.parse_args(argv)
    return cli.exit_code(lambda: _prepare_and_report(args))


def _prepare_and_report(args) -> int:
    summary = prepare(args.out, source=args.source, revision=args.revision, start=args.start, end=args.end,
                      seed=args.seed)
    for split in ("train", "eval"):
        s = summary[split]
        print(f"{split}: {s['questions']} questions, {s['tests']} tests ({s['tests_per_question']['min']}-"
              f"{s['tests_per_question']['max']} per question, mean {s['tests_per_question']['mean']}), "
              f"types {s['test_types']}")
    print(f"wrote {args.out}/train.jsonl, eval.jsonl, summary.json (from {summary['rows_read']} rows of "
          f"{', '.join(summary['files'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
