"""The example notebooks: saved clean (quick), and run top to bottom (`pytest -m notebook`).

The executed runs use nbclient with the `python3` kernel in `examples/` (the
notebooks' relative data paths assume that working directory). Environment
variables set here reach the kernel: it inherits this process's environment.
"""

import json
import re

import nbclient
import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, shared_data_dir

EXAMPLES = REPO / "examples"
NOTEBOOKS = ["01_quickstart.ipynb", "02_movielens.ipynb", "03_criteo_to_tf_serving.ipynb"]
COLAB = "https://colab.research.google.com/github/tf-fm/tf_fm/blob/main/examples/"
INSTALL = 'pip", \'install -q "tf-fm @ git+https://github.com/tf-fm/tf_fm"\''
CELL_TIMEOUT = 600


def execute(name):
    """Runs a notebook in examples/; raises CellExecutionError (with the cell) on an error."""
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    client.execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs


def printed(outputs):
    """Everything the notebook printed or displayed as text."""
    parts = [o.text for o in outputs if o.output_type == "stream" and o.name == "stdout"]
    parts += [o.data.get("text/plain", "") for o in outputs if "data" in o]
    return "\n".join(parts)


def num_images(outputs):
    return sum("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_saved_clean_with_badge_and_colab_install(name):
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, "clear the outputs"
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    badge = "https://colab.research.google.com/assets/colab-badge.svg"
    assert f"[![Open In Colab]({badge})]({COLAB}{name})" in first.source
    # The first code cell installs tf_fm in Colab only.
    assert 'if "google.colab" in sys.modules:' in code[0].source and INSTALL in code[0].source
    source = "\n".join(c.source for c in code)
    assert "tf.keras" not in source and "keras.src" not in source
    # TF's log level is set before TensorFlow is first imported (through keras or tf_fm).
    first_import = min(source.index(m) for m in ("import keras", "import tf_fm"))
    assert source.index('os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")') < first_import


@pytest.mark.notebook
def test_01_quickstart():
    outputs = execute("01_quickstart.ipynb")
    text = printed(outputs)
    rows = dict(
        (m.group(1), (float(m.group(2)), float(m.group(4))))
        for m in re.finditer(
            r"^(Bayes-optimal|FM|DeepFM)\S*(?: \S+)*?\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)",
            text,
            flags=re.M,
        )
    )
    assert set(rows) == {"Bayes-optimal", "FM", "DeepFM"}, text[-2000:]
    bayes_auc = rows["Bayes-optimal"][0]
    assert 0.75 < bayes_auc < 0.85
    for model in ("FM", "DeepFM"):
        auc, gap = rows[model]
        assert gap == pytest.approx(bayes_auc - auc, abs=2e-4)
        assert -0.01 < gap < 0.05, (model, auc, bayes_auc)
    assert num_images(outputs) >= 4  # two training curves, ROC, calibration


def write_synthetic_movielens(folder, n_users=120, n_movies=300, per_user=40, seed=0):
    """ratings.csv / movies.csv in the MovieLens format, likes driven by user x genre taste."""
    rng = np.random.default_rng(seed)
    genres = np.array(["Action", "Adventure", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"])
    movie_genres = [
        rng.choice(len(genres), rng.integers(1, 4), replace=False) for _ in range(n_movies)
    ]
    titles = [f"Movie {i} ({y})" for i, y in enumerate(rng.integers(1950, 2020, n_movies))]
    titles[1], titles[2] = "Movie 1", "Series 2 (2006–2007)"  # no year; a range of years
    names = ["|".join(genres[g]) for g in movie_genres]
    names[3] = "(no genres listed)"
    quality = rng.normal(0.0, 0.8, n_movies)
    taste = rng.normal(0.0, 1.2, (n_users, len(genres)))
    popularity = 1.0 / np.arange(1, n_movies + 1) ** 0.8
    ratings = []
    for user in range(n_users):
        movies = rng.choice(n_movies, per_user, replace=False, p=popularity / popularity.sum())
        for t, movie in enumerate(movies):
            score = quality[movie] + taste[user, movie_genres[movie]].mean() + rng.normal(0, 0.5)
            rating = float(np.clip(np.round((3.5 + score) * 2) / 2, 0.5, 5.0))
            ratings.append((user + 1, movie + 1, rating, 1_500_000_000 + 1000 * user + t))
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(ratings, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(
        folder / "ratings.csv", index=False
    )
    pd.DataFrame({"movieId": np.arange(1, n_movies + 1), "title": titles, "genres": names}).to_csv(
        folder / "movies.csv", index=False
    )
    return folder


@pytest.mark.notebook
def test_02_movielens(tmp_path, monkeypatch):
    shared = shared_data_dir()
    if shared is not None and (shared / "ml-latest-small" / "ratings.csv").is_file():
        data, real = shared / "ml-latest-small", True
    else:  # no real data (CI without ../shared, no internet): MovieLens-format rows
        data, real = write_synthetic_movielens(tmp_path / "movielens"), False
    monkeypatch.setenv("TF_FM_MOVIELENS", str(data))
    outputs = execute("02_movielens.ipynb")
    text = printed(outputs)
    assert f"MovieLens files in {data.resolve()}" in text  # the kernel saw the variable
    assert "test AUC" in text and "user + movie like rate" in text
    auc = float(re.search(r"held-out AUC \(DeepFM\): ([\d.]+)", text).group(1))
    assert auc > (0.72 if real else 0.65), auc
    assert num_images(outputs) >= 3  # training curves, ROC, calibration


@pytest.mark.notebook
def test_03_criteo_to_tf_serving(tmp_path, monkeypatch):
    shared = shared_data_dir()
    sample = None if shared is None else shared / "criteo_widresdnn_sample"
    if sample is not None and (sample / "train.csv").is_file():
        monkeypatch.setenv("TF_FM_CRITEO", str(sample))
    else:  # the notebook finds ../../shared itself, or writes synthetic Criteo rows
        monkeypatch.delenv("TF_FM_CRITEO", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's tempfile: export lands here
    outputs = execute("03_criteo_to_tf_serving.ipynb")
    text = printed(outputs)
    auc = float(re.search(r"dev AUC ([\d.]+)", text).group(1))
    assert auc > 0.6, auc
    version = tmp_path.joinpath(re.search(r"exported: (\S+)", text).group(1))
    assert version.parent.name == "criteo_deepfm" and version.name == "1"
    assert tmp_path in version.parents
    assert (version / "saved_model.pb").is_file()
    metadata = json.loads((version / "assets.extra" / "tf_fm.json").read_text())
    assert metadata["metrics"]["dev_auc"] == pytest.approx(auc, abs=1e-4)
    assert max(metadata["verification"]["max_abs_diff"].values()) <= 1e-5
    assert "re-verified on 100 rows" in text
    # The request body the notebook wrote is what the signature takes: every raw feature.
    body = json.loads((version.parent.parent / "request.json").read_text())
    assert body["signature_name"] == "serving_default" and len(body["instances"]) == 2
    assert len(body["instances"][0]) == 39  # I1..I13, C1..C26; no label
    assert re.search(r'TF Serving answers: \{"predictions": \[\{"', text)
    assert "docker run" in text and ":predict" in text
    assert num_images(outputs) >= 2  # training curves, ROC
