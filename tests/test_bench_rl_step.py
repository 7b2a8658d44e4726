"""Smoke test of bench/rl_step.py (the whole-RL-step benchmark of bench/gpu.sh) at its tiny CPU size.

Runs the script as users do, in a subprocess with one CPU device, and checks the figures it writes:
not a timing claim, only that the benchmark measures what it says (finite per-phase times that fit
inside each step's wall time, a peer and finite ratios)."""
import json
import math
import subprocess
import sys
from tests.subprocess_env import REPO, job_env



def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_tiny_rl_step_prints_finite_phases_and_ratios(tmp_path):
    """Invariant: `bench/rl_step.py --size tiny --steps 3` drives train.run for 3 steps and reports,
    per step, finite non-negative generate/score/update seconds whose sum fits inside the step's wall
    time (step 1, which compiles, is the longest), medians over steps 2-3, the transformers peer's
    generate of the same shape (rows x new tokens), and finite positive ratios, also on stdout; the run
    saves no checkpoint (none during, none at the end) and no HF export."""
    out = tmp_path / "rl.json"
    proc = subprocess.run([sys.executable, "bench/rl_step.py", "--size", "tiny", "--steps", "3", "--json", str(out),
                           "--run_dir", str(tmp_path / "scratch")],
                          cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    steps = result["ours"]["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    for s in steps:
        for key in ("wall_s", "generate_s", "score_s", "update_s", "tokens_per_s_generate", "response_length"):
            assert _finite(s[key]) and s[key] >= 0, (key, s)
        phases = s["generate_s"] + s["score_s"] + s["update_s"]
        assert 0 < phases <= s["wall_s"] + 0.05, s  # the phases happen inside the step's interval
        assert 0 < s["response_length"] <= result["new_tokens"]
        assert _finite(s["loss"])
    assert steps[0]["wall_s"] > max(s["wall_s"] for s in steps[1:])  # step 1 holds the compiles
    median = result["median"]
    assert min(s["wall_s"] for s in steps[1:]) <= median["wall_s"] <= max(s["wall_s"] for s in steps[1:])
    peer = result["peer"]
    assert peer is not None and peer["tokens"] == result["rows"] * result["new_tokens"] == 8 * 16
    assert _finite(peer["generate_s"]) and peer["generate_s"] > 0
    for name in ("whole_step_over_hf_generate", "generate_time_hf_over_ours", "generate_tokens_per_s_ours_over_hf"):
        assert _finite(result["ratios"][name]) and result["ratios"][name] > 0, name
    assert math.isclose(result["ratios"]["whole_step_over_hf_generate"], median["wall_s"] / peer["generate_s"])
    assert "ratio ours whole RL step / HF generate alone" in proc.stdout
    # no checkpoint is written (checkpoint.every=0, checkpoint.at_end=False) and no HF export
    run_dir = tmp_path / "scratch" / "run"
    assert (run_dir / "metrics.jsonl").is_file()
    saved = [p.name for p in (run_dir / "checkpoints").iterdir()] if (run_dir / "checkpoints").exists() else []
    assert not any(name.isdigit() for name in saved) and not (run_dir / "hf_export").exists(), saved
