"""`verify`: an export checked in a fresh process that has TensorFlow but not tf_fm.

This module launches the child (`verify_child.py`, run by path with
`python -I`, in an empty temporary working directory, without PYTHONPATH),
hands it the sample rows in a JSON payload file, reads its JSON result file
and compares the served outputs with the reference ones.
"""

import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping

import numpy as np

from tf_fm.export import verify_child
from tf_fm.export.common import (
    DEFAULT_SIGNATURE,
    METHOD_NAMES,
    VERIFY_BATCH_SIZE,
    VERIFY_SINGLE_ROWS,
    VerificationError,
)
from tf_fm.export.protos import describe_signatures, input_specs_of
from tf_fm.export.rows import Rows, json_columns, num_rows, typed_columns

CHILD = pathlib.Path(verify_child.__file__)
LOADERS = ["tf.saved_model.load", "tf.compat.v1.saved_model.loader.load"]


def run_without_tf_fm(args, timeout: float = 900) -> subprocess.CompletedProcess:
    """Runs `python -I *args` as the verification child runs: no PYTHONPATH, a clean cwd.

    Args:
        args: the interpreter's arguments (`[CHILD, payload, result]`).
        timeout: seconds. Defaults to 900.

    Returns:
        The `subprocess.CompletedProcess` (text stdout / stderr).
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="tf_fm_child_") as cwd:
        return subprocess.run(
            [sys.executable, "-I", *map(str, args)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def run_child(payload: dict, timeout: float) -> dict:
    """Runs the verification child on `payload`; returns its result dict."""
    with tempfile.TemporaryDirectory(prefix="tf_fm_verify_") as scratch:
        payload_file = pathlib.Path(scratch) / "payload.json"
        result_file = pathlib.Path(scratch) / "result.json"
        payload_file.write_text(json.dumps(payload), encoding="utf-8")
        try:
            done = run_without_tf_fm([CHILD, payload_file, result_file], timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise VerificationError(
                f"Verification of {payload['path']} timed out after {timeout} s."
            ) from error
        if done.returncode != 0 or not result_file.exists():
            raise VerificationError(
                f"The SavedModel at {payload['path']} failed in a TensorFlow-only process "
                f"(exit code {done.returncode}). Its stderr ends with:\n{done.stderr[-6000:]}"
            )
        return json.loads(result_file.read_text(encoding="utf-8"))


def _max_abs_diff(got, want):
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    want = np.asarray(want, dtype=np.float64).reshape(-1)
    if got.shape != want.shape:
        return math.inf
    if not (np.isfinite(got).all() and np.isfinite(want).all()):
        return math.inf
    return float(np.max(np.abs(got - want))) if got.size else 0.0


def _reference(expected, result, n):
    """Output name -> the `n` reference values (`expected`, else the child's TF2 batch)."""
    main = "probability" if "probability" in result["tf2_batch"] else "prediction"
    if expected is None:
        reference = {k: np.asarray(v)[:n] for k, v in result["tf2_batch"].items()}
    elif isinstance(expected, Mapping):
        reference = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in expected.items()}
    else:
        reference = {main: np.asarray(expected, dtype=np.float64).reshape(-1)}
    for name, values in reference.items():
        if len(values) != n:
            raise ValueError(f"`expected['{name}']` has {len(values)} values for {n} sample rows.")
    return reference, main


class _Comparison:
    """Max abs differences per check, and the checks over `atol`."""

    def __init__(self, atol):
        self.atol = atol
        self.diffs = {}
        self.problems = []

    def __call__(self, check, got, want):
        diff = _max_abs_diff(got, want)
        self.diffs[check] = diff
        if not diff <= self.atol:
            self.problems.append(f"{check}: max abs difference {diff:.3g} > atol={self.atol:g}")


def _compare_outputs(result, reference, main, batch_size, compare):
    n = len(next(iter(reference.values())))
    tiled = {k: v[np.arange(batch_size) % n] for k, v in reference.items()}
    first = {k: v[: min(n, VERIFY_SINGLE_ROWS)] for k, v in reference.items()}
    for loader in ("tf2", "tf1"):
        for name in reference:
            if name not in result[f"{loader}_single"]:
                compare.problems.append(f"{loader}: serving_default has no output '{name}'")
                continue
            single, batch = result[f"{loader}_single"][name], result[f"{loader}_batch"][name]
            compare(f"{loader} serving_default batch=1 {name}", single, first[name])
            compare(f"{loader} serving_default batch={batch_size} {name}", batch, tiled[name])
        if main not in tiled:
            continue
        if f"{loader}_classification" in result:
            scores = np.asarray(result[f"{loader}_classification"]["scores"])
            compare(f"{loader} classification scores[:, 1]", scores[:, 1], tiled[main])
            compare(f"{loader} classification scores[:, 0]", scores[:, 0], 1.0 - tiled[main])
        if f"{loader}_regression" in result:
            outputs = result[f"{loader}_regression"]["outputs"]
            compare(f"{loader} regression outputs", outputs, tiled[main])


def _serving_problems(result, signatures, batch_size):
    """What TF Serving's handlers require beyond the values: shapes, method names, no tf_fm."""
    problems = []
    if "tf1_classification_shapes" in result:
        got = result["tf1_classification_shapes"]
        if got.get("scores") != [batch_size, 2] or got.get("classes") != [batch_size, 2]:
            problems.append(f"classification output shapes {got}, want [{batch_size}, 2]")
    if "tf1_regression_shapes" in result:
        got = result["tf1_regression_shapes"].get("outputs")
        if got not in ([batch_size], [batch_size, 1]):
            problems.append(f"regression output shape {got}, want [{batch_size}] or [.., 1]")
    empty = result["tf1_empty_shapes"]
    if any(shape[0] != 0 for shape in empty.values()):
        problems.append(f"an empty batch gave output shapes {empty}")
    for name, sig in signatures.items():
        want = METHOD_NAMES.get(name, METHOD_NAMES[DEFAULT_SIGNATURE])
        if sig["method_name"] != want:
            problems.append(
                f"signature '{name}' has method_name {sig['method_name']!r}, want {want}"
            )
    if result.get("tf_fm_import_attempts"):
        problems.append(f"the SavedModel tried to import {result['tf_fm_import_attempts']}")
    return problems


def verify(
    path: str | os.PathLike,
    sample: Rows,
    expected: Mapping | np.ndarray | None = None,
    atol: float = 1e-5,
    batch_size: int = VERIFY_BATCH_SIZE,
    timeout: float = 900,
) -> dict:
    """Checks a SavedModel in a fresh process that imports TensorFlow but not tf_fm.

    In that process (`python -I`, a clean working directory, `tf_fm` made
    unimportable and checked absent from `sys.modules` at the end):

    * `tf.saved_model.load`: `serving_default` on the sample rows one at a
      time (batch 1, the first 16 rows) and as one batch of `batch_size`
      rows (the sample repeated); `classification` / `regression` on the same
      rows as serialized `tf.Example`s (NaN numerics left out of the Example);
    * the TF1 session loader (`tf.compat.v1.saved_model.loader.load`, feeding
      and fetching the signatures' tensor names: how TF Serving's C++ server
      runs a model): the same calls, an empty batch, and a replay of
      `assets.extra/tf_serving_warmup_requests` (TF Serving fails the load
      when a warm-up record fails).

    Every output is compared with `expected` (or, without it, with the TF2
    batch result), max abs difference <= `atol`; Classify / Regress outputs
    are checked for the shapes and dtypes TF Serving requires.

    Args:
        path: an exported version directory (`.../<version>`).
        sample: raw rows (DataFrame, dict of columns, list of row dicts,
            `tf.data.Dataset`); at most `batch_size` are used.
        expected: dict output name -> array over the sample rows (or one
            array: the `probability` / `prediction`). Defaults to None.
        atol: float. Defaults to 1e-5.
        batch_size: int. The large batch. Defaults to 1000.
        timeout: seconds for the child process. Defaults to 900.

    Returns:
        A report dict: rows, batch sizes, max abs differences per check,
        signatures, warm-up records replayed, seconds.

    Raises:
        VerificationError: with the failing check, or the child's stderr.
    """
    start = time.monotonic()
    path = pathlib.Path(path).resolve()
    specs = input_specs_of(path)
    columns = typed_columns(sample, specs, max_rows=batch_size)
    n = num_rows(columns)
    if n == 0:
        raise ValueError("`sample` has no rows.")
    payload = {
        "path": str(path),
        "rows": json_columns(columns, specs),
        "batch_size": int(batch_size),
        "single_rows": VERIFY_SINGLE_ROWS,
    }
    result = run_child(payload, timeout)
    signatures = describe_signatures(path)
    reference, main = _reference(expected, result, n)
    compare = _Comparison(atol)
    _compare_outputs(result, reference, main, batch_size, compare)
    problems = compare.problems + _serving_problems(result, signatures, batch_size)
    if problems:
        raise VerificationError(f"Verification of {path} failed:\n  " + "\n  ".join(problems))
    return {
        "rows": n,
        "batch_sizes": [1, int(batch_size)],
        "atol": atol,
        "max_abs_diff": compare.diffs,
        "loaders": list(LOADERS),
        "warmup_records_replayed": result.get("warmup_replayed", 0),
        "signatures": signatures,
        "process": "python -I, TensorFlow only (tf_fm unimportable, absent from sys.modules)",
        "child_timings": result.get("timings", {}),
        "seconds": round(time.monotonic() - start, 2),
    }
