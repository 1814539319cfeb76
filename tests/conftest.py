import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir():
    """../shared/data beside the checkout (or $TF_FM_SHARED_DATA), None when absent."""
    path = pathlib.Path(os.environ.get("TF_FM_SHARED_DATA", REPO.parent / "shared" / "data"))
    return path if path.is_dir() else None


@pytest.fixture
def shared_data():
    """Folder of the real public data samples; skips the test when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data (real data samples) not present")
    return path
