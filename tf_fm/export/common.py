"""What every part of `tf_fm.export` shares: signature, method and file names, limits, errors.

The lowest module of the package: it imports nothing of tf_fm. The
verification child (`verify_child.py`) cannot import it and repeats the
few names it needs; the tests check that they agree.
"""

PREDICT_METHOD_NAME = "tensorflow/serving/predict"
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
REGRESS_METHOD_NAME = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_SIGNATURE = "classification"
REGRESS_SIGNATURE = "regression"
# Signature name -> the method name TF Serving's API for it requires.
METHOD_NAMES = {
    DEFAULT_SIGNATURE: PREDICT_METHOD_NAME,
    CLASSIFY_SIGNATURE: CLASSIFY_METHOD_NAME,
    REGRESS_SIGNATURE: REGRESS_METHOD_NAME,
}
EXAMPLES_INPUT = "inputs"
CLASS_LABELS = ("0", "1")
ASSETS_EXTRA = "assets.extra"
WARMUP_FILENAME = "tf_serving_warmup_requests"
METADATA_FILENAME = "tf_fm.json"
METADATA_FORMAT = "tf_fm.export"
METADATA_VERSION = 1
# TF Serving refuses to load a model whose warm-up file has more records.
MAX_WARMUP_RECORDS = 1000
VERIFY_BATCH_SIZE = 1000
VERIFY_SINGLE_ROWS = 16


class ExportError(RuntimeError):
    """An export could not be written or published."""


class VerificationError(ExportError):
    """The exported SavedModel does not serve what the in-memory model computes."""
