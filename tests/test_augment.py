"""Tests of the augment stage: the word-level operations, n-grams, pair modes and the transfer-set table."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.data.schema import MASK_TOKEN, OP_MASK, OP_NGRAM, OP_POS, prepared_schema, transfer_schema
from pipeline.data.tasks import Task, get_task
from pipeline.errors import TaggerUnavailableError
from pipeline.params import AugmentParams, Params
from pipeline.stages.augment import (
    TagVocab,
    _sides_to_augment,
    augment_sentence,
    build_transfer_set,
    load_tagger,
    make_tagger,
    mask_and_replace,
    run_augment,
    sample_ngram,
    tag_sentences,
)

SST2 = get_task("sst2")
MRPC = get_task("mrpc")
STSB = get_task("stsb")

SENTENCES = [
    "a gorgeous , witty , seductive movie .",
    "the plot is nothing but boilerplate clichés from start to finish",
    "it 's a charming and often affecting journey .",
    "great",
    "the plot is nothing but boilerplate clichés from start to finish",  # duplicate original: kept twice
    "unflinchingly bleak and desperate",
]


@pytest.fixture(scope="module")
def tagger():
    return make_tagger(AugmentParams())


def prepared(task: Task, texts_a: list[str], texts_b: list[str] | None = None) -> pa.Table:
    labels = [float(i % 5) if task.is_regression else i % 2 for i in range(len(texts_a))]
    return pa.table(
        {
            "id": list(range(100, 100 + len(texts_a))),
            "text_a": texts_a,
            "text_b": texts_b if texts_b is not None else [None] * len(texts_a),
            "label": labels,
        },
        schema=prepared_schema(task),
    )


def pair_table() -> pa.Table:
    return prepared(
        MRPC,
        ["the cat sat on the mat .", "stocks fell sharply on monday .", "he said no ."],
        ["a cat was sitting on a mat .", "shares dropped steeply on monday .", "she said yes ."],
    )


def toy_vocab() -> TagVocab:
    return TagVocab({"T": Counter({"a": 3, "b": 1}), "U": Counter({"c": 1})})


# --- word-level operations -------------------------------------------------------------------------------------


def test_mask_and_pos_rates_are_mutually_exclusive_per_token() -> None:
    n = 20_000
    params = AugmentParams(p_mask=0.1, p_pos=0.2)
    tokens, token_ops = mask_and_replace(["x"] * n, ["T"] * n, params, np.random.default_rng(0), toy_vocab())
    assert len(tokens) == len(token_ops) == n
    ops = np.array([op or "" for op in token_ops])
    out = np.array(tokens)
    assert abs((ops == OP_MASK).mean() - 0.1) < 0.01
    assert abs((ops == OP_POS).mean() - 0.2) < 0.01
    # each token got at most one operation, and the text matches it
    assert set(out[ops == OP_MASK]) == {MASK_TOKEN}
    assert set(out[ops == OP_POS]) == {"a", "b"}
    assert set(out[ops == ""]) == {"x"}


def test_zero_probabilities_change_nothing() -> None:
    params = AugmentParams(p_mask=0, p_pos=0, p_ng=0)
    tokens = ["x", "y", "x"] * 1000
    out, token_ops = mask_and_replace(tokens, ["T", "U", "T"] * 1000, params, np.random.default_rng(0), toy_vocab())
    assert out == tokens
    assert set(token_ops) == {None}
    text, ops = augment_sentence("x  y", (["x", "y"], ["T", "U"]), params, np.random.default_rng(0), toy_vocab())
    assert (text, ops) == ("x  y", set())


def test_replacement_drawing_the_same_word_is_not_an_op() -> None:
    params = AugmentParams(p_mask=0, p_pos=1, p_ng=0)
    out, token_ops = mask_and_replace(["c"] * 50, ["U"] * 50, params, np.random.default_rng(0), toy_vocab())
    assert out == ["c"] * 50 and set(token_ops) == {None}


def test_replacement_is_frequency_weighted() -> None:
    vocab = TagVocab.from_sentences([(["common", "rare"], ["NN", "NN"]), (["common"], ["NN"])], weights=[10, 80])
    assert sorted(vocab.words("NN")) == ["common", "rare"]
    rng = np.random.default_rng(1)
    draws = Counter(vocab.sample("NN", rng) for _ in range(10_000))
    assert set(draws) == {"common", "rare"}
    assert abs(draws["common"] / 10_000 - 0.9) < 0.02


def test_pos_replacement_keeps_the_tag(tagger) -> None:
    params = AugmentParams(p_mask=0, p_pos=1, p_ng=0)
    tagged = tagger(SENTENCES)
    vocab = TagVocab.from_sentences(tagged, [1] * len(tagged))
    rng = np.random.default_rng(3)
    for tokens, tags in tagged:
        for _ in range(5):
            out, token_ops = mask_and_replace(tokens, tags, params, rng, vocab)
            assert len(out) == len(tokens)
            for word, tag in zip(out, tags):
                assert word in vocab.words(tag)
    # each word is filed under the tag(s) it was seen with
    assert set(vocab.words(",")) == {","}
    assert set(vocab.words("DT")) <= {"a", "the"}


def test_tag_sentences_drops_whitespace_and_supports_coarse_tags() -> None:
    fine = tag_sentences(["a  charming movie"], load_tagger(AugmentParams().spacy_model, "tag"), AugmentParams())
    coarse_nlp = load_tagger(AugmentParams().spacy_model, "pos")
    coarse = tag_sentences(["a  charming movie"], coarse_nlp, AugmentParams(pos_tagset="pos"))
    assert fine == [(["a", "charming", "movie"], ["DT", "JJ", "NN"])]
    assert coarse == [(["a", "charming", "movie"], ["DET", "ADJ", "NOUN"])]
    assert "attribute_ruler" in coarse_nlp.pipe_names
    assert set(load_tagger(AugmentParams().spacy_model, "tag").pipe_names) == {"tok2vec", "tagger"}
    assert load_tagger(AugmentParams().spacy_model, "pos") is coarse_nlp  # cached


# --- n-grams -----------------------------------------------------------------------------------------------------


def test_ngram_window_length_and_position() -> None:
    params = AugmentParams(p_ng=1, ngram_min=2, ngram_max=4)
    rng = np.random.default_rng(0)
    lengths = Counter()
    starts = set()
    for _ in range(3000):
        window = sample_ngram(10, params, rng)
        assert 0 <= window.start < window.stop <= 10
        lengths[window.stop - window.start] += 1
        starts.add(window.start)
    assert set(lengths) == {2, 3, 4}
    assert all(abs(count / 3000 - 1 / 3) < 0.05 for count in lengths.values())
    assert starts == set(range(9))
    assert sample_ngram(1, params, rng) == slice(0, 1)  # clipped to a sentence shorter than ngram_min


def test_ngram_rate() -> None:
    params = AugmentParams(p_ng=0.25)
    rng = np.random.default_rng(0)
    cut = sum(sample_ngram(20, params, rng) != slice(0, 20) for _ in range(20_000))
    assert abs(cut / 20_000 - 0.25) < 0.015


def test_augmented_ngram_is_a_contiguous_subsequence() -> None:
    params = AugmentParams(p_mask=0, p_pos=0, p_ng=1, ngram_min=1, ngram_max=5)
    tokens = [f"w{i}" for i in range(8)]
    rng = np.random.default_rng(0)
    for _ in range(200):
        text, ops = augment_sentence(" ".join(tokens), (tokens, ["T"] * 8), params, rng, toy_vocab())
        kept = text.split(" ")
        assert ops == {OP_NGRAM} and 1 <= len(kept) <= 5
        start = tokens.index(kept[0])
        assert tokens[start : start + len(kept)] == kept


def test_ops_only_count_operations_that_survive_the_ngram() -> None:
    params = AugmentParams(p_mask=0.5, p_pos=0, p_ng=1, ngram_min=1, ngram_max=1)
    tokens = [f"w{i}" for i in range(6)]
    rng = np.random.default_rng(0)
    seen = Counter()
    for _ in range(200):
        text, ops = augment_sentence(" ".join(tokens), (tokens, ["T"] * 6), params, rng, toy_vocab())
        assert (OP_MASK in ops) == (text == MASK_TOKEN)
        seen[frozenset(ops)] += 1
    assert set(seen) == {frozenset({OP_NGRAM}), frozenset({OP_NGRAM, OP_MASK})}


# --- the transfer set ----------------------------------------------------------------------------------------------


def check_transfer_set(table: pa.Table, source: pa.Table, task: Task, n_iter: int) -> None:
    assert table.schema == transfer_schema(task)
    rows = table.to_pylist()
    assert [row["id"] for row in rows] == list(range(len(rows)))
    originals = [row for row in rows if row["is_original"]]
    assert [(r["source_id"], r["text_a"], r["text_b"], r["label"]) for r in originals] == [
        (r["id"], r["text_a"], r["text_b"], r["label"]) for r in source.to_pylist()
    ]
    assert all(row["ops"] == [] for row in originals)
    synthetic = [row for row in rows if not row["is_original"]]
    assert synthetic, "expected some synthetic rows"
    pairs = [(row["text_a"], row["text_b"]) for row in synthetic]
    assert len(set(pairs)) == len(pairs)
    assert not set(pairs) & {(row["text_a"], row["text_b"]) for row in originals}
    assert max(Counter(row["source_id"] for row in synthetic).values()) <= n_iter
    current = None
    for row in rows:  # each original is directly followed by its own synthetic rows
        if row["is_original"]:
            current = row["source_id"]
        assert row["source_id"] == current
    for row in synthetic:
        assert row["label"] is None
        assert row["ops"] and row["ops"] == sorted(set(row["ops"]))
        assert set(row["ops"]) <= {OP_MASK, OP_POS, OP_NGRAM}
        texts = row["text_a"] + " " + (row["text_b"] or "")
        assert (OP_MASK in row["ops"]) == (MASK_TOKEN in texts)


def test_build_transfer_set_single_sentence(tagger) -> None:
    source = prepared(SST2, SENTENCES)
    params = AugmentParams(n_iter_single=8)
    table = build_transfer_set(source, SST2, params, seed=0, tagger=tagger)
    check_transfer_set(table, source, SST2, n_iter=8)
    synthetic = table.filter(pc.invert(table["is_original"])).to_pylist()
    assert sum(row["source_id"] == 103 for row in synthetic) < 8  # "great" has few distinct variants
    for row in synthetic:
        original = SENTENCES[row["source_id"] - 100].split(" ")
        if OP_NGRAM in row["ops"]:
            assert len(row["text_a"].split(" ")) < len(original)
        else:
            assert len(row["text_a"].split(" ")) == len(original)


def test_build_transfer_set_regression_labels(tagger) -> None:
    source = prepared(STSB, ["a man is playing a guitar ."], ["a person plays the guitar ."])
    table = build_transfer_set(source, STSB, AugmentParams(n_iter_pair=4), seed=0, tagger=tagger)
    check_transfer_set(table, source, STSB, n_iter=4)
    assert table["label"].type == pa.float32()


def test_build_transfer_set_is_deterministic(tagger) -> None:
    source = prepared(SST2, SENTENCES)
    params = AugmentParams(n_iter_single=5)
    first = build_transfer_set(source, SST2, params, seed=7, tagger=tagger)
    assert first.equals(build_transfer_set(source, SST2, params, seed=7, tagger=tagger))
    assert not first.equals(build_transfer_set(source, SST2, params, seed=8, tagger=tagger))


def test_pairs_paper_mode_cycles_first_second_both(tagger) -> None:
    source = pair_table()
    params = AugmentParams(p_mask=1, p_pos=0, p_ng=0, n_iter_pair=6, pair_mode="paper")
    table = build_transfer_set(source, MRPC, params, seed=0, tagger=tagger)
    check_transfer_set(table, source, MRPC, n_iter=6)
    for original in source.to_pylist():
        a, b = original["text_a"], original["text_b"]
        masked_a = " ".join([MASK_TOKEN] * len(a.split(" ")))
        masked_b = " ".join([MASK_TOKEN] * len(b.split(" ")))
        synthetic = [
            (row["text_a"], row["text_b"])
            for row in table.to_pylist()
            if row["source_id"] == original["id"] and not row["is_original"]
        ]
        # i % 3 == 0: first only, 1: second only, 2: both; i = 3..5 repeat them and are dropped as duplicates
        assert synthetic == [(masked_a, b), (a, masked_b), (masked_a, masked_b)]


def test_pairs_code_mode_mixes_sides(tagger) -> None:
    source = pair_table()
    params = AugmentParams(p_mask=1, p_pos=0, p_ng=0, n_iter_pair=30, pair_mode="code")
    table = build_transfer_set(source, MRPC, params, seed=0, tagger=tagger)
    check_transfer_set(table, source, MRPC, n_iter=30)
    by_source = {row["id"]: row for row in source.to_pylist()}
    kinds = Counter()
    for row in table.to_pylist():
        if not row["is_original"]:
            original = by_source[row["source_id"]]
            kinds[(row["text_a"] != original["text_a"], row["text_b"] != original["text_b"])] += 1
    assert set(kinds) == {(True, False), (False, True), (True, True)}

    rng = np.random.default_rng(0)
    draws = Counter(_sides_to_augment(i, params, rng) for i in range(30_000))
    assert set(draws) == {(True, False), (False, True), (True, True)}
    assert all(abs(count / 30_000 - 1 / 3) < 0.02 for count in draws.values())


class CountingTagger:
    """Wraps a tagger and records every text it is asked to tag."""

    def __init__(self, tagger) -> None:
        self.tagger = tagger
        self.texts: list[str] = []

    def __call__(self, texts):
        self.texts.extend(texts)
        return self.tagger(texts)


def test_each_distinct_original_sentence_is_tagged_once(tagger) -> None:
    counting = CountingTagger(tagger)
    build_transfer_set(prepared(SST2, SENTENCES), SST2, AugmentParams(n_iter_single=10), seed=0, tagger=counting)
    assert sorted(counting.texts) == sorted(set(SENTENCES))

    counting = CountingTagger(tagger)
    source = prepared(MRPC, ["he said no .", "he said no .", "it rained ."], ["she said yes .", "it rained .", "no ."])
    build_transfer_set(source, MRPC, AugmentParams(), seed=0, tagger=counting)
    assert sorted(counting.texts) == sorted({"he said no .", "she said yes .", "it rained .", "no ."})


def test_nltk_tagger_tags_with_penn_or_universal_tags(monkeypatch) -> None:
    """The nltk tagger tokenises with Penn Treebank rules and asks NLTK for Penn (tag) or universal (pos) tags."""
    import nltk

    asked = []

    def fake_pos_tag_sents(sentences, tagset=None):
        asked.append(tagset)
        return [[(word, "NOUN" if tagset else "NN") for word in sentence] for sentence in sentences]

    monkeypatch.setattr(nltk, "pos_tag_sents", fake_pos_tag_sents)
    assert make_tagger(AugmentParams(tagger="nltk"))(["It isn't bad."]) == [
        (["It", "is", "n't", "bad", "."], ["NN"] * 5)
    ]
    assert make_tagger(AugmentParams(tagger="nltk", pos_tagset="pos"))(["ok"]) == [(["ok"], ["NOUN"])]
    assert asked == [None, "universal"]


def test_nltk_tagger_without_its_data_says_how_to_get_it(monkeypatch) -> None:
    import nltk

    def missing(sentences, tagset=None):
        raise LookupError("Resource averaged_perceptron_tagger_eng not found.")

    monkeypatch.setattr(nltk, "pos_tag_sents", missing)
    with pytest.raises(
        TaggerUnavailableError, match="python -m nltk.downloader averaged_perceptron_tagger_eng universal_tagset"
    ):
        make_tagger(AugmentParams(tagger="nltk", pos_tagset="pos"))(["ok"])


def test_run_augment_writes_the_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    prepared_path = tmp_path / "prepared" / "sst2" / "train.parquet"
    prepared_path.parent.mkdir(parents=True)
    source = prepared(SST2, SENTENCES)
    pq.write_table(source, prepared_path)
    out_path = tmp_path / "augmented" / "sst2.parquet"
    params = Params(seed=3, augment=AugmentParams(n_iter_single=4))
    with caplog.at_level(logging.INFO, logger="pipeline.stages.augment"):
        table = run_augment(SST2, params, tmp_path / "prepared", out_path)
    assert pq.read_table(out_path).equals(table)
    assert list(out_path.parent.iterdir()) == [out_path]  # no temporary file left behind
    assert table.equals(build_transfer_set(source, SST2, params.augment, seed=3))
    n_synthetic = table.num_rows - len(SENTENCES)
    message = caplog.records[-1].getMessage()
    assert f"{len(SENTENCES)} originals, 0 unlabelled rows, {n_synthetic} synthetic rows" in message
    assert f"{len(SENTENCES) * 4 - n_synthetic} duplicates dropped" in message
