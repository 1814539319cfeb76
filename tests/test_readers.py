import gzip
import math
import re

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tf_fm
from tf_fm import data
from tf_fm.data import text as text_module


def write(path, content):
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def collect(dataset):
    """All batches of a dataset concatenated: (features as numpy dict, labels)."""
    features, labels = {}, []
    for element in dataset:
        batch, label = element if isinstance(element, tuple) else (element, None)
        for name, value in batch.items():
            features.setdefault(name, []).append(value.numpy())
        if label is not None:
            labels.append(label.numpy())
    features = {k: np.concatenate(v) for k, v in features.items()}
    return features, (np.concatenate(labels) if labels else None)


def strings(values):
    return [v.decode() for v in values]


def same(a, b):
    """Equal arrays, NaN equal to NaN."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f":
        return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return a.shape == b.shape and np.array_equal(a, b)


def bad_line_error(path, line):
    return pytest.raises(tf.errors.InvalidArgumentError, match=rf"{re.escape(str(path))}:{line}: ")


# ----------------------------------------------------------------------------- CSV


def test_csv_header_types_and_missing_values(tmp_path):
    path = write(
        tmp_path / "a.csv",
        "label,price,city,genres\n"
        "1,2.5,paris,Action|Comedy\n"
        "0,,,\n"
        "1,nan,rome,Drama\n"
        "0,-inf,oslo,\n"
        "1,1e3, lyon ,x\n",
    )
    features, label = collect(data.read_csv(path, label="label", batch_size=2))
    assert list(features) == ["price", "city", "genres"]
    assert features["price"].dtype == np.float32 and features["city"].dtype == object
    assert label.dtype == np.float32 and label.tolist() == [1, 0, 1, 0, 1]
    price = features["price"]
    assert price[0] == 2.5 and math.isnan(price[1]) and math.isnan(price[2])
    assert price[3] == -np.inf and price[4] == 1000.0
    assert strings(features["city"]) == ["paris", "", "rome", "oslo", " lyon "]
    assert strings(features["genres"]) == ["Action|Comedy", "", "Drama", "", "x"]


def test_csv_batches_have_the_contract_shapes(tmp_path):
    path = write(tmp_path / "a.csv", "y,x,c\n" + "".join(f"{i % 2},{i},c{i}\n" for i in range(10)))
    batches = list(data.read_csv(path, label="y", batch_size=4))
    assert [int(b[1].shape[0]) for b in batches] == [4, 4, 2]
    features, label = batches[0]
    assert features["x"].shape == (4,) and features["x"].dtype == tf.float32
    assert features["c"].shape == (4,) and features["c"].dtype == tf.string
    assert label.shape == (4,) and label.dtype == tf.float32
    dropped = list(data.read_csv(path, label="y", batch_size=4, drop_remainder=True))
    assert [int(b[1].shape[0]) for b in dropped] == [4, 4]


def test_csv_crlf_bom_blank_lines_and_no_final_newline(tmp_path):
    content = "\ufeffy,x,c\r\n1,1.5,a\r\n\r\n0,,b\r\n1,3,c"
    path = write(tmp_path / "a.csv", content)
    features, label = collect(data.read_csv(path, label="y"))
    assert label.tolist() == [1, 0, 1]
    assert strings(features["c"]) == ["a", "b", "c"]
    assert features["x"][2] == 3.0
    # Without a header the BOM must not stick to the first value.
    path = write(tmp_path / "b.csv", "\ufeff1,2.5,a\r\n0,1,b")
    features, label = collect(data.read_csv(path, label="y", column_names=["y", "x", "c"]))
    assert label.tolist() == [1, 0] and features["x"].tolist() == [2.5, 1.0]


def test_csv_glob_and_list_skip_each_header(tmp_path):
    for k in range(3):
        rows = "".join(f"{(k + i) % 2},{k * 10 + i},f{k}\n" for i in range(5))
        write(tmp_path / f"part-{k}.csv", "y,x,name\n" + rows)
    expected = sorted(k * 10 + i for k in range(3) for i in range(5))
    features, label = collect(data.read_csv(str(tmp_path / "part-*.csv"), label="y"))
    assert sorted(features["x"].tolist()) == expected
    # cycle_length=1: one file after the other, in the given order.
    files = [tmp_path / f"part-{k}.csv" for k in (2, 0, 1)]
    features, _ = collect(data.read_csv(files, label="y", cycle_length=1, batch_size=4))
    assert features["x"].tolist() == [20, 21, 22, 23, 24, 0, 1, 2, 3, 4, 10, 11, 12, 13, 14]


def test_csv_different_headers_are_an_error(tmp_path):
    write(tmp_path / "a.csv", "y,x\n1,2\n")
    write(tmp_path / "b.csv", "y,z\n1,2\n")
    with pytest.raises(ValueError, match="b.csv: header"):
        data.read_csv(str(tmp_path / "*.csv"), label="y")


def test_csv_missing_files_are_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.read_csv(tmp_path / "nope.csv", label="y")
    with pytest.raises(FileNotFoundError):
        data.read_csv(str(tmp_path / "*.csv"), label="y")


def test_tsv_with_given_names_types_and_na_values(tmp_path):
    path = write(tmp_path / "a.tsv", "1\t7\tNA\tu1\n0\tNA\t2\tNA\n")
    dataset = data.read_csv(
        path,
        label="y",
        column_names=["y", "a", "b", "user"],
        delimiter="\t",
        column_types={"a": "string"},
        na_values=["NA"],
    )
    features, label = collect(dataset)
    assert strings(features["a"]) == ["7", ""]
    assert math.isnan(features["b"][0]) and features["b"][1] == 2.0
    assert strings(features["user"]) == ["u1", ""]


def test_csv_type_inference():
    rows = [["1", "2.5", "a", "", "7"], ["0", "nan", "b", "", "x"], ["1", "", "3", "", "8"]]
    types = data.infer_column_types(rows, ["y", "f", "s", "empty", "mixed"])
    assert types == {
        "y": "float",
        "f": "float",
        "s": "string",
        "empty": "string",
        "mixed": "string",
    }


def test_csv_quoted_fields(tmp_path):
    path = write(
        tmp_path / "a.csv",
        'id,title,genres\n1,"Toy Story, The (1995)",Adventure|Animation\n'
        '2,"Say ""Hi""",Drama\n3,Plain,\n',
    )
    features, label = collect(data.read_csv(path, label=None, column_types={"id": "string"}))
    assert label is None
    assert strings(features["title"]) == ["Toy Story, The (1995)", 'Say "Hi"', "Plain"]
    assert strings(features["genres"]) == ["Adventure|Animation", "Drama", ""]
    assert strings(features["id"]) == ["1", "2", "3"]


def test_csv_non_utf8_bytes_in_a_string_column(tmp_path):
    path = write(tmp_path / "a.csv", b"y,x,c\n1,1,caf\xe9\n0,2,b\n")
    features, _ = collect(data.read_csv(path, label="y"))
    assert features["c"].tolist() == [b"caf\xe9", b"b"]
    path = write(tmp_path / "b.csv", b"y,x,c\n1,1,a\n0,\xe92,b\n")
    with bad_line_error(path, 3):
        list(data.read_csv(path, label="y", column_types={"x": "float"}))


def test_csv_gzip(tmp_path):
    path = tmp_path / "a.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("y,x\r\n1,1\r\n\r\n0,oops\r\n1,3")
    report = data.ReadReport()
    features, label = collect(
        data.read_csv(path, label="y", column_types={"x": "float"}, on_error="skip", report=report)
    )
    assert features["x"].tolist() == [1.0, 3.0] and label.tolist() == [1, 1]
    assert report.locations == [(str(path), 4)]


def test_csv_lines_across_chunks(tmp_path):
    # 17-byte first line, then 16-byte lines: a CRLF straddles the 1 MiB chunk border.
    lines = ["1,1,aaaaaaaaaaa\r\n"] + [f"0,{i:06d},bbbbb\r\n" for i in range(70_000)]
    assert len(lines[0]) == 17 and len(lines[1]) == 16
    content = "".join(lines)
    border = text_module.CHUNK_BYTES
    assert content[border - 1 : border + 1] == "\r\n"
    content += "1,2,c"
    path = write(tmp_path / "big.csv", content)
    names = ["y", "x", "c"]
    features, label = collect(data.read_csv(path, label="y", column_names=names, batch_size=8192))
    assert len(label) == 70_002
    assert features["x"][:3].tolist() == [1, 0, 1] and features["x"][-1] == 2
    assert features["x"][1:-1].tolist() == list(range(70_000))
    assert not any(v.endswith(b"\r") for v in features["c"])
    # A bad line far past the first chunk is reported with its line number.
    lines[65_000] = "0,zz,b\r\n"
    path = write(tmp_path / "bad.csv", "".join(lines))
    with bad_line_error(path, 65_001):
        list(data.read_csv(path, label="y", column_names=names, column_types={"x": "float"}))


def test_csv_shuffle_is_seeded_and_complete(tmp_path):
    path = write(tmp_path / "a.csv", "y,x\n" + "".join(f"{i % 2},{i}\n" for i in range(500)))

    def order(**kwargs):
        return collect(data.read_csv(path, label="y", batch_size=64, **kwargs))[0]["x"].tolist()

    plain = list(range(500))
    dataset = data.read_csv(path, label="y", batch_size=64, shuffle_buffer=200, seed=7)
    epochs = [collect(dataset)[0]["x"].tolist() for _ in range(2)]
    assert sorted(epochs[0]) == plain and epochs[0] != plain
    assert sorted(epochs[1]) == plain and epochs[1] != epochs[0]
    # Windows of 200 rows: row 0..199 stay in the first 200 positions.
    assert sorted(epochs[0][:200]) == list(range(200))
    assert order(shuffle_buffer=200, seed=7) == epochs[0]


def test_csv_deterministic_false_reads_everything(tmp_path):
    for k in range(3):
        write(tmp_path / f"p{k}.csv", "".join(f"1,{k * 100 + i}\n" for i in range(50)))
    dataset = data.read_csv(
        str(tmp_path / "p*.csv"), label="y", column_names=["y", "x"], deterministic=False
    )
    features, _ = collect(dataset)
    assert sorted(features["x"].tolist()) == [k * 100 + i for k in range(3) for i in range(50)]


# -------------------------------------------------------------------- bad input

CSV_GOOD = "y,x,c\n1,1.5,a\n0,2,b\n"
CSV_BAD = [
    ("1,2\n", "expected 3 comma-separated fields, found 2"),
    ("1,2,a,b\n", "expected 3 comma-separated fields, found 4"),
    ("1,abc,a\n", "column `x` = `abc` is not a number"),
    ("1, ,a\n", "column `x` = ` ` is not a number"),
    ("x,1,a\n", "label `x` is not a number"),
    (",1,a\n", "label `` is not a number"),
    ("2,1,a\n", "label `2` is not 0 or 1"),
    ('1,1,"a\n', "malformed quoting"),
]


@pytest.mark.parametrize("line, reason", [CSV_BAD[i] for i in (0, 2, 4, 6, 7)])
def test_csv_bad_line_raises_with_file_and_line(tmp_path, line, reason):
    path = write(tmp_path / "data.csv", CSV_GOOD + line + "1,3,c\n")
    dataset = data.read_csv(path, label="y", column_types={"x": "float"})
    with bad_line_error(path, 4) as error:
        list(dataset)
    assert reason in str(error.value)


def test_csv_bad_lines_skipped_and_reported(tmp_path):
    content = CSV_GOOD + "".join(line + "1,3,c\n" for line, _ in CSV_BAD)
    path = write(tmp_path / "data.csv", content)
    report = data.ReadReport()
    dataset = data.read_csv(
        path, label="y", column_types={"x": "float"}, batch_size=4, on_error="skip", report=report
    )
    features, label = collect(dataset)
    # Lines are lines: an unclosed quote does not swallow the next one.
    assert features["x"].tolist() == [1.5, 2.0] + [3.0] * len(CSV_BAD)
    assert label.tolist() == [1, 0] + [1] * len(CSV_BAD)
    lines = [4 + 2 * i for i in range(len(CSV_BAD))]
    assert report.skipped == len(CSV_BAD)
    # Batches are parsed in parallel: the report holds them in the order found.
    assert sorted(report.locations) == [(str(path), n) for n in lines]
    examples = sorted(report.examples, key=lambda e: int(e.split(":")[1]))
    for example, n, (_, reason) in zip(examples, lines, CSV_BAD, strict=True):
        assert example.startswith(f"{path}:{n}: {reason}")


def test_regression_labels(tmp_path):
    path = write(tmp_path / "a.csv", "r,x\n4.5,1\n-2,2\n")
    _, label = collect(data.read_csv(path, label="r", task="regression"))
    assert label.tolist() == [4.5, -2.0]
    path = write(tmp_path / "b.csv", "r,x\n4.5,1\ninf,2\n")
    with bad_line_error(path, 3) as error:
        list(data.read_csv(path, label="r", task="regression"))
    assert "not a finite number" in str(error.value)


def test_skip_report_counts_many_lines_across_batches_once(tmp_path, caplog):
    rows = [f"{i % 2},{i},c\n" for i in range(100)]
    bad = [7, 30, 31, 64, 99]
    for i in bad:
        rows[i] = f"1,x{i},c\n"
    path = write(tmp_path / "a.csv", "y,x,c\n" + "".join(rows))
    report = data.ReadReport(max_examples=3)
    dataset = data.read_csv(
        path, label="y", column_types={"x": "float"}, batch_size=16, on_error="skip", report=report
    )
    for _ in range(2):
        features, _ = collect(dataset)
        assert len(features["x"]) == 100 - len(bad)
    assert report.skipped == len(bad)
    assert sorted(line for _, line in report.locations) == [i + 2 for i in bad]
    assert len(report.examples) == 3 and "is not a number" in report.examples[0]
    assert "Skipped malformed line" in caplog.text and str(path) in caplog.text
    assert "skipped=5" in repr(report)


def test_skip_without_report_still_logs(tmp_path, caplog):
    path = write(tmp_path / "a.csv", "y,x\n1,1\n1,2,3\n")
    features, _ = collect(data.read_csv(path, label="y", on_error="skip"))
    assert features["x"].tolist() == [1.0]
    assert f"{path}:3: expected 2" in caplog.text


def test_bad_options(tmp_path):
    path = write(tmp_path / "a.csv", "y,x\n1,1\n")
    with pytest.raises(ValueError, match="on_error"):
        data.read_csv(path, label="y", on_error="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        data.read_csv(path, label="y", batch_size=0)
    with pytest.raises(ValueError, match="Label column"):
        data.read_csv(path, label="z")
    with pytest.raises(ValueError, match="delimiter"):
        data.read_csv(path, label="y", delimiter="::")
    with pytest.raises(ValueError, match="task"):
        data.read_libsvm(path, task="multiclass")


# ---------------------------------------------------------------------- Criteo / Avazu

CRITEO_ROW = "1\t5\t\t-1\t" + "\t".join(["0"] * 10) + "\t68fd1e64\t\t" + "\t".join(["a"] * 24)


def test_criteo_tsv(tmp_path):
    path = write(tmp_path / "day_0", CRITEO_ROW + "\n" + CRITEO_ROW.replace("1\t5", "0\t7", 1))
    features, label = collect(data.read_criteo(path))
    assert list(features) == list(data.CRITEO_COLUMNS[1:])
    assert label.tolist() == [1, 0]
    assert features["I1"].tolist() == [5, 7] and math.isnan(features["I2"][0])
    assert features["I3"][0] == -1
    assert strings(features["C1"]) == ["68fd1e64"] * 2 and strings(features["C2"]) == ["", ""]
    unlabeled = write(tmp_path / "test", CRITEO_ROW.split("\t", 1)[1] + "\n")
    features, label = collect(data.read_criteo(unlabeled, with_label=False))
    assert label is None and features["I1"].tolist() == [5]


def test_criteo_bad_lines(tmp_path):
    short = "\t".join(CRITEO_ROW.split("\t")[:39])
    path = write(tmp_path / "day", "\n".join([CRITEO_ROW, short, CRITEO_ROW]) + "\n")
    with bad_line_error(path, 2) as error:
        list(data.read_criteo(path))
    assert "expected 40 TAB-separated fields, found 39" in str(error.value)
    report = data.ReadReport()
    _, label = collect(data.read_criteo(path, on_error="skip", report=report))
    assert len(label) == 2 and report.locations == [(str(path), 2)]


def test_avazu_header_and_given_names(tmp_path):
    header = ",".join(data.AVAZU_COLUMNS)
    row = "1000,1,14102100,1005,0," + ",".join(f"v{i}" for i in range(19))
    with_header = write(tmp_path / "train.csv", f"{header}\n{row}\n")
    features, label = collect(data.read_avazu(with_header))
    assert "id" not in features and len(features) == 22 and label.tolist() == [1]
    assert strings(features["hour"]) == ["14102100"] and features["C1"].dtype == object
    no_header = write(tmp_path / "dev.csv", f"{row}\n{row.replace(',1,', ',0,', 1)}\n")
    features, label = collect(data.read_avazu(no_header, header=False))
    assert label.tolist() == [1, 0] and strings(features["C21"]) == ["v18", "v18"]


# --------------------------------------------------------------------------- libSVM


def test_libsvm_labels_ids_weights_and_padding(tmp_path):
    path = write(tmp_path / "a.svm", "1 3:1 5:0.5\n-1 1:2\n\n+1\n0 2:1\t7:-3e-1  ")
    stats = data.scan_libsvm(path)
    assert stats == data.LibSVMStats(rows=4, malformed=0, max_length=2, max_index=7, max_field=-1)
    features, label = collect(data.read_libsvm(path, batch_size=3, name="x"))
    assert label.tolist() == [1, 0, 1, 0]
    assert list(features) == ["x", "x_weights"] and features["x"].dtype == np.int64
    assert features["x"].tolist() == [[3, 5], [1, -1], [-1, -1], [2, 7]]
    np.testing.assert_allclose(features["x_weights"], [[1, 0.5], [2, 0], [0, 0], [1, -0.3]])
    field = data.libsvm_feature(path)
    assert field == tf_fm.MultiValuedFeature(
        "features", encoding="integer", num_ids=8, max_length=2, weighted=True
    )
    assert data.libsvm_feature(vocabulary_size=100, max_length=3).num_ids == 100


def test_libsvm_regression_keeps_labels(tmp_path):
    path = write(tmp_path / "a.fm", "3.5 1:1\n-2 2:1\n")
    _, label = collect(data.read_libsvm(path, task="regression"))
    assert label.tolist() == [3.5, -2.0]


def test_libffm(tmp_path):
    path = write(tmp_path / "a.ffm", "1 0:3:1 2:9:0.5\n0 1:4:1\n")
    features, label = collect(data.read_libffm(path, max_length=2))
    assert features["features"].tolist() == [[3, 9], [4, -1]]
    assert features["features_fields"].tolist() == [[0, 2], [1, -1]]
    assert features["features_weights"].tolist() == [[1, 0.5], [1, 0]]


LIBSVM_BAD = [
    ("1 3:1 x:2\n", "entry 2 `x:2` is not idx:val"),
    ("1 3:1 4:abc\n", "entry 2 `4:abc` is not idx:val"),
    ("1 3\n", "entry 1 `3` is not idx:val"),
    ("yes 3:1\n", "label `yes` is not a number"),
    ("2 3:1\n", "label `2` is not 0 or 1"),
    ("1 1:1 2:1 3:1\n", "3 entries, more than max_length=2"),
]


@pytest.mark.parametrize("line, reason", [LIBSVM_BAD[i] for i in (0, 3, 5)])
def test_libsvm_bad_line_raises(tmp_path, line, reason):
    path = write(tmp_path / "a.svm", "1 1:1\n0 2:1\n" + line + "1 3:1\n")
    with bad_line_error(path, 3) as error:
        list(data.read_libsvm(path, max_length=2))
    assert reason in str(error.value)


def test_libsvm_bad_lines_skipped_and_reported(tmp_path):
    content = "1 1:1\n" + "".join(line + "0 2:1\n" for line, _ in LIBSVM_BAD)
    path = write(tmp_path / "a.svm", content)
    report = data.ReadReport()
    features, label = collect(
        data.read_libsvm(path, max_length=2, on_error="skip", report=report, batch_size=3)
    )
    assert features["features"][:, 0].tolist() == [1] + [2] * len(LIBSVM_BAD)
    assert label.tolist() == [1] + [0] * len(LIBSVM_BAD)
    lines = [2 + 2 * i for i in range(len(LIBSVM_BAD))]
    assert sorted(report.locations) == [(str(path), n) for n in lines]
    examples = sorted(report.examples, key=lambda e: int(e.split(":")[1]))
    for example, n, (_, reason) in zip(examples, lines, LIBSVM_BAD, strict=True):
        assert example.startswith(f"{path}:{n}: {reason}")


def test_libffm_bad_entry(tmp_path):
    path = write(tmp_path / "a.ffm", "1 0:3:1\n1 3:1\n")
    with bad_line_error(path, 2) as error:
        list(data.read_libffm(path))
    assert "entry 1 `3:1` is not field:idx:val" in str(error.value)


def test_libffm_without_fields_feeds_an_fm_model(tmp_path):
    path = write(tmp_path / "a.ffm", "1 0:0:1 1:4:0.5\n0 0:2:1\n1 0:1:1 1:3:2 2:4:1\n")
    field = data.libsvm_feature(vocabulary_size=5, max_length=3)
    model = tf_fm.FM([field], embedding_dim=4)
    dataset = data.read_libffm(path, max_length=field.max_length, with_fields=False)
    features, _ = next(iter(dataset))
    assert sorted(features) == ["features", "features_weights"]
    assert model(features).shape[0] == 3


# ------------------------------------------------------------------------ DataFrame


def test_dataframe_types_missing_and_labels():
    df = pd.DataFrame(
        {
            "click": [1, -1, 0],
            "user": [10, 11, 12],
            "price": [1.5, None, 3.0],
            "city": ["paris", None, "rome"],
            "kind": pd.Categorical(["a", "b", None]),
            "flag": [True, False, True],
        }
    )
    dataset = data.read_dataframe(df, label="click", column_types={"user": "string"}, batch_size=2)
    batches = list(dataset)
    assert [int(b[1].shape[0]) for b in batches] == [2, 1]
    features, label = collect(dataset)
    assert label.tolist() == [1, 0, 0]
    assert strings(features["user"]) == ["10", "11", "12"]
    assert features["price"].dtype == np.float32 and math.isnan(features["price"][1])
    assert strings(features["city"]) == ["paris", "", "rome"]
    assert strings(features["kind"]) == ["a", "b", ""]
    # Booleans are categorical (infer_schema's rule): strings, as a CSV has them.
    assert strings(features["flag"]) == ["True", "False", "True"]


def test_dataframe_bad_values_name_column_and_row():
    df = pd.DataFrame({"y": [1, 0, 5], "x": ["1", "", "2"]}, index=["r0", "r1", "r2"])
    with pytest.raises(ValueError, match=r"Label .y., row .r2.: 5 is not 0 or 1"):
        data.read_dataframe(df, label="y")
    df = pd.DataFrame({"y": [1, 0], "x": ["1", "oops"]})
    with pytest.raises(ValueError, match=r"Column 'x', row 1: 'oops' is not a number"):
        data.read_dataframe(df, label="y", column_types={"x": "float"})
    df = pd.DataFrame({"y": [1, 0], "x": ["1", ""]})
    features, _ = collect(data.read_dataframe(df, label="y", column_types={"x": "float"}))
    assert features["x"][0] == 1 and math.isnan(features["x"][1])


def test_dataframe_shuffle():
    df = pd.DataFrame({"y": [1.0] * 100, "x": np.arange(100.0)})
    dataset = data.read_dataframe(df, label="y", shuffle=True, seed=3, batch_size=32)
    first = collect(dataset)[0]["x"].tolist()
    second = collect(dataset)[0]["x"].tolist()
    assert sorted(first) == list(range(100)) and first != list(range(100)) and first != second
    again = data.read_dataframe(df, label="y", shuffle=True, seed=3, batch_size=32)
    assert collect(again)[0]["x"].tolist() == first


# ------------------------------------------------------------------------- TFRecord


def assert_same_data(a, b):
    (fa, la), (fb, lb) = a, b
    assert list(fa) == list(fb)
    for name in fa:
        assert same(fa[name], fb[name]), name
    assert same(la, lb)


def test_tfrecord_round_trip_csv(tmp_path):
    rows = "".join(
        f"{i % 2},{'' if i % 5 == 0 else i / 4},c{i % 7},{'inf' if i == 3 else i}\n"
        for i in range(103)
    )
    path = write(tmp_path / "a.csv", "y,x,c,z\n" + rows)
    dataset = data.read_csv(path, label="y", batch_size=10)
    shards = data.write_tfrecords(dataset, tmp_path / "out" / "train", num_shards=3)
    assert [s.rsplit("/", 1)[1] for s in shards] == [
        f"train-0000{i}-of-00003.tfrecord" for i in range(3)
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [s.rsplit("/", 1)[1] for s in shards] + ["train.spec.json"]
    )
    back = data.read_tfrecords(str(tmp_path / "out" / "train-*.tfrecord"), batch_size=16)
    original = collect(dataset)
    assert_same_data(collect(back), original)
    assert np.isnan(original[0]["x"]).sum() == 21 and np.isinf(original[0]["z"]).sum() == 1
    shuffled = collect(data.read_tfrecords(shards, shuffle_buffer=50, seed=1))
    assert sorted(shuffled[0]["z"].tolist()) == sorted(original[0]["z"].tolist())


def test_tfrecord_round_trip_libffm_gzip(tmp_path):
    path = write(
        tmp_path / "a.ffm", "".join(f"{i % 2} 0:{i}:1 1:{i + 1}:0.5\n0\n" for i in range(20))
    )
    dataset = data.read_libffm(path, batch_size=8)
    shards = data.write_tfrecords(dataset, tmp_path / "ffm", num_shards=2, compression_type="GZIP")
    assert all(s.endswith(".tfrecord.gz") for s in shards)
    assert_same_data(collect(data.read_tfrecords(shards)), collect(dataset))


def test_tfrecord_failed_write_leaves_no_shard(tmp_path):
    rows = "y,x\n" + "1,1\n" * 2000 + "1,oops\n"
    path = write(tmp_path / "a.csv", rows)
    dataset = data.read_csv(path, label="y", column_types={"x": "float"}, batch_size=100)
    with pytest.raises(tf.errors.InvalidArgumentError, match="a.csv:2002"):
        data.write_tfrecords(dataset, tmp_path / "out" / "part", num_shards=2)
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------- real data samples


def raw_rows(path, count, delimiter, skip=0):
    with open(path, newline="") as f:
        lines = [next(f) for _ in range(count + skip)][skip:]
    return [line.rstrip("\r\n").split(delimiter) for line in lines]


def as_float(text):
    return float("nan") if text == "" else float(text)


def test_sample_criteo_raw(shared_data):
    path = shared_data / "criteo_widresdnn_sample" / "train.csv"
    features, label = collect(data.read_criteo(path, batch_size=2048))
    assert len(label) == 7200 and int(label.sum()) == 1549
    for i, row in enumerate(raw_rows(path, 3, "\t")):
        assert label[i] == float(row[0])
        for j, name in enumerate(data.CRITEO_NUMERIC):
            assert same(features[name][i], np.float32(as_float(row[1 + j]))), name
        for j, name in enumerate(data.CRITEO_CATEGORICAL):
            assert features[name][i].decode() == row[14 + j], name
    assert (features["C22"] == b"").sum() > 0 and np.isnan(features["I12"]).sum() > 0


def test_sample_criteo_tiny_through_read_csv(shared_data):
    path = shared_data / "criteo_tiny_deeplight" / "tiny_train_input.csv"
    types = {
        **dict.fromkeys(data.CRITEO_NUMERIC, "float"),
        **dict.fromkeys(data.CRITEO_CATEGORICAL, "string"),
    }
    dataset = data.read_csv(
        path, label="label", column_names=list(data.CRITEO_COLUMNS), column_types=types
    )
    features, label = collect(dataset)
    assert len(label) == 10_000 and int(label.sum()) == 2563
    row = raw_rows(path, 1, ",")[0]
    assert features["I1"][0] == float(row[1]) and features["C26"][0].decode() == row[-1]


def test_sample_avazu(shared_data):
    folder = shared_data / "avazu_widresdnn_sample"
    features, label = collect(data.read_avazu(folder / "train.csv"))
    assert len(label) == 8087 and int(label.sum()) == 1397 and len(features) == 22
    row = raw_rows(folder / "train.csv", 1, ",", skip=1)[0]
    assert features["hour"][0].decode() == row[2] and features["C21"][0].decode() == row[-1]
    features, label = collect(data.read_avazu(folder / "dev.csv", header=False))
    assert len(label) == 480 and int(label.sum()) == 86  # SOURCE.txt says 479


def test_sample_ipinyou_libfm(shared_data):
    path = shared_data / "ipinyou_deepctr_sample" / "train.fm.txt"
    field = data.libsvm_feature(path)
    assert (field.num_ids, field.max_length) == (133_465, 16)
    features, label = collect(data.read_libsvm(path, max_length=16, batch_size=4096))
    assert len(label) == 26_773 and int(label.sum()) == 255
    first = raw_rows(path, 1, " ")[0]
    assert features["features"][0].tolist() == [int(t.split(":")[0]) for t in first[1:]]
    assert (features["features"] >= 0).all() and (features["features_weights"] == 1).all()


def test_sample_xlearn_libffm(shared_data):
    path = shared_data / "xlearn_criteo_small" / "small_train.txt"
    stats = data.scan_libsvm(path, ffm=True)
    assert (stats.rows, stats.max_length, stats.max_field) == (200, 31, 17)
    features, label = collect(data.read_libffm(path, max_length=31))
    assert len(label) == 200 and int(label.sum()) == 48
    first = raw_rows(path, 1, " ")[0]
    entries = [t.split(":") for t in first[1:]]
    n = len(entries)
    assert features["features_fields"][0, :n].tolist() == [int(e[0]) for e in entries]
    assert features["features"][0, :n].tolist() == [int(e[1]) for e in entries]
    np.testing.assert_allclose(features["features_weights"][0, :n], [float(e[2]) for e in entries])
    assert (features["features"][0, n:] == -1).all()


def test_sample_movielens_crlf_header(shared_data):
    folder = shared_data / "ml-latest-small"
    assert b"\r\n" in (folder / "ratings.csv").read_bytes()[:100]
    dataset = data.read_csv(
        folder / "ratings.csv",
        label="rating",
        task="regression",
        column_types={"userId": "string", "movieId": "string"},
        batch_size=8192,
    )
    features, label = collect(dataset)
    assert len(label) == 100_836
    assert set(np.unique(label)) == {x / 2 for x in range(1, 11)}
    assert strings(features["userId"][:2]) == ["1", "1"] and strings(features["movieId"][:2]) == [
        "1",
        "3",
    ]
    assert label[0] == 4.0 and features["timestamp"][0] == np.float32(964982703)
    assert not any(v.endswith(b"\r") for v in features["movieId"])
    movies, _ = collect(
        data.read_csv(folder / "movies.csv", label=None, column_types={"movieId": "string"})
    )
    assert len(movies["title"]) == 9742
    titles = strings(movies["title"])
    assert "American President, The (1995)" in titles
    assert strings(movies["genres"][:1]) == ["Adventure|Animation|Children|Comedy|Fantasy"]


@pytest.mark.parametrize("module", ["delimited", "libsvm", "tfrecord"])
def test_a_reader_module_imports_first_in_a_fresh_process(module):
    # `from tf_fm.data import text` inside the module once sent `tf_fm.data` into
    # `readers`, which imports the module back: a circular ImportError.
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", f"import tf_fm.data.{module}"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
