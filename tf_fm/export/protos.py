"""`saved_model.pb` read and edited as a proto, without loading the model.

`describe_signatures` lists what a SavedModel serves (signature -> method
name, input and output dtypes and shapes); `set_method_names` gives the
Classify / Regress signatures the method names TF Serving's Classify and
Regress APIs require, which `tf.saved_model.save` (and Keras `export`) never
write: every signature comes out as `tensorflow/serving/predict`.

The fingerprint. `tf.saved_model.save` also writes `fingerprint.pb`: hashes
of `saved_model.pb` (`saved_model_checksum`), of the signatures
(`signature_def_hash`) and of the graph, objects and checkpoint. After the
method-name edit the first two hash a file that no longer exists, and
TensorFlow has no public API to write a fingerprint
(`tf.saved_model.experimental.Fingerprint` / `read_fingerprint` only read
one), so `set_method_names` removes it. The fingerprint is optional: it
identifies a model in logs and metrics and no loader validates it.
Without it `tf.saved_model.load` logs (INFO) "Fingerprint not found. Saved
model loading will continue." and loads; the TF1 session loader
(`tf.compat.v1.saved_model.loader.load`) does not read it; TensorFlow's C++
SavedModel code (what TF Serving runs) reads it only to record its checksum
in a metric when it is there. `read_fingerprint` of an export raises
`FileNotFoundError`.
"""

import os
import pathlib

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tf_fm.export.common import DEFAULT_SIGNATURE, ExportError
from tf_fm.export.rows import Specs

SAVED_MODEL_FILENAME = "saved_model.pb"
FINGERPRINT_FILENAME = "fingerprint.pb"


def read_saved_model_proto(path: str | os.PathLike) -> saved_model_pb2.SavedModel:
    """The `SavedModel` proto of the SavedModel directory `path`."""
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((pathlib.Path(path) / SAVED_MODEL_FILENAME).read_bytes())
    return proto


def _describe_tensor_info(info):
    if info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = [int(d.size) for d in info.tensor_shape.dim]
    return {"dtype": tf.as_dtype(info.dtype).name, "shape": shape}


def describe_signatures(path: str | os.PathLike) -> dict[str, dict]:
    """Signature name -> {method_name, inputs, outputs}, read from `saved_model.pb`.

    Inputs and outputs map a name to `{"dtype": "float32", "shape": [-1]}`
    (-1: any size; shape None: unknown rank), sorted by name. The
    initialisation signature (`__saved_model_init_op`) is left out.

    Args:
        path: a SavedModel directory (an exported version).

    Returns:
        dict signature name -> `{"method_name", "inputs", "outputs"}`.
    """
    proto = read_saved_model_proto(path)
    out = {}
    for name, sig in proto.meta_graphs[0].signature_def.items():
        if name.startswith("__"):  # __saved_model_init_op
            continue
        out[name] = {
            "method_name": sig.method_name,
            "inputs": {k: _describe_tensor_info(v) for k, v in sorted(sig.inputs.items())},
            "outputs": {k: _describe_tensor_info(v) for k, v in sorted(sig.outputs.items())},
        }
    return out


def input_specs_of(path: str | os.PathLike, signature: str = DEFAULT_SIGNATURE) -> Specs:
    """The inputs of one signature of a SavedModel: name -> (dtype name, shape after batch)."""
    described = describe_signatures(path)
    if signature not in described:
        raise KeyError(f"No signature '{signature}' in {path}. Signatures: {sorted(described)}")
    specs = {}
    for name, info in described[signature]["inputs"].items():
        shape = info["shape"] or [-1]
        specs[name] = (info["dtype"], tuple(shape[1:]))
    return specs


def set_method_names(path: str | os.PathLike, method_names: dict[str, str]) -> None:
    """Sets each signature's `method_name` in `saved_model.pb`; removes the stale fingerprint.

    Args:
        path: a SavedModel directory with one MetaGraph.
        method_names: signature name -> method name.

    Raises:
        ExportError: not one MetaGraph, or a signature of `method_names` is
            not in the SavedModel.
    """
    proto = read_saved_model_proto(path)
    if len(proto.meta_graphs) != 1:
        raise ExportError(f"Expected one MetaGraph in {path}, found {len(proto.meta_graphs)}.")
    signatures = proto.meta_graphs[0].signature_def
    for name, method in method_names.items():
        if name not in signatures:
            raise ExportError(f"Signature '{name}' was not written. Have: {sorted(signatures)}")
        signatures[name].method_name = method
    pb = pathlib.Path(path) / SAVED_MODEL_FILENAME
    scratch = pb.with_name(SAVED_MODEL_FILENAME + ".tmp")
    scratch.write_bytes(proto.SerializeToString(deterministic=True))
    os.replace(scratch, pb)
    # It hashes the file just replaced: a stale fingerprint would name another model.
    (pathlib.Path(path) / FINGERPRINT_FILENAME).unlink(missing_ok=True)
