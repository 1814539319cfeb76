"""Start-up of the `tf-fm` command: TensorFlow imported without its C++ log noise.

`tf_fm.cli.main` calls `quiet_tensorflow_import()` once the arguments are
parsed (so `--help` never loads TensorFlow), before a verb imports it, so
the lines TensorFlow's C++ runtime prints while it loads (CUDA stubs, CPU
feature notes) do not bury the command's output (`TF_CPP_MIN_LOG_LEVEL`
defaults to 3 for the same reason, unless the user set it). `tf-fm --verbose` keeps them.
"""

import os
import sys
import tempfile


def quiet_tensorflow_import():
    """Imports TensorFlow with the C++ log lines of its start-up discarded.

    File descriptor 2 goes to a temporary file during the import; if the
    import fails, what was captured is written to stderr before the error
    propagates, so nothing that explains a failure is lost.
    """
    if "tensorflow" in sys.modules:
        return
    if "--verbose" in sys.argv[1:]:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode("utf-8", errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
