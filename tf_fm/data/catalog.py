"""The file formats tf_fm reads, by name (no TensorFlow import: `tf-fm --help` lists them)."""

FORMATS = {
    "criteo": "raw Criteo DAC: TAB separated, no header, label I1..I13 C1..C26 "
    "(a file without the label column is read for predict)",
    "avazu": "Avazu CSV: id, click, hour, C1, ... (header detected from the first line)",
    "csv": "CSV/TSV with a header line (--label, --delimiter, --separator)",
    "libsvm": "libSVM / libFM lines: label idx:val idx:val ...",
    "libffm": "libFFM lines: label field:idx:val ...",
    "tfrecord": "shards written by tf_fm.data.write_tfrecords (with their .spec.json)",
}
