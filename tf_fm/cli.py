"""The `tf-fm` command: demo, train, evaluate, predict, export, verify, inspect.

Argument parsing and printing only: each verb calls the public API
(`tf_fm.training`, `tf_fm.export`, `tf_fm.demo`). TensorFlow is imported
only once a verb runs, so `tf-fm --help`, `tf-fm <verb> --help`,
`--version` and usage errors answer at once.

Every verb prints what it does and ends with exit code 0; a bad path, flag,
format or run directory ends it with a one-line `tf-fm <verb>: error: ...`
and exit code 2 (usage), a bad input line or model with exit code 1.

A training run lives in one directory (`--output`, default `runs/<model>`,
see `tf_fm.training`); rerunning an interrupted `tf-fm train` with the same
`--output` resumes from the last finished epoch.
"""

import argparse
import contextlib
import json
import logging
import os
import pathlib
import sys
import warnings

import tf_fm
from tf_fm import _console
from tf_fm.data.catalog import FORMATS
from tf_fm.errors import UsageError, readable_message


def _say(*parts):
    print(*parts, flush=True)


# === Verbs ===


def _parse_units(text):
    try:
        units = tuple(int(u) for u in text.split(",") if u.strip())
    except ValueError:
        raise UsageError(f"--dnn-units: expected comma separated integers, got {text!r}") from None
    if any(u <= 0 for u in units):
        raise UsageError(f"--dnn-units: units must be positive, got {text!r}")
    return units


def cmd_train(args):
    from tf_fm import training
    from tf_fm.data import formats

    if args.cluster:
        from tf_fm.distributed import launch

        code = launch.run_cluster_command(args.cluster, args.argv)
        if code is not None:
            return code
    valid = formats.resolve_files(args.valid, "--valid") if args.valid else None
    run = training.train(
        formats.resolve_files(args.data, "--data"),
        format=args.format,
        valid=valid,
        output=args.output,
        schema=args.schema,
        task=args.task,
        label=args.label,
        delimiter=args.delimiter,
        separator=args.separator,
        min_count=args.min_count,
        categorical=args.categorical or (),
        numeric=args.numeric or (),
        model=args.model,
        **_model_options(args),
        epochs=args.epochs,
        batch_size=args.batch_size,
        patience=args.patience,
        seed=args.seed,
        shuffle_buffer=args.shuffle_buffer,
        on_error=args.on_error,
        calibration=args.calibration,
        negative_downsampling=args.negative_downsampling,
        initial_bias=args.initial_bias,
        overwrite=args.overwrite,
        plots=args.plots,
        log=_say,
        cluster=args.cluster and "tf_config",
        warm_start=args.warm_start,
    )
    if run is None:  # a worker of a cluster that is not the chief
        return 0
    if args.metrics_out:
        training.write_json(args.metrics_out, run.metrics)
    if args.export:
        run.export(args.export, log=_say)
    return 0


def _model_options(args):
    """The model options given on the command line; the others take their defaults.

    Left out rather than filled in, so that `--warm-start` takes the run's own.
    """
    options = {
        "embedding_dim": args.embedding_dim,
        "dnn_units": _parse_units(args.dnn_units) if args.dnn_units else None,
        "order": args.order,
        "samples": args.samples,
        "burn_in": args.burn_in,
        "dropout": args.dropout,
        "batch_norm": args.batch_norm,
        "l2": args.l2,
        "learning_rate": args.learning_rate,
        "optimizer": args.optimizer,
    }
    return {k: v for k, v in options.items() if v is not None}


def cmd_evaluate(args):
    from tf_fm import metrics, plots, training

    run = training.Run.load(args.run)
    result = run.evaluate(args.data, batch_size=args.batch_size)
    _say(f"{', '.join(args.data)}: {metrics.format_scores(result.scores)}")
    if args.metrics_out:
        training.write_json(args.metrics_out, result.scores)
    if args.plots and run.task == "binary":
        paths = plots.save_plots(
            args.plots, labels=result.labels, predictions=result.predictions, task=run.task
        )
        _say(f"Plots: {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_predict(args):
    import pandas as pd

    from tf_fm import training

    run = training.Run.load(args.run)
    predictions = run.predict(args.data, batch_size=args.batch_size)
    column = "probability" if run.task == "binary" else "prediction"
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pd.DataFrame({column: predictions}).to_csv(tmp, index=False, float_format="%.7g")
    os.replace(tmp, out)
    _say(f"Wrote {len(predictions):,} predictions ({column}, one per input row, in order) to {out}")
    return 0


def cmd_export(args):
    from tf_fm import training

    run = training.Run.load(args.run)
    run.export(args.export_dir, args.sample, args.version, args.overwrite, log=_say)
    return 0


def cmd_explain(args):
    from tf_fm import plots, training
    from tf_fm.explanations import explain, read_model_inputs

    if args.rows < 1 or args.top < 1:
        raise UsageError(f"--rows and --top must be positive, got {args.rows} and {args.top}")
    run = training.Run.load(args.run)
    inputs = read_model_inputs(run, args.data, args.rows)
    try:
        explanation = explain(run.model(), inputs)
    except NotImplementedError as error:  # HOFM, NFM: a usage error, not a crash
        raise UsageError(str(error)) from None
    for row, logit in enumerate(explanation.logit):
        dnn = ""
        if explanation.dnn is not None:
            dnn = f", DNN {explanation.dnn_baseline + explanation.dnn[row].sum():+.4f}"
        _say(
            f"row {row}: logit {logit:+.4f} = bias {explanation.bias:+.4f}, first order "
            f"{explanation.first_order[row].sum():+.4f}, pairs "
            f"{explanation.pairs[row].sum():+.4f}{dnn}"
        )
        for a, b, value in explanation.top_pairs(row, args.top):
            _say(f"  {a} x {b}: {value:+.4f}" if a != b else f"  within {a}: {value:+.4f}")
    if args.plot:
        plots.plot_pair_contributions(explanation.pairs, explanation.field_names, path=args.plot)
        _say(f"Plot: {args.plot}")
    return 0


def _version_dir(path):
    from tf_fm import export

    path = pathlib.Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = export.list_versions(path)
    if not versions:
        raise UsageError(f"{path}: no SavedModel (no saved_model.pb, no numbered versions)")
    return path / str(versions[-1])


def _worst_difference(report):
    from tf_fm import training

    return training.worst_difference(report)


def cmd_verify(args):
    from tf_fm import export
    from tf_fm.data import formats

    path = _version_dir(args.dir)
    if args.data:
        if not args.format:
            raise UsageError("--data needs --format")
        spec = formats.DataSpec(format=args.format, label=args.label, delimiter=args.delimiter)
        files = formats.resolve_files(args.data, "--data")
        sample = formats.read_files(spec, files, batch_size=1000, need_label=False)
    else:
        sample = export.warmup_rows(path)
        if sample is None:
            raise UsageError(f"{path} has no warm-up records: pass --data FILES --format F")
    _say(f"Verifying {path} in a TensorFlow-only process ...")
    report = export.verify(path, sample)
    _say(
        f"OK: {report.get('rows')} rows, signatures {', '.join(report.get('signatures', []))}; "
        f"max abs diff {_worst_difference(report):.2e}; warm-up records replayed: "
        f"{report.get('warmup_records_replayed', 0)}"
    )
    return 0


def _describe_signatures(path):
    from tf_fm import export

    for name, info in export.describe_signatures(path).items():
        _say(f"  signature {name!r} ({info.get('method_name', '')}):")
        for kind in ("inputs", "outputs"):
            for key, tensor in sorted(info.get(kind, {}).items()):
                _say(f"    {kind[:-1]:<6} {key:<24} {tensor['dtype']} {tensor['shape']}")


def _describe_metadata(meta):
    if meta.get("schema"):
        _say("  schema:")
        text = str(tf_fm.FeatureSchema.from_dict(meta["schema"]))
        _say("    " + text.replace("\n", "\n    "))
    if meta.get("metrics"):
        _say(f"  metrics: {json.dumps(meta['metrics'], sort_keys=True)}")
    report = meta.get("verification")
    if report:
        _say(
            f"  verified: {report.get('rows')} rows at batch sizes {report.get('batch_sizes')}, "
            f"loaders {', '.join(report.get('loaders', []))}; max abs diff "
            f"{_worst_difference(report):.1e}; warm-up records replayed "
            f"{report.get('warmup_records_replayed', 0)}"
        )
    versions = meta.get("library_versions")
    if versions:
        _say(f"  exported {meta.get('created', '')} with {json.dumps(versions, sort_keys=True)}")


def _describe_export(path):
    from tf_fm import export

    path = _version_dir(path)
    _say(f"SavedModel {path}")
    versions = export.list_versions(path.parent)
    if versions:
        _say(f"  versions in {path.parent}: {versions}")
    _describe_signatures(path)
    try:
        meta = export.read_metadata(path)
    except FileNotFoundError:
        _say("  (no assets.extra/tf_fm.json: not exported by tf_fm)")
        return
    _describe_metadata(meta)


def _describe_run(path):
    from tf_fm import training

    run = training.Run.load(path)
    _say(
        f"Run {run.path}: model {run.config.get('model')}, format {run.spec.format}, "
        f"task {run.task}"
    )
    _say(str(run.schema))
    if (run.path / training.METRICS_FILE).is_file():
        _say(f"{training.METRICS_FILE}: {json.dumps(run.metrics, sort_keys=True)}")


def cmd_inspect(args):
    path = pathlib.Path(args.dir)
    if not path.exists():
        raise UsageError(f"no such directory: {path}")
    if (path / "run.json").is_file():
        _describe_run(path)
    else:
        _describe_export(path)
    return 0


def cmd_demo(args):
    from tf_fm import demo

    return demo.run(
        export_dir=args.export_dir,
        plots_dir=args.plots,
        rows=args.rows,
        epochs=args.epochs,
        seed=args.seed,
        log=_say,
    )


# === Command line ===

_EPILOG = "Run `tf-fm <verb> --help` for the flags of a verb."

_VERB_HELP = {  # a verb's line in `tf-fm --help` and the description of `tf-fm <verb> --help`
    "demo": "synthetic data with a known truth: FM and DeepFM vs the Bayes-optimal AUC, "
    "DeepFM exported and verified, plots",
    "train": "train FM or DeepFM on your files (schema inferred or given), early stopping on "
    "validation AUC minus log loss, resumable; optionally plots and a verified export",
    "evaluate": "metrics of a trained run on labelled files",
    "predict": "predictions of a trained run, one per input row",
    "explain": "split a trained FM / FwFM / DeepFM run's logits into bias, first-order and "
    "field-pair terms (DeepFM's DNN by integrated gradients); top pairs per row, a heat map",
    "export": "export a trained run as a verified SavedModel",
    "verify": "check a SavedModel the way TF Serving runs it",
    "inspect": "signatures, schema and metrics of an export or a run",
}


def _add_verbose_flag(parser):
    """`--verbose`, of the top command and of every verb."""
    parser.add_argument(
        "--verbose", action="store_true", help="keep TensorFlow's log lines and warnings"
    )


def _add_data_flags(parser, required=True, formats=True):
    """`--data` and, with `formats`, `--format`, `--label` and `--delimiter`."""
    parser.add_argument(
        "--data", nargs="+", required=required, metavar="FILE", help="data files or globs"
    )
    if formats:
        parser.add_argument(
            "--format",
            choices=list(FORMATS),
            required=required,
            help="; ".join(f"{k}: {v}" for k, v in FORMATS.items()),
        )
        parser.add_argument(
            "--label", default="label", help="label column of --format csv (default: label)"
        )
        parser.add_argument(
            "--delimiter",
            default=",",
            help="cell delimiter of --format csv, e.g. ',' or '\\t' (default: ',')",
        )


def _add_run_argument(parser):
    """The `run` positional: a run directory of `tf-fm train`."""
    parser.add_argument("run", help="run directory written by `tf-fm train`")


def _add_run_data_flags(parser):
    """`run` and `--data`: the files read in the run's own format (evaluate, predict, explain)."""
    _add_run_argument(parser)
    _add_data_flags(parser, formats=False)


def _add_batch_size_flag(parser):
    """`--batch-size` of the verbs that only run a trained model (evaluate, predict)."""
    parser.add_argument("--batch-size", type=int, default=4096, help="(default: 4096)")


def _delimiter(text):
    return {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(text, text)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (`tf-fm train: error: ...`), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# --- demo ---


def _add_demo_arguments(parser):
    """The flags of `tf-fm demo`."""
    parser.add_argument(
        "--export-dir",
        default="saved_models/deepfm_demo",
        help="where DeepFM is exported, as <dir>/<version> (default: saved_models/deepfm_demo)",
    )
    parser.add_argument(
        "--plots", default="plots/demo", help="directory for the PNG plots (default: plots/demo)"
    )
    parser.add_argument("--rows", type=int, default=100_000, help="training rows (default: 100000)")
    parser.add_argument("--epochs", type=int, default=8, help="most epochs per model (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


# --- train ---


def _add_train_arguments(parser):
    """The flags of `tf-fm train`, in the groups its `--help` shows."""
    _add_data_flags(parser)
    data = parser.add_argument_group("data")
    _add_train_input_flags(data)
    _add_train_reading_flags(data)
    model = parser.add_argument_group("model")
    _add_train_model_flags(model)
    _add_train_layer_flags(model)
    fit = parser.add_argument_group("training")
    _add_train_loop_flags(fit)
    _add_train_probability_flags(fit)
    _add_train_weights_flags(fit)
    _add_train_output_flags(parser.add_argument_group("outputs"))


def _add_train_input_flags(group):
    """Validation files, schema, task and vocabulary cut-off of `tf-fm train`."""
    group.add_argument(
        "--valid",
        nargs="+",
        metavar="FILE",
        help="validation files or globs: early stopping, LR decay and the reported metrics "
        "use them (without them: fixed --epochs)",
    )
    group.add_argument(
        "--schema",
        metavar="FILE",
        help="schema.json (tf_fm.FeatureSchema.save) to use instead of inferring one",
    )
    group.add_argument(
        "--task",
        choices=["binary", "regression"],
        default="binary",
        help="binary: labels 0/1 (or -1/+1), probability out, AUC/logloss; regression: real "
        "labels, RMSE (default: binary)",
    )
    group.add_argument(
        "--min-count",
        type=int,
        default=2,
        help="inferred vocabularies: fewest occurrences a value needs for its own id; rarer "
        "values share the OOV id (default: 2)",
    )


def _add_train_reading_flags(group):
    """How `tf-fm train` reads the rows: csv columns, shuffling, malformed lines."""
    group.add_argument(
        "--separator", help="csv: separator of multi-valued cells, e.g. '|' (default: none)"
    )
    group.add_argument(
        "--categorical", nargs="+", metavar="COL", help="csv: columns to treat as categorical"
    )
    group.add_argument(
        "--numeric", nargs="+", metavar="COL", help="csv: columns to treat as numeric"
    )
    group.add_argument(
        "--shuffle-buffer",
        type=int,
        default=100_000,
        help="rows shuffled together (files in random order, then windows of this many rows) "
        "(default: 100000)",
    )
    group.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="a malformed line: stop with its file:line (raise), or skip it and report the "
        "count (default: raise)",
    )


def _add_train_model_flags(group):
    """The model of `tf-fm train` and the options of HOFM and Bayesian FM.

    Defaults None: see `_model_options`.
    """
    group.add_argument(
        "--model",
        choices=["fm", "deepfm", "hofm", "fwfm", "ffm", "nfm", "bayesfm"],  # training.MODELS
        default=None,
        help="fm: Factorization Machine; deepfm: FM + DNN on the same embeddings; hofm: "
        "higher-order FM (--order); fwfm: field-weighted FM; ffm: field-aware FM (a vector "
        "per feature and field: F times an FM's table); nfm: neural FM; bayesfm: an FM sampled "
        "by MCMC as libFM's -method mcmc (regression, or probit for binary; --samples, "
        "--burn-in) "
        "(default: deepfm)",
    )
    group.add_argument(
        "--order", type=int, default=None, help="hofm: highest interaction order (default: 3)"
    )
    group.add_argument(
        "--samples", type=int, default=None, help="bayesfm: sweeps kept and averaged (default: 100)"
    )
    group.add_argument(
        "--burn-in", type=int, default=None, help="bayesfm: sweeps discarded first (default: 20)"
    )


def _add_train_layer_flags(group):
    """Embedding size, DNN layers and regularization of `tf-fm train` (defaults None)."""
    group.add_argument(
        "--embedding-dim",
        type=int,
        default=None,
        help="k, the factor size per feature (default: 10)",
    )
    group.add_argument(
        "--dnn-units",
        help="DeepFM / NFM hidden layer sizes, comma separated (default: DeepFM 400,400,400; "
        "NFM 64)",
    )
    group.add_argument(
        "--dropout",
        type=float,
        help="DeepFM / NFM dropout rate after each hidden layer (default: DeepFM 0.5, NFM 0)",
    )
    group.add_argument(
        "--batch-norm",
        action="store_true",
        default=None,
        help="batch normalization in the DNN (default: off)",
    )
    group.add_argument(
        "--l2",
        type=float,
        default=None,
        help="L2 on the embedding and first-order rows each example uses (default: 1e-5)",
    )


def _add_train_loop_flags(group):
    """The training loop of `tf-fm train`: epochs, batches, learning rate, early stopping."""
    group.add_argument(
        "--epochs",
        type=int,
        help="most epochs (default: 100 with --valid, where early stopping decides; 10 without)",
    )
    group.add_argument(
        "--batch-size", type=int, default=1024, help="rows per training step (default: 1024)"
    )
    group.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="initial learning rate of tf_fm.LazyAdam; divided by 10 after an epoch without "
        "validation improvement (default: 1e-3)",
    )
    group.add_argument(
        "--patience",
        type=int,
        default=2,
        help="epochs without validation improvement before stopping; the best epoch's "
        "weights are kept (default: 2)",
    )
    group.add_argument(
        "--seed", type=int, default=0, help="seed of weights and shuffling (default: 0)"
    )


def _add_train_probability_flags(group):
    """Corrections of the probabilities the saved model gives: calibration, downsampling."""
    group.add_argument(
        "--calibration",
        choices=["none", "platt", "isotonic"],
        default="none",
        help="recalibrate the probabilities on the --valid files after training; the saved "
        "model and its export carry it (default: none)",
    )
    group.add_argument(
        "--negative-downsampling",
        type=float,
        metavar="W",
        help="the --data files kept their negatives at rate W (0 < W <= 1); the saved model "
        "and its export correct to the full distribution: p / (p + (1 - p) / W). --valid "
        "files are taken to be full-distribution (default: no correction)",
    )


def _add_train_weights_flags(group):
    """The weights of `tf-fm train`: their update rule, starting point and processes."""
    group.add_argument(
        "--initial-bias",
        choices=["mean", "zero"],  # training.INITIAL_BIASES
        default=None,
        help="where the global bias starts: mean (the training labels' mean; for binary, "
        "the logit of the click rate: use it for rare clicks) or zero (default: mean for "
        "regression, zero for binary)",
    )
    group.add_argument(
        "--optimizer",
        choices=["lazy_adam", "rowwise_adagrad"],  # models.EMBEDDING_OPTIMIZERS
        default=None,
        help="the embedding tables' rule: lazy_adam (Adam on the rows a batch touches) or "
        "rowwise_adagrad (TorchRec/FBGEMM's, one accumulator per row, at 10x the learning "
        "rate); Adam elsewhere either way (default: lazy_adam)",
    )
    group.add_argument(
        "--warm-start",
        metavar="RUN",
        help="go on from a finished run on the new --data: its schema with the vocabularies "
        "extended by the new ids, its weights and optimizer state, fresh rows for new ids; "
        "the model and its architecture are RUN's (write to another --output)",
    )
    group.add_argument(
        "--cluster",
        metavar="SPEC",
        help="train on several processes (tf.distribute): local:W (W synchronous workers "
        "here), local:W,P (W workers, P parameter servers), tf_config (this process is "
        "the task TF_CONFIG names); --batch-size is the global batch (default: one process)",
    )


def _add_train_output_flags(group):
    """What `tf-fm train` writes: run directory, export, metrics, plots."""
    group.add_argument(
        "--output",
        metavar="DIR",
        help="run directory: model.keras, schema.json, metrics.json, history.json and the "
        "checkpoints an interrupted run resumes from (default: runs/MODEL)",
    )
    group.add_argument(
        "--export", metavar="DIR", help="export a verified TF Serving SavedModel to DIR/<version>"
    )
    group.add_argument("--metrics-out", metavar="FILE", help="also write the metrics JSON to FILE")
    group.add_argument(
        "--plots", metavar="DIR", help="write training curves, ROC and calibration PNGs to DIR"
    )
    group.add_argument(
        "--overwrite", action="store_true", help="replace a finished run in --output"
    )


# --- evaluate / predict / explain ---


def _add_evaluate_arguments(parser):
    """The arguments of `tf-fm evaluate`."""
    _add_run_data_flags(parser)
    _add_batch_size_flag(parser)
    parser.add_argument("--metrics-out", metavar="FILE", help="write the metrics JSON here")
    parser.add_argument("--plots", metavar="DIR", help="write ROC and calibration PNGs")


def _add_predict_arguments(parser):
    """The arguments of `tf-fm predict`."""
    _add_run_data_flags(parser)
    parser.add_argument("--output", required=True, help="CSV file to write")
    _add_batch_size_flag(parser)


def _add_explain_arguments(parser):
    """The arguments of `tf-fm explain`."""
    _add_run_data_flags(parser)
    parser.add_argument("--rows", type=int, default=5, help="first rows to explain (default: 5)")
    parser.add_argument("--top", type=int, default=5, help="pairs shown per row (default: 5)")
    parser.add_argument(
        "--plot", metavar="PNG", help="write the field-pair heat map (mean |contribution|) here"
    )


# --- export / verify / inspect ---


def _add_export_arguments(parser):
    """The arguments of `tf-fm export`."""
    _add_run_argument(parser)
    parser.add_argument("export_dir", help="model base directory; the version goes below it")
    parser.add_argument("--version", type=int, help="version number (default: next free)")
    parser.add_argument("--overwrite", action="store_true", help="replace --version if it exists")
    parser.add_argument(
        "--sample", nargs="+", metavar="FILE", help="rows for warm-up and checks (default: --valid)"
    )


def _add_verify_arguments(parser):
    """The arguments of `tf-fm verify`."""
    parser.add_argument("dir", help="export base directory (latest version) or a version directory")
    _add_data_flags(parser, required=False)


def _add_inspect_arguments(parser):
    """The argument of `tf-fm inspect`."""
    parser.add_argument("dir", help="export (base or version) directory, or a run directory")


def build_parser():
    """The `tf-fm` parser: one subparser per verb, its flags added by `_add_<verb>_arguments`."""
    parser = _Parser(
        prog="tf-fm",
        description="Factorization Machines and DeepFM (Keras 3, TensorFlow): train, "
        "evaluate, export for TF Serving.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tf-fm {tf_fm.__version__}")
    _add_verbose_flag(parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, func, add_arguments in [
        ("demo", cmd_demo, _add_demo_arguments),
        ("train", cmd_train, _add_train_arguments),
        ("evaluate", cmd_evaluate, _add_evaluate_arguments),
        ("predict", cmd_predict, _add_predict_arguments),
        ("explain", cmd_explain, _add_explain_arguments),
        ("export", cmd_export, _add_export_arguments),
        ("verify", cmd_verify, _add_verify_arguments),
        ("inspect", cmd_inspect, _add_inspect_arguments),
    ]:
        help_text = _VERB_HELP[name]
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        _add_verbose_flag(sub)
        sub.set_defaults(func=func)
        add_arguments(sub)
    return parser


@contextlib.contextmanager
def _quiet(verbose):
    if verbose:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("tensorflow").level
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("tensorflow").setLevel(level)


def _is_data_error(error):
    """An error of the data or the model (exit code 1): ours, or TensorFlow's op errors."""
    if isinstance(error, (FileNotFoundError, FileExistsError, ValueError)):
        return True
    tf = sys.modules.get("tensorflow")  # loaded by then if a TensorFlow op failed
    if tf is not None and isinstance(error, tf.errors.OpError):
        return True
    export = sys.modules.get("tf_fm.export")
    return export is not None and isinstance(error, export.ExportError)


def main(argv=None):
    """Entry point of the `tf-fm` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if hasattr(args, "delimiter"):
        args.delimiter = _delimiter(args.delimiter)
    if not args.verbose:
        _console.quiet_tensorflow_import()
    prefix = f"tf-fm {args.verb}: error:"
    try:
        with _quiet(args.verbose):
            return args.func(args)
    except UsageError as error:
        print(f"{prefix} {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ntf-fm {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tf-fm inspect DIR | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        if not _is_data_error(error):
            raise
        print(f"{prefix} {readable_message(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # `python -m tf_fm.cli`: what the local cluster's tasks run
    sys.exit(main())
