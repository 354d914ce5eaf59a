"""Tasks of your own (params ``task_defs``): file formats, labels, dev split, few labels, unlabelled text, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import paths
from pipeline.data.metrics import _CLASSIFICATION, _REGRESSION, compute_metrics
from pipeline.data.tasks import CLASSIFICATION_METRICS, REGRESSION_METRICS, resolve_task
from pipeline.errors import DataFormatError, ParamsError, UnknownTaskError
from pipeline.params import Params, load_params
from pipeline.stages.augment import build_transfer_set
from pipeline.stages.prepare import run_prepare, unlabelled_record
from tests.conftest import make_sentence

INTENTS = ["card_lost", "balance", "transfer_failed", "top_up"]


def write_csv(path: Path, header: list[str], rows: list[list[object]], delimiter: str = ",") -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def intent_rows(n: int, seed: int = 0, classes: list[str] = INTENTS) -> list[list[str]]:
    """``n`` distinct (text, intent) rows, intents cycling so every class has n / len(classes) rows."""
    rng = random.Random(seed)
    return [[f"{make_sentence(rng, i % 2 == 0)} {classes[i % len(classes)]} {i}", classes[i % len(classes)]]
            for i in range(n)]  # fmt: skip


def own_params(files: Path, skip_bad_rows: bool = False, **definition: object) -> Params:
    spec = {"train": "train.csv", "text_columns": ["text"], "label_column": "intent", **definition}
    return Params.model_validate({"tasks": ["intents"], "task_defs": {"intents": spec},
                                  "data": {"files_dir": str(files), "skip_bad_rows": skip_bad_rows}})  # fmt: skip


def read(prepared: Path, split: str) -> pa.Table:
    if split == "unlabelled":
        return pq.read_table(paths.unlabelled_text("intents", prepared))
    return pq.read_table(paths.prepared_split("intents", split, prepared))


def texts(table: pa.Table) -> list[str]:
    return table.column("text_a").to_pylist()


def test_csv_task_takes_labels_from_train_and_a_stratified_seeded_dev_split(tmp_path):
    write_csv(tmp_path / "files" / "train.csv", ["text", "intent"], intent_rows(200))
    params = own_params(tmp_path / "files", dev_fraction=0.2)
    counts = run_prepare("intents", params, tmp_path / "prepared")
    assert counts == {"train": 160, "dev": 40, "unlabelled": 0}

    task = resolve_task("intents", params, tmp_path / "prepared")
    assert task.labels == tuple(sorted(INTENTS)) and task.metrics == ("accuracy", "macro_f1")
    record = json.loads((tmp_path / "prepared" / "intents" / "task.json").read_text())
    assert record["label_counts"]["dev"] == {label: 10 for label in sorted(INTENTS)}  # 20% of each class's 50
    assert "stratified" in record["dev"]
    train, dev = read(tmp_path / "prepared", "train"), read(tmp_path / "prepared", "dev")
    assert not set(texts(train)) & set(texts(dev))
    # every label index points at the label written beside the text in the file
    written = dict((text, label) for text, label in intent_rows(200))
    for table in (train, dev):
        for text, label in zip(texts(table), table.column("label").to_pylist()):
            assert task.labels[label] == written[text]

    run_prepare("intents", params, tmp_path / "again")
    assert read(tmp_path / "again", "dev").equals(dev)  # seeded
    other = own_params(tmp_path / "files", dev_fraction=0.2).model_copy(update={"seed": 7})
    run_prepare("intents", other, tmp_path / "seed7")
    assert texts(read(tmp_path / "seed7", "dev")) != texts(dev)


def test_numeric_labels_sort_as_numbers_and_listed_labels_keep_their_order(tmp_path):
    rows = [[f"query {i}", str([2, 10, 1][i % 3])] for i in range(30)]
    write_csv(tmp_path / "files" / "train.csv", ["text", "intent"], rows)
    run_prepare("intents", own_params(tmp_path / "files"), tmp_path / "prepared")
    assert resolve_task("intents", own_params(tmp_path / "files"), tmp_path / "prepared").labels == ("1", "2", "10")

    listed = own_params(tmp_path / "files", labels=["10", "2", "1"])
    run_prepare("intents", listed, tmp_path / "listed")
    task = resolve_task("intents", listed, tmp_path / "listed")
    assert task.labels == ("10", "2", "1") and task.metrics == ("accuracy", "macro_f1")
    train = read(tmp_path / "listed", "train")
    assert all(task.labels[label] == text_label for label, text_label in
               zip(train.column("label").to_pylist(), [dict(rows)[t] for t in texts(train)]))  # fmt: skip


def test_jsonl_pair_task_with_dev_and_test_files(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    for split, n in (("train", 30), ("dev", 8), ("test", 6)):
        lines = [json.dumps({"q1": f"how do i {i} {split}", "q2": f"can i {i}", "same": i % 2}) for i in range(n)]
        (files / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    params = Params.model_validate({
        "tasks": ["dups"], "data": {"files_dir": str(files)},
        "task_defs": {"dups": {"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl",
                               "text_columns": ["q1", "q2"], "label_column": "same"}},
    })  # fmt: skip
    assert run_prepare("dups", params, tmp_path / "prepared") == {"train": 30, "dev": 8, "test": 6, "unlabelled": 0}
    task = resolve_task("dups", params, tmp_path / "prepared")
    assert task.is_pair and task.labels == ("0", "1") and task.metrics == ("accuracy", "f1")
    assert task.eval_splits == ("dev", "test")
    test = pq.read_table(paths.prepared_split("dups", "test", tmp_path / "prepared"))
    assert test.column("text_b").to_pylist() == [f"can i {i}" for i in range(6)]
    assert test.column("label").to_pylist() == [i % 2 for i in range(6)]


def test_parquet_float_labels_make_a_regression_task(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    scores = [round(0.37 * i % 5, 2) for i in range(40)]
    pq.write_table(pa.table({"a": [f"sentence {i}" for i in range(40)], "b": [f"other {i}" for i in range(40)],
                             "score": scores}), files / "train.parquet")  # fmt: skip
    params = Params.model_validate({
        "tasks": ["sim"], "data": {"files_dir": str(files)},
        "task_defs": {"sim": {"train": "train.parquet", "text_columns": ["a", "b"], "label_column": "score"}},
    })  # fmt: skip
    run_prepare("sim", params, tmp_path / "prepared")
    task = resolve_task("sim", params, tmp_path / "prepared")
    assert task.is_regression and task.metrics == ("pearson", "spearman")
    dev = pq.read_table(paths.prepared_split("sim", "dev", tmp_path / "prepared"))
    assert dev.num_rows == 4 and dev.schema.field("label").type == pa.float32()
    for a, score in zip(dev.column("text_a").to_pylist(), dev.column("label").to_pylist()):
        assert score == pytest.approx(scores[int(a.split()[1])])


def test_few_labels_keep_n_per_class_and_the_rest_becomes_unlabelled_text(tmp_path):
    write_csv(tmp_path / "files" / "train.csv", ["text", "intent"], intent_rows(200))
    (tmp_path / "files" / "more.txt").write_text("a new query\n\n" + intent_rows(200)[3][0] + "\na new query\n")
    full = own_params(tmp_path / "files", dev_fraction=0.2)
    few = own_params(tmp_path / "files", dev_fraction=0.2, labelled_per_class=5, unlabelled=["more.txt"])
    run_prepare("intents", full, tmp_path / "full")
    counts = run_prepare("intents", few, tmp_path / "few")
    assert read(tmp_path / "few", "dev").equals(read(tmp_path / "full", "dev"))  # the same dev split
    train = read(tmp_path / "few", "train")
    assert np.bincount(train.column("label").to_numpy()).tolist() == [5, 5, 5, 5]
    unlabelled = read(tmp_path / "few", "unlabelled")
    # the 140 other train rows, plus the one new query of more.txt (its repeat and a train text dropped)
    assert counts["unlabelled"] == unlabelled.num_rows == 160 - 20 + 1
    assert "a new query" in texts(unlabelled)
    assert not set(texts(unlabelled)) & (set(texts(train)) | set(texts(read(tmp_path / "few", "dev"))))
    assert unlabelled_record(paths.unlabelled_text("intents", tmp_path / "few"))["duplicates_dropped"] == 2
    assert "unlabelled" not in json.loads((tmp_path / "few" / "intents" / "task.json").read_text())["rows"]


def test_unlabelled_rows_join_the_transfer_set_flagged_and_unaugmented_by_default(tmp_path):
    write_csv(tmp_path / "files" / "train.csv", ["text", "intent"], intent_rows(40))
    (tmp_path / "files" / "raw.txt").write_text("\n".join(f"raw query number {i}" for i in range(10)) + "\n")
    params = own_params(tmp_path / "files", unlabelled=["raw.txt"])
    run_prepare("intents", params, tmp_path / "prepared")
    task = resolve_task("intents", params, tmp_path / "prepared")
    train, unlabelled = read(tmp_path / "prepared", "train"), read(tmp_path / "prepared", "unlabelled")

    def tagger(sentences):
        return [(s.split(), ["NN"] * len(s.split())) for s in sentences]

    table = build_transfer_set(train, task, params.augment, 0, tagger, unlabelled)
    flagged = table.filter(table.column("is_unlabelled"))
    assert texts(flagged) == [f"raw query number {i}" for i in range(10)]
    assert flagged.column("label").null_count == 10 and not any(flagged.column("is_original").to_pylist())
    # ids after train's 36 (40 rows minus a dev split of 4): an unlabelled row is never taken for a labelled original
    assert train.column("id").to_pylist() == list(range(36))
    assert flagged.column("source_id").to_pylist() == list(range(36, 46))
    originals = table.filter(table.column("is_original"))
    assert originals.column("source_id").to_pylist() == list(range(36))
    assert len(np.unique(table.column("source_id").to_numpy())) == 46  # the MKD budget counts 46 originals

    augmented = build_transfer_set(
        train, task, params.augment.model_copy(update={"augment_unlabelled": True}), 0, tagger, unlabelled
    )
    assert augmented.filter(augmented.column("is_unlabelled")).num_rows > 10  # variants, flagged unlabelled too


def test_predefined_metrics_and_macro_f1(tmp_path):
    assert set(_CLASSIFICATION) == set(CLASSIFICATION_METRICS) and set(_REGRESSION) == set(REGRESSION_METRICS)
    write_csv(tmp_path / "files" / "train.csv", ["text", "intent"], intent_rows(40))
    params = own_params(tmp_path / "files", metrics=["macro_f1", "mcc"])
    run_prepare("intents", params, tmp_path / "prepared")
    task = resolve_task("intents", params, tmp_path / "prepared")
    gold = np.array([0, 0, 1, 2, 3, 3])
    logits = np.eye(4)[[0, 1, 1, 2, 3, 0]]
    # per class F1: 1/2, 2/3, 1, 2/3
    assert compute_metrics(task, logits, gold)["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 1 + 2 / 3) / 4)
    with pytest.raises(ParamsError, match=r"task_defs.intents.metrics: \['pearson'\] do not apply"):
        run_prepare("intents", own_params(tmp_path / "files", metrics=["pearson"]), tmp_path / "bad")


@pytest.mark.parametrize(
    ("definition", "match"),
    [
        ({"intents": {"train": "t.xlsx", "text_columns": ["text"]}}, r"t.xlsx: unknown file format '.xlsx'"),
        ({"sst2": {"train": "t.csv", "text_columns": ["text"]}}, "task_defs.sst2: the name of a built-in GLUE task"),
        ({"intents": {"train": "t.csv", "text_columns": ["text"], "metrics": ["bleu"]}}, "unknown metric 'bleu'"),
        ({"intents": {"train": "t.csv", "text_columns": ["a", "b", "c"]}}, "text_columns"),
        ({"intents": {"train": "t.csv", "text_columns": ["t"], "problem": "regression", "labels": ["a", "b"]}},
         "a regression task has no labels"),
    ],
)  # fmt: skip
def test_bad_task_definitions_name_the_key(tmp_path, definition, match):
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"tasks": ["sst2"], "task_defs": definition}))
    with pytest.raises(ParamsError, match=match):
        load_params(path)


def test_a_task_neither_declared_nor_built_in_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"tasks": ["tickets"]}))
    with pytest.raises(ParamsError, match="unknown task 'tickets': not declared in task_defs"):
        load_params(path)


def test_a_declared_task_before_prepare_says_to_run_prepare(tmp_path):
    params = own_params(tmp_path)
    with pytest.raises(UnknownTaskError, match="run: python -m pipeline prepare --task intents"):
        resolve_task("intents", params, tmp_path / "prepared")


GOOD = [["where is my card", "card_lost"], ["what is my balance", "balance"], ["top up please", "top_up"]]


@pytest.mark.parametrize(
    ("train", "dev", "definition", "match"),
    [
        (None, None, {}, r"train.csv: file not found \(paths in task_defs are relative to data.files_dir\)"),
        (("text,label\n", GOOD), None, {},
         r"train.csv:1: missing column 'intent'; the header has \['text', 'label'\]"),
        (("text,intent\n", [*GOOD, ["  ", "balance"]]), None, {}, r"train.csv:5: empty text in column 'text'"),
        (("text,intent\n", [*GOOD, ["ok", ""]]), None, {}, r"train.csv:5: empty label in column 'intent'"),
        (("text,intent\n", GOOD * 4), ("text,intent\n", [["hello", "card_stolen"]]), {"dev": "dev.csv"},
         r"dev.csv:2: label 'card_stolen' in column 'intent' is not a label of task intents"),
        (("text,intent\n", [["a", "1"], ["b", "2"], ["c", "0.5"]]), None, {"problem": "classification"},
         r"train.csv:4: label '0.5' in column 'intent' is a fraction, but the task is a classification task"),
        (("text,intent\n", [["a", "0.5"], ["b", "high"]]), None, {"problem": "regression"},
         r"train.csv:3: score 'high' in column 'intent' is not a number"),
        (("text;intent\n", [["where is my card;card_lost"]]), None, {},
         r"train.csv:1: missing column 'text'; the header has \['text;intent'\] \(the header splits on ';', not ','"),
        (("text,intent\n", [["a", "b", "c"]]), None, {}, r"train.csv:2: 3 fields, the header has 2"),
    ],
)  # fmt: skip
def test_bad_input_stops_prepare_naming_file_row_and_column_and_writes_nothing(tmp_path, train, dev, definition, match):
    files = tmp_path / "files"
    files.mkdir()
    for name, content in (("train.csv", train), ("dev.csv", dev)):
        if content is not None:
            header, rows = content
            (files / name).write_text(header + "".join(",".join(row) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(DataFormatError, match=match):
        run_prepare("intents", own_params(files, **definition), tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()  # everything is read and checked before anything is written


def test_an_undecodable_byte_names_line_and_column(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "train.csv").write_bytes(b"text,intent\nwhere is my card,card_lost\ncaf\xe9 payment,balance\n")
    with pytest.raises(DataFormatError, match=r"train.csv:3: not valid UTF-8 \(byte 0xe9 at column 4\)"):
        run_prepare("intents", own_params(files), tmp_path / "prepared")


def test_skip_bad_rows_leaves_them_out_and_counts_them(tmp_path):
    files = tmp_path / "files"
    write_csv(files / "train.csv", ["text", "intent"], [*intent_rows(20), ["", "balance"], ["fine text", ""]])
    counts = run_prepare("intents", own_params(files, skip_bad_rows=True), tmp_path / "prepared")
    assert counts["train"] + counts["dev"] == 20
    assert json.loads((tmp_path / "prepared" / "intents" / "task.json").read_text())["skipped_rows"] == 2


def test_tsv_json_array_and_txt_readers(tmp_path):
    from pipeline.data.files import read_rows

    tsv = tmp_path / "a.tsv"
    tsv.write_text('text\tlabel\nsays "hi", twice\tpos\n', encoding="utf-8")
    rows = read_rows(tsv, ["text"], "label")
    assert rows.texts == [['says "hi", twice']] and rows.labels == ["pos"] and rows.places == [f"{tsv}:2"]
    array = tmp_path / "b.json"
    array.write_text(json.dumps([{"text": "one", "label": 3}, {"text": "two", "label": 4.0}]))
    rows = read_rows(array, ["text"], "label")
    assert rows.labels == [3, 4.0] and rows.places == [f"{array}: item 1", f"{array}: item 2"]
    with pytest.raises(DataFormatError, match=r"b.json: item 1: missing key 'query'"):
        read_rows(array, ["query"], "label")
    repeated = tmp_path / "r.json"  # a repeated key in an array's object names the item; skipped, the rest is read
    repeated.write_text(
        '[{"text": "one", "label": 3}, {"text": "two", "label": 4, "label": 5}, {"text": "x", "label": 6}]'
    )
    with pytest.raises(DataFormatError, match=r"r.json: item 2: key 'label' appears more than once in the object$"):
        read_rows(repeated, ["text"], "label")
    rows = read_rows(repeated, ["text"], "label", skip_bad_rows=True)
    assert rows.texts == [["one", "x"]] and rows.labels == [3, 6] and len(rows.skipped) == 1
    broken = tmp_path / "c.jsonl"
    broken.write_text('{"text": "ok", "label": 1}\n{"text": "no end"\n')
    with pytest.raises(DataFormatError, match=r"c.jsonl:2: not valid JSON"):
        read_rows(broken, ["text"], "label")


def test_train_rows_repeating_a_dev_or_test_row_are_dropped_and_counted(tmp_path):
    rows = intent_rows(40)
    dev, test = rows[:4], rows[4:6]
    files = tmp_path / "files"
    write_csv(files / "train.csv", ["text", "intent"], rows)  # repeats all 4 dev rows and the 2 test rows
    write_csv(files / "dev.csv", ["text", "intent"], dev)
    write_csv(files / "test.csv", ["text", "intent"], test)
    counts = run_prepare("intents", own_params(files, dev="dev.csv", test="test.csv"), tmp_path / "prepared")
    train = read(tmp_path / "prepared", "train")
    assert counts["train"] == 34 and texts(train) == [text for text, _ in rows[6:]]
    assert train.column("id").to_pylist() == list(range(34))
    record = json.loads((tmp_path / "prepared" / "intents" / "task.json").read_text())
    assert record["train_overlap_dropped"] == 6


def test_a_dev_split_taken_from_train_leaves_no_copy_of_its_rows_in_train(tmp_path):
    rows = intent_rows(40)
    write_csv(tmp_path / "files" / "train.csv", ["text", "intent"], rows + rows)  # every row twice
    run_prepare("intents", own_params(tmp_path / "files", dev_fraction=0.2), tmp_path / "prepared")
    train, dev = read(tmp_path / "prepared", "train"), read(tmp_path / "prepared", "dev")
    assert dev.num_rows == 16 and not set(texts(train)) & set(texts(dev))
    copies_left = 2 * len(set(texts(dev))) - 16  # a text with both its copies in dev left none in train
    assert copies_left > 0
    assert train.num_rows == 80 - 16 - copies_left and len(set(texts(train))) == train.num_rows // 2  # pairs kept
    record = json.loads((tmp_path / "prepared" / "intents" / "task.json").read_text())
    assert record["train_overlap_dropped"] == copies_left


def test_a_csv_field_longer_than_csvs_default_limit_is_read(tmp_path):
    long_text = "word " * 40_000  # 200,000 characters: Python's csv stops at 131,072 by default
    rows = [[long_text, "balance"], *intent_rows(20)]
    write_csv(tmp_path / "files" / "train.csv", ["text", "intent"], rows)
    run_prepare("intents", own_params(tmp_path / "files", dev_fraction=0.1), tmp_path / "prepared")
    prepared = texts(read(tmp_path / "prepared", "train")) + texts(read(tmp_path / "prepared", "dev"))
    assert long_text.strip() in prepared


def test_a_repeated_column_name_in_the_header_is_refused(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "train.csv").write_text("text,text,intent\na,b,balance\nc,d,top_up\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"train.csv:1: column 'text' appears more than once in the header"):
        run_prepare("intents", own_params(files), tmp_path / "prepared")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("train.csv", "text,intent\n{rows}a,b,c\n", r"train.csv:\d+: 3 fields, the header has 2"),
        ("train.tsv", "text\tintent\n{rows}a\tb\tc\n", r"train.tsv:\d+: 3 fields, the header has 2"),
        ("train.jsonl", '{rows}{{"text": "no end"\n', r"train.jsonl:\d+: not valid JSON"),
        ("train.jsonl", "{rows}[1, 2]\n", r"train.jsonl:\d+: expected a JSON object"),
        ("train.jsonl", '{rows}{{"text": "no label"}}\n', r"train.jsonl:\d+: missing key 'intent'"),
        # json keeps a repeated key's last value: which text or label was meant is unknown
        (
            "train.jsonl",
            '{rows}{{"text": "a", "intent": "balance", "text": "b"}}\n',
            r"train.jsonl:21: key 'text' appears more than once in the object$",
        ),
        (
            "train.jsonl",
            '{rows}{{"text": "a", "intent": "balance", "intent": "top_up"}}\n',
            r"train.jsonl:21: key 'intent' appears more than once in the object$",
        ),
    ],
)
def test_skip_bad_rows_covers_rows_the_readers_cannot_read(tmp_path, name, content, match):
    """A row of the wrong width, a line that is not JSON or not an object, an object missing a key or repeating one:
    each stops prepare naming its line, or with skip_bad_rows is left out and counted."""
    good = intent_rows(20)
    if name.endswith(".jsonl"):
        rows = "".join(json.dumps({"text": text, "intent": intent}) + "\n" for text, intent in good)
    else:
        sep = "\t" if name.endswith(".tsv") else ","
        rows = "".join(f"{text}{sep}{intent}\n" for text, intent in good)
    files = tmp_path / "files"
    files.mkdir()
    (files / name).write_text(content.format(rows=rows), encoding="utf-8")
    with pytest.raises(DataFormatError, match=match):
        run_prepare("intents", own_params(files, train=name), tmp_path / "strict")
    counts = run_prepare("intents", own_params(files, skip_bad_rows=True, train=name), tmp_path / "prepared")
    assert counts["train"] + counts["dev"] == 20
    assert json.loads((tmp_path / "prepared" / "intents" / "task.json").read_text())["skipped_rows"] == 1


def test_skipped_rows_of_every_file_are_counted(tmp_path):
    files = tmp_path / "files"
    write_csv(files / "train.csv", ["text", "intent"], [*intent_rows(20), ["", "balance"]])
    write_csv(files / "dev.csv", ["text", "intent"], [*intent_rows(8, seed=1), ["dev text", ""]])
    (files / "raw.jsonl").write_text('{"text": "a raw query"}\nnot json\n{"other": 1}\n', encoding="utf-8")
    params = own_params(files, skip_bad_rows=True, dev="dev.csv", unlabelled=["raw.jsonl"])
    counts = run_prepare("intents", params, tmp_path / "prepared")
    assert counts["unlabelled"] == 1
    assert json.loads((tmp_path / "prepared" / "intents" / "task.json").read_text())["skipped_rows"] == 2
    record = unlabelled_record(paths.unlabelled_text("intents", tmp_path / "prepared"))
    assert record == {"rows": 1, "duplicates_dropped": 0, "skipped_rows": 2}


def test_the_documented_bad_definition_message_is_the_one_users_get(tmp_path):
    """docs/own-data.md's "bad definition" row quotes the message load_params gives for its example."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "own-data.md").read_text(encoding="utf-8")
    row = next(line for line in docs.splitlines() if line.startswith("| bad definition |"))
    documented = row.split("`")[1]
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"tasks": ["tickets"], "task_defs": {"tickets": {"train": "t.xlsx",
                                "text_columns": ["text"], "label_column": "category"}}}))  # fmt: skip
    with pytest.raises(ParamsError) as error:
        load_params(path)
    message = str(error.value).replace(str(tmp_path) + "/", "")
    assert message.startswith(documented.removesuffix("..."))
