"""Versions and publishing: `export_saved_model` writes, verifies, then renames into place.

A model's base directory (`saved_models/<name>`, TF Serving's
`--model_base_path`) holds one directory per version, all digits. A new
version is written to a hidden sibling (`.tmp-<version>-<pid>-...`, which TF
Serving ignores), verified there, and published by one `rename`; on any
failure the staging directory is removed and nothing is published. A
process killed mid-export cannot clean up: the next export removes staging
directories whose process is gone.
"""

import os
import pathlib
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping

import keras
import numpy as np

from tf_fm.export.common import (
    ASSETS_EXTRA,
    MAX_WARMUP_RECORDS,
    VERIFY_BATCH_SIZE,
    WARMUP_FILENAME,
    ExportError,
)
from tf_fm.export.metadata import build_metadata, write_metadata
from tf_fm.export.protos import describe_signatures, set_method_names
from tf_fm.export.requests import write_warmup
from tf_fm.export.rows import Rows, num_rows, typed_columns
from tf_fm.export.servable import Servable
from tf_fm.export.verification import verify
from tf_fm.schema import FeatureSchema

_VERSION_RE = re.compile(r"[0-9]+")


_STAGING_RE = re.compile(r"\.tmp-[0-9]+-([0-9]+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(export_dir: str | os.PathLike) -> list[pathlib.Path]:
    """Removes the staging directories of exports whose process is gone (killed).

    A staging directory is named `.tmp-<version>-<pid>-<random>`; one whose
    process is alive is never touched (another export is writing it).

    Returns:
        The directories removed.
    """
    removed = []
    for path in pathlib.Path(export_dir).glob(".tmp-*"):
        match = _STAGING_RE.match(path.name)
        if path.is_dir() and match and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def list_versions(export_dir: str | os.PathLike) -> list[int]:
    """The published versions (all-digit subdirectories) of `export_dir`, ascending."""
    export_dir = pathlib.Path(export_dir)
    if not export_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in export_dir.iterdir() if p.is_dir() and _VERSION_RE.fullmatch(p.name)
    )


def _resolve_version(export_dir, version):
    if version is None:
        versions = list_versions(export_dir)
        return versions[-1] + 1 if versions else 1
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(f"`version` must be a non-negative integer. Received: {version!r}")
    return int(version)


def _target(export_dir, version, overwrite):
    """(version, its directory): the next version by default; an existing one needs overwrite."""
    version = _resolve_version(export_dir, version)
    target = export_dir / str(version)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"Version {version} already exists at {target}; pass overwrite=True or "
            "leave `version` unset for the next one."
        )
    return version, target


def _check_warmup_rows(warmup_rows):
    warmup_rows = int(warmup_rows)
    if not 0 <= warmup_rows <= MAX_WARMUP_RECORDS:
        raise ValueError(
            f"`warmup_rows` must be in [0, {MAX_WARMUP_RECORDS}] (TF Serving fails to load a "
            f"model with more warm-up records). Received: {warmup_rows}"
        )
    return warmup_rows


def _publish(staging, target, overwrite):
    """Renames the verified staging directory to `target` (one rename: atomic)."""
    if target.exists():
        if not overwrite:
            raise FileExistsError(
                f"Version {target.name} already exists at {target}; pass overwrite=True "
                "or let the version default to the next one."
            )
        retired = target.with_name(f".old-{target.name}-{uuid.uuid4().hex[:8]}")
        os.rename(target, retired)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(retired, target)
            raise
        shutil.rmtree(retired, ignore_errors=True)
        return
    try:
        os.rename(staging, target)
    except OSError as error:
        raise FileExistsError(
            f"Could not publish version {target.name}: {target} appeared meanwhile ({error})."
        ) from error


def _sample_columns(servable, sample):
    """(typed sample columns, their in-memory outputs); synthetic rows without a sample."""
    if sample is None:
        columns = servable.synthetic_columns()
    else:
        columns = typed_columns(sample, servable.input_specs, max_rows=VERIFY_BATCH_SIZE)
    if num_rows(columns) == 0:
        raise ValueError("`sample` has no rows.")
    expected = servable.outputs_numpy(columns)
    bad = [k for k, v in expected.items() if not np.isfinite(v).all()]
    if bad:
        raise ValueError(f"The in-memory model gives non-finite {bad} on the sample rows.")
    return columns, expected


def _write_version(staging, servable, columns, expected, metadata_args, warmup_rows, atol):
    """Writes and verifies the version in `staging`: SavedModel, assets.extra, report."""
    servable.write(staging)
    set_method_names(staging, servable.method_names)
    signatures = describe_signatures(staging)
    want = servable.expected_signatures()
    if signatures != want:
        raise ExportError(
            f"The written signatures differ from the intended ones.\nWritten: {signatures}\n"
            f"Intended: {want}"
        )
    extra = staging / ASSETS_EXTRA
    extra.mkdir()
    model_name = metadata_args["model_name"]
    if warmup_rows:
        write_warmup(
            extra / WARMUP_FILENAME, columns, servable.input_specs, model_name, warmup_rows
        )
    metadata = build_metadata(
        servable, signatures=signatures, warmup_rows=warmup_rows, **metadata_args
    )
    write_metadata(staging, metadata)
    report = verify(staging, columns, expected=expected, atol=atol)
    report.pop("signatures")  # the same as metadata["signatures"]
    metadata["verification"] = report
    write_metadata(staging, metadata)


def export_saved_model(
    model: keras.Model,
    export_dir: str | os.PathLike,
    schema: FeatureSchema | None = None,
    version: int | None = None,
    sample: Rows | None = None,
    metrics: Mapping | None = None,
    overwrite: bool = False,
    warmup_rows: int = 10,
    task: str | None = None,
    atol: float = 1e-5,
    source: Mapping | None = None,
) -> pathlib.Path:
    """Exports a trained FM / DeepFM for TF Serving as `export_dir/<version>/`, verified.

    Writes the serving graph (the schema's preprocessing + the model) with
    its signatures and `assets.extra/` to a hidden staging directory, runs
    `verify` on it (a TensorFlow-only process, both loaders, batch 1 and
    1000), then renames it to the version; on any error nothing is published.

    Args:
        model: the trained `tf_fm.FM` / `tf_fm.DeepFM`, whose inputs are the
            preprocessed fields of `schema` (not `schema.serving_model(model)`:
            pass the model and `schema=`); with `schema=None`, a model whose
            inputs already are the raw inputs (ids and values). Another Keras
            model of one output needs `task`.
        export_dir: the model's base directory (`saved_models/<name>`), the
            one TF Serving's `--model_base_path` points at.
        schema: the adapted `FeatureSchema`, or None. Defaults to None.
        version: int or None. None takes the next version (largest existing
            + 1, starting at 1). Defaults to None.
        sample: raw rows for the warm-up requests and the verification
            (DataFrame, dict of columns, list of row dicts, `tf.data.Dataset`
            of raw batches); at most 1000 rows are used. None makes a few
            rows from the schema (known and unseen tokens, means, NaN).
            Defaults to None; real rows are the better check.
        metrics: dict or None. Validation metrics to record in
            `tf_fm.json` (e.g. `{"val_auc": 0.79}`). Defaults to None.
        overwrite: bool. Replace an existing version. Defaults to False.
        warmup_rows: int. Warm-up records (one row each, at most 1000; 0 for
            none). Defaults to 10.
        task: `"binary"` / `"regression"` or None: a tf_fm model's own task
            (its `PredictionHead`); required for another Keras model, whose
            logit is then `log(p) - log1p(-p)` of its output. Defaults to None.
        atol: float. Verification tolerance. Defaults to 1e-5.
        source: dict or None. Where the model comes from, kept in
            `tf_fm.json` as `source` (`tf_fm.training` records the run
            directory and the model file's SHA-256, so rerunning an
            interrupted `tf-fm train --export` finds the version it already
            published). Defaults to None.

    Returns:
        `pathlib.Path` of the published version directory.

    Raises:
        FileExistsError: the version exists and `overwrite` is False.
        ValueError: a serving model passed without `schema`, or no task known.
        VerificationError: the exported model does not serve what `model`
            computes (nothing is published).

    Example:

    >>> path = tf_fm.export_saved_model(
    ...     model, "saved_models/deepfm", schema=schema, sample=valid_rows,
    ...     metrics={"val_auc": 0.79})
    """
    servable = Servable(model, schema, task)
    warmup_rows = _check_warmup_rows(warmup_rows)
    export_dir = pathlib.Path(export_dir)
    version, target = _target(export_dir, version, overwrite)
    columns, expected = _sample_columns(servable, sample)
    metadata_args = dict(
        model_name=export_dir.name, version=version, metrics=metrics, source=source
    )
    metadata_args.update(sample_rows=num_rows(columns), sample_is_synthetic=sample is None)
    export_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(export_dir)
    # A hidden sibling: TF Serving only loads all-digit names, so it never sees it.
    prefix = f".tmp-{version}-{os.getpid()}-"
    staging = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=export_dir))
    try:
        _write_version(staging, servable, columns, expected, metadata_args, warmup_rows, atol)
        _publish(staging, target, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
