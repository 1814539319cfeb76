#!/usr/bin/env bash
# CI: the quick test set against the lowest TensorFlow and Keras that
# pyproject.toml allows. Reads the two lower bounds from its dependencies,
# installs exactly those (a constraints file) and tf_fm with its test extra
# into a fresh virtual environment in a temp dir, checks that the pins took,
# then runs the optimizer and export tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# The lower bound of `"name>=X,<Y"` in pyproject.toml's dependencies.
floor() {
    sed -n "s/^ *\"$1>=\([0-9.]*\),.*/\1/p" pyproject.toml
}
tensorflow_version="$(floor tensorflow)"
keras_version="$(floor keras)"
if [[ -z "$tensorflow_version" || -z "$keras_version" ]]; then
    echo "no \"tensorflow>=X,<Y\" / \"keras>=X,<Y\" lines in pyproject.toml" >&2
    exit 1
fi

start=$SECONDS
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
# shellcheck disable=SC1091
source "$tmp/venv/bin/activate"
python -m pip install --quiet --upgrade pip

# tensorflow-serving-api X.Y requires tensorflow >= X.Y: keep it in the same series.
cat >"$tmp/constraints.txt" <<EOF
tensorflow==$tensorflow_version
keras==$keras_version
tensorflow-serving-api==${tensorflow_version%.*}.*
EOF
pip install --quiet -c "$tmp/constraints.txt" -e ".[test]"

export TF_CPP_MIN_LOG_LEVEL=2 KERAS_BACKEND=tensorflow
python - "$tensorflow_version" "$keras_version" <<'EOF'
import sys

import keras
import tensorflow as tf
from packaging.version import Version

found = (tf.__version__, keras.__version__)
print(f"== lowest versions: tensorflow {found[0]}, keras {found[1]}")
if tuple(map(Version, found)) != tuple(map(Version, sys.argv[1:3])):
    sys.exit(f"expected tensorflow {sys.argv[1]}, keras {sys.argv[2]}; found {found}")
EOF

pytest -q -p no:cacheprovider tests/test_optimizers.py tests/test_export*.py
echo "== lowest versions: done in $((SECONDS - start)) s"
