"""`kill -9` of `tf-fm train --export` at seeded random moments; the identical rerun finishes.

Each case starts the command in its own process, SIGKILLs it after a delay
drawn (seeded) over the length of an uninterrupted run, then runs the same
command again and checks the run directory is complete and the export
directory holds exactly one published version, which verifies in a
TensorFlow-only process (the export's own verification, repeated by
`tf-fm verify`).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

# Kill moments per test run (bounded: each costs two short trainings); more with
# TF_FM_KILLS=N, other moments with TF_FM_KILL_SEED=S (the counts in tests/README.md).
KILLS = int(os.environ.get("TF_FM_KILLS", "3"))
KILL_SEED = int(os.environ.get("TF_FM_KILL_SEED", "12"))
TF_FM = (sys.executable, "-c", "import sys; from tf_fm.cli import main; sys.exit(main())")
RUN_FILES = ("model.keras", "metrics.json", "run.json", "schema.json", "history.json")


def _libsvm(path, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        ids = sorted(rng.choice(50, size=rng.integers(1, 5), replace=False))
        lines.append(f"{int(rng.random() < 0.4)} " + " ".join(f"{i}:1" for i in ids))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _command(data, valid, out, export_dir):
    return [
        *TF_FM,
        *("train", "--data", data, "--valid", valid),
        *("--format", "libsvm", "--model", "fm", "--epochs", "3", "--batch-size", "256"),
        *("--output", str(out), "--export", str(export_dir)),
    ]


def _run(command, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def _killed_after(command, delay):
    """Starts `command`, SIGKILLs its process group after `delay` s; its exit code."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait(timeout=60)


def _check_finished(out, export_dir):
    from tf_fm import export

    missing = [name for name in RUN_FILES if not (out / name).is_file()]
    assert not missing, f"run directory lacks {missing}"
    json.loads((out / "metrics.json").read_text())
    assert export.list_versions(export_dir) == [1]
    leftovers = [p.name for p in export_dir.iterdir() if p.name.startswith(".tmp-")]
    assert not leftovers, f"staging directories left: {leftovers}"
    assert export.read_metadata(export_dir / "1")["source"]


def test_sigkill_at_random_moments_then_rerun_finishes(tmp_path):
    data = _libsvm(tmp_path / "train.txt")
    valid = _libsvm(tmp_path / "valid.txt", n=600, seed=1)
    start = time.monotonic()
    full = _run(_command(data, valid, tmp_path / "full", tmp_path / "full_serving"))
    assert full.returncode == 0, full.stderr
    length = time.monotonic() - start
    _check_finished(tmp_path / "full", tmp_path / "full_serving")

    rng = np.random.default_rng(KILL_SEED)
    outcomes = []
    for case, fraction in enumerate(np.sort(rng.uniform(0.2, 1.0, size=KILLS))):
        out, export_dir = tmp_path / f"run{case}", tmp_path / f"serving{case}"
        command = _command(data, valid, out, export_dir)
        code = _killed_after(command, delay=fraction * length)
        rerun = _run(command)
        assert rerun.returncode == 0, f"kill at {fraction:.2f} of the run: {rerun.stderr}"
        _check_finished(out, export_dir)
        outcomes.append((round(float(fraction), 2), code))
    verify = _run([*TF_FM, "verify", str(tmp_path / "serving0" / "1")])
    assert verify.returncode == 0, verify.stderr
    print("kill moment (fraction of an uninterrupted run), exit code:", outcomes)
    # At least one kill must have landed before the command ended by itself.
    assert any(code == -signal.SIGKILL for _, code in outcomes), outcomes
