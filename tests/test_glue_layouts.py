"""Prepare (and pair augmentation) on fixtures in the real GLUE layout of every registered task."""

from __future__ import annotations

import functools
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.glue import read_glue_tsv
from pipeline.data.schema import MASK_TOKEN, prepared_schema
from pipeline.data.tasks import TASKS, Task, get_task
from pipeline.errors import DataFormatError
from pipeline.params import GLUE_DIR_ENV, AugmentParams, Params
from pipeline.stages.augment import build_transfer_set, load_tagger, tag_sentences
from pipeline.stages.prepare import run_prepare
from tests.glue_fixtures import Example, data_line_no, drop_column, edit_line, split_path, write_task

PAIR_TASKS = [name for name, task in TASKS.items() if task.is_pair]

# (split, row, text_a, text_b, label index or score): literal expectations for the fixtures' hand-written rows.
SPOT_CHECKS: dict[str, list[tuple[str, int, str, str | None, float]]] = {
    "sst2": [("train", 0, "the film is really charming", None, 1), ("train", 1, "a dull story", None, 0)],
    "cola": [("train", 0, "The story is very good.", None, 1), ("train", 1, "The plot is awful.", None, 0)],
    "mrpc": [
        ("train", 0, 'The film, "a story", is good.', 'The "plot" is lovely, really.', 1),
        ("train", 1, "The acting is quite weak.", "A story with acting and plot.", 0),
    ],
    "qqp": [
        ("train", 0, 'What is "the best way to learn?', "How is the film, really, so funny?", 1),
        ("train", 1, '"Why is the plot so dull?"', 'Is the "acting really boring?', 0),
        ("train", 2, "Is the story, with acting, quite a film?", 'Why is it "clever"?', 1),
        ("dev", 0, 'Is "the film good?', "Why is the acting awful?", 0),
    ],
    "stsb": [
        ("train", 0, "A film is very funny.", "The story is funny.", 3.8),
        ("train", 1, "The plot and acting.", "A dull film.", 0.6),
        ("dev", 0, "The acting is superb.", "A superb story.", 5.0),
    ],
    "mnli": [
        ("train", 0, "The film is a story with acting.", 'The "plot" is lovely.', 1),  # entailment
        ("train", 1, "The film is a story with acting.", "The plot is tedious.", 0),  # contradiction
        ("train", 2, "The film is a story with acting.", "The plot is a story.", 2),  # neutral
        ("dev_matched", 0, "A film with acting.", "The acting is clumsy.", 0),
        ("dev_mismatched", 0, "A story, really.", "The story is quite a story.", 2),
    ],
    "qnli": [("train", 0, "What is the film with acting?", "The film is great.", 1)],  # not_entailment
    "rte": [("train", 0, "The plot is a story.", "The story is lifeless.", 1)],  # not_entailment
    "wnli": [("train", 0, "The film is a story.", "The film is funny.", 1)],
}


def expected_row(task: Task, index: int, example: Example) -> dict:
    label = float(example.label) if task.is_regression else task.labels.index(example.label)
    text_b = example.text_b.strip() if example.text_b is not None else None
    return {"id": index, "text_a": example.text_a.strip(), "text_b": text_b, "label": label}


@pytest.fixture()
def glue_env(tmp_path, monkeypatch):
    glue = tmp_path / "glue"
    monkeypatch.setenv(GLUE_DIR_ENV, str(glue))
    return glue


@pytest.mark.parametrize("name", list(TASKS))
def test_prepare_reads_real_layout(name, glue_env, tmp_path):
    task = get_task(name)
    written = write_task(glue_env, name, n_train=40, n_dev=16)
    counts = run_prepare(task.name, Params(), tmp_path / "prepared")
    assert counts == {**{split: len(rows) for split, rows in written.items()}, "unlabelled": 0}
    assert set(counts) == {*task.splits, "unlabelled"}
    record = json.loads((tmp_path / "prepared" / name / "task.json").read_text())
    assert Task.from_dict(record["task"]) == task  # the built-in definition, recorded for every later stage

    tables = {split: pq.read_table(tmp_path / "prepared" / name / f"{split}.parquet") for split in task.splits}
    for split, table in tables.items():
        assert table.schema == prepared_schema(task), split
        assert table.column("text_b").null_count == (0 if task.is_pair else table.num_rows)
        expected = [expected_row(task, i, ex) for i, ex in enumerate(written[split])]
        got = table.to_pylist()
        assert [{**row, "label": None} for row in got] == [{**row, "label": None} for row in expected], split
        assert [row["label"] for row in got] == pytest.approx([row["label"] for row in expected]), split
    if task.is_regression:
        assert all(pa.types.is_floating(t.schema.field("label").type) for t in tables.values())
        labels = tables["train"].column("label").to_pylist()
        assert all(0.0 <= x <= 5.0 for x in labels) and any(x != int(x) for x in labels)
    else:
        assert set(tables["train"].column("label").to_pylist()) == set(range(len(task.labels)))

    for split, row, text_a, text_b, label in SPOT_CHECKS[name]:
        got = tables[split].slice(row, 1).to_pylist()[0]
        assert (got["text_a"], got["text_b"]) == (text_a, text_b), (split, row)
        assert got["label"] == pytest.approx(label), (split, row)


def test_mrpc_byte_order_mark_is_not_part_of_the_label_column(glue_env):
    write_task(glue_env, "mrpc")
    path = split_path(glue_env, "mrpc", "train")
    assert path.read_bytes().startswith(b"\xef\xbb\xbfQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
    assert read_glue_tsv(get_task("mrpc"), path).column("label").to_pylist()[:2] == [1, 0]


def test_qqp_quotes_are_read_verbatim(glue_env):
    written = write_task(glue_env, "qqp", n_train=12)
    table = read_glue_tsv(get_task("qqp"), split_path(glue_env, "qqp", "train"))
    # An unbalanced quote swallows no tab or newline: every row is read, texts keep their quotes as written.
    assert table.num_rows == 12
    assert table.column("text_a").to_pylist() == [ex.text_a for ex in written["train"]]
    assert table.column("text_b").to_pylist() == [ex.text_b for ex in written["train"]]
    assert table.column("text_a").to_pylist()[:2] == ['What is "the best way to learn?', '"Why is the plot so dull?"']


@pytest.mark.parametrize("name", PAIR_TASKS)
def test_missing_second_text_column_names_file_and_column(name, glue_env):
    task = get_task(name)
    write_task(glue_env, name)
    path = split_path(glue_env, name, "train")
    second = task.text_columns[1]
    drop_column(path, second)
    with pytest.raises(DataFormatError, match=rf"^{path}:1: missing column {second!r} for task {name}; header has"):
        read_glue_tsv(task, path)
    with pytest.raises(DataFormatError, match=rf"^{path}:1: missing column {second!r}"):
        run_prepare(task.name, Params(), glue_env.parent / "prepared")


@pytest.mark.parametrize("name", list(TASKS))
def test_row_with_too_few_fields_names_file_and_line(name, glue_env):
    task = get_task(name)
    write_task(glue_env, name)
    path = split_path(glue_env, name, "train")
    line = data_line_no(name, 5)
    edit_line(path, line, lambda fields: fields[:1])
    with pytest.raises(
        DataFormatError, match=rf"^{path}:{line}: expected at least \d+ tab-separated fields for task {name}, found 1$"
    ):
        read_glue_tsv(task, path)


def test_qqp_question_broken_by_a_newline_names_file_and_line(glue_env):
    # As in the real QQP train file: a question with an embedded line break leaves a row with too few fields.
    write_task(glue_env, "qqp")
    path = split_path(glue_env, "qqp", "train")
    line = data_line_no("qqp", 3)
    edit_line(path, line, lambda f: [*f[:4], "Why is the film\nso dull?", f[5]])
    with pytest.raises(
        DataFormatError, match=rf"^{path}:{line}: expected at least 6 tab-separated fields for task qqp, found 5$"
    ):
        read_glue_tsv(get_task("qqp"), path)


@pytest.mark.parametrize("split", ["train", "dev_matched", "dev_mismatched"])
def test_mnli_label_outside_the_set_names_file_and_line(split, glue_env, tmp_path):
    write_task(glue_env, "mnli")
    path = split_path(glue_env, "mnli", split)
    line = data_line_no("mnli", 4)
    edit_line(path, line, lambda fields: [*fields[:-1], "-"])
    with pytest.raises(
        DataFormatError, match=rf"^{path}:{line}: label '-' is not one of \['contradiction', 'entailment', 'neutral'\]"
    ):
        run_prepare("mnli", Params(), tmp_path / "prepared")


# --- pair augmentation on prepared pair tables -------------------------------------------------------------------


@pytest.fixture(scope="module")
def nlp():
    return load_tagger(AugmentParams().spacy_model, "tag")


def _tagger(nlp, params: AugmentParams):
    """The default spaCy tagger, reusing the module's loaded pipeline."""
    return functools.partial(tag_sentences, nlp=nlp, params=params)


def _tokens(nlp, text: str) -> list[str]:
    return [token.text for token in nlp(text) if not token.is_space]


def _is_masked_copy(nlp, new: str, original: str) -> bool:
    """With p_pos = p_ng = 0 a changed sentence is the original's tokens, some replaced by [MASK]."""
    old = _tokens(nlp, original)
    new_tokens = new.split(" ")
    return len(new_tokens) == len(old) and all(n in (o, MASK_TOKEN) for n, o in zip(new_tokens, old))


@pytest.mark.parametrize(
    ("name", "pair_mode"), [("qqp", "paper"), ("stsb", "paper"), ("mnli", "paper"), ("mrpc", "code")]
)
def test_pair_augmentation_keeps_pairs_together(name, pair_mode, glue_env, tmp_path, nlp):
    task = get_task(name)
    write_task(glue_env, name, n_train=30)
    run_prepare(task.name, Params(), tmp_path / "prepared")
    prepared = pq.read_table(tmp_path / "prepared" / name / "train.parquet")
    n_iter = 6
    params = AugmentParams(n_iter_pair=n_iter, p_mask=0.4, p_pos=0.0, p_ng=0.0, pair_mode=pair_mode)
    transfer = build_transfer_set(prepared, task, params, seed=3, tagger=_tagger(nlp, params)).to_pylist()

    originals = {row["id"]: row for row in prepared.to_pylist()}
    assert [(r["source_id"], r["text_a"], r["text_b"]) for r in transfer if r["is_original"]] == [
        (r["id"], r["text_a"], r["text_b"]) for r in originals.values()
    ]
    kinds: Counter[tuple[int, str]] = Counter()
    for row in (r for r in transfer if not r["is_original"]):
        source = originals[row["source_id"]]
        assert row["label"] is None and row["text_b"] is not None
        same_a, same_b = row["text_a"] == source["text_a"], row["text_b"] == source["text_b"]
        assert not (same_a and same_b), row
        # Each changed side is a masked copy of the same original's side: the pair was never split.
        assert same_a or _is_masked_copy(nlp, row["text_a"], source["text_a"]), row
        assert same_b or _is_masked_copy(nlp, row["text_b"], source["text_b"]), row
        kinds[row["source_id"], "first" if same_b else "second" if same_a else "both"] += 1

    totals = Counter(kind for _, kind in kinds.elements())
    assert totals["first"] > 0 and totals["second"] > 0 and totals["both"] > 0, totals
    if pair_mode == "paper":
        # Paper cycle: attempt i augments (first, second, both)[i % 3]; a "both" attempt may leave a side unchanged.
        for source_id in originals:
            assert kinds[source_id, "both"] <= n_iter // 3
            assert kinds[source_id, "first"] + kinds[source_id, "both"] <= 2 * n_iter // 3
            assert kinds[source_id, "second"] + kinds[source_id, "both"] <= 2 * n_iter // 3


def test_paper_pair_mode_cycles_first_second_both(glue_env, tmp_path, nlp):
    """Masking every token makes each attempt visible: every original gets exactly one variant of each kind."""
    task = get_task("qqp")
    write_task(glue_env, "qqp", n_train=30)
    run_prepare(task.name, Params(), tmp_path / "prepared")
    prepared = pq.read_table(tmp_path / "prepared" / "qqp" / "train.parquet")
    params = AugmentParams(n_iter_pair=3, p_mask=1.0, p_pos=0.0, p_ng=0.0, pair_mode="paper")
    transfer = build_transfer_set(prepared, task, params, seed=0, tagger=_tagger(nlp, params)).to_pylist()

    originals = {row["id"]: row for row in prepared.to_pylist()}
    variants: dict[int, list[tuple[str, str]]] = {source_id: [] for source_id in originals}
    for row in transfer:
        if not row["is_original"]:
            variants[row["source_id"]].append((row["text_a"], row["text_b"]))
    seen = {(row["text_a"], row["text_b"]) for row in originals.values()}  # duplicates (all-mask pairs) are dropped
    for source_id, source in originals.items():
        masked_a = " ".join([MASK_TOKEN] * len(_tokens(nlp, source["text_a"])))
        masked_b = " ".join([MASK_TOKEN] * len(_tokens(nlp, source["text_b"])))
        cycle = [(masked_a, source["text_b"]), (source["text_a"], masked_b), (masked_a, masked_b)]
        assert variants[source_id] == [pair for pair in cycle if pair not in seen], source
        assert variants[source_id][:2] == cycle[:2]  # first-only, second-only: unique thanks to the kept side
        seen.update(cycle)
