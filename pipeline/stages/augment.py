"""Augment stage: build the transfer set of Tang et al. (2019), section 3.3.

Every original training example is kept and followed by up to ``n_iter`` synthetic variants made by masking words,
replacing words with others of the same part-of-speech tag, and cutting the sentence down to a random n-gram.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import spacy
from spacy.language import Language
from tqdm import tqdm

from pipeline import paths
from pipeline.data.io import write_parquet
from pipeline.data.schema import MASK_TOKEN, OP_MASK, OP_NGRAM, OP_POS, transfer_schema
from pipeline.data.tasks import Task
from pipeline.errors import TaggerUnavailableError
from pipeline.params import AugmentParams, Params

log = logging.getLogger(__name__)
# pair_mode "code" (authors' script): augment both sentences with this probability, else one chosen by a fair coin.
CODE_P_BOTH = 1 / 3
CODE_P_FIRST = 1 / 2
# pair_mode "paper": synthetic index i augments PAPER_CYCLE[i % 3] = (first?, second?).
PAPER_CYCLE = ((True, False), (False, True), (True, True))

Tagged = tuple[list[str], list[str]]  # (tokens, tags) of one sentence
Tagger = Callable[[Sequence[str]], list[Tagged]]  # tokenises and tags sentences
# NLTK data the nltk tagger needs, per augment.pos_tagset (Penn tags, or those mapped to the universal tagset).
NLTK_DATA = {"tag": ["averaged_perceptron_tagger_eng"], "pos": ["averaged_perceptron_tagger_eng", "universal_tagset"]}
NLTK_TAGSETS = {"tag": None, "pos": "universal"}


class TagVocab:
    """Training-set unigram distribution of words, one per tag, for frequency-weighted sampling."""

    def __init__(self, counts: dict[str, Counter[str]]) -> None:
        self._words = {tag: list(words) for tag, words in counts.items()}
        self._cumulative = {tag: np.cumsum(list(words.values()), dtype=np.float64) for tag, words in counts.items()}

    @classmethod
    def from_sentences(cls, sentences: Iterable[Tagged], weights: Iterable[int]) -> TagVocab:
        """Count every (tag, word) of the tagged sentences, each sentence ``weight`` times."""
        counts: dict[str, Counter[str]] = {}
        for (tokens, tags), weight in zip(sentences, weights):
            for token, tag in zip(tokens, tags):
                counts.setdefault(tag, Counter())[token] += weight
        return cls(counts)

    def words(self, tag: str) -> list[str]:
        """The distinct words seen with ``tag``."""
        return self._words[tag]

    def sample(self, tag: str, rng: np.random.Generator) -> str:
        """Draw one word of ``tag``, weighted by its training-set frequency."""
        cumulative = self._cumulative[tag]
        index = np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")
        return self._words[tag][index]


@functools.cache
def load_tagger(model: str, tagset: str) -> Language:
    """Load ``model`` with only the components that produce ``tag_`` (or ``pos_``, which needs the attribute ruler)."""
    keep = {"tok2vec", "tagger"} | ({"attribute_ruler"} if tagset == "pos" else set())
    components = spacy.info(model)["components"]
    return spacy.load(model, exclude=[name for name in components if name not in keep])


def tag_sentences(texts: Sequence[str], nlp: Language, params: AugmentParams) -> list[Tagged]:
    """Tokenize and tag each text once with spaCy (whitespace tokens dropped)."""
    tagged = []
    for doc in nlp.pipe(texts, batch_size=params.spacy_batch_size):
        words = [token for token in doc if not token.is_space]
        tags = [token.tag_ if params.pos_tagset == "tag" else token.pos_ for token in words]
        tagged.append(([token.text for token in words], tags))
    return tagged


def tag_sentences_nltk(texts: Sequence[str], params: AugmentParams) -> list[Tagged]:
    """Tokenize (Penn Treebank rules) and tag with NLTK's averaged perceptron tagger, as the authors' code does.

    Needs NLTK's tagger data, which is not installable offline; raises naming the download command when missing.
    """
    import nltk
    from nltk.tokenize import TreebankWordTokenizer

    sentences = [TreebankWordTokenizer().tokenize(text) for text in texts]
    try:
        tagged = nltk.pos_tag_sents(sentences, tagset=NLTK_TAGSETS[params.pos_tagset])
    except LookupError:
        packages = " ".join(NLTK_DATA[params.pos_tagset])
        raise TaggerUnavailableError(
            f"augment.tagger: nltk needs NLTK data that is not installed here; run "
            f"`python -m nltk.downloader {packages}` where the internet is reachable, or use augment.tagger: spacy"
        ) from None
    return [([word for word, _ in sentence], [tag for _, tag in sentence]) for sentence in tagged]


def make_tagger(params: AugmentParams) -> Tagger:
    """The configured POS tagger: spaCy (the offline default) or NLTK (``augment.tagger: nltk``)."""
    if params.tagger == "nltk":
        return functools.partial(tag_sentences_nltk, params=params)
    nlp = load_tagger(params.spacy_model, params.pos_tagset)
    return functools.partial(tag_sentences, nlp=nlp, params=params)


def mask_and_replace(
    tokens: Sequence[str], tags: Sequence[str], params: AugmentParams, rng: np.random.Generator, vocab: TagVocab
) -> tuple[list[str], list[str | None]]:
    """Per token: mask with probability p_mask, else replace by a same-tag word with probability p_pos.

    Returns the new tokens and, per token, the operation that changed it (OP_MASK, OP_POS or None; a replacement
    that draws the token itself changes nothing).
    """
    out: list[str] = []
    token_ops: list[str | None] = []
    for token, tag, draw in zip(tokens, tags, rng.random(len(tokens)).tolist()):
        if draw < params.p_mask:
            out.append(MASK_TOKEN)
            token_ops.append(OP_MASK)
        elif draw < params.p_mask + params.p_pos:
            word = vocab.sample(tag, rng)
            out.append(word)
            token_ops.append(OP_POS if word != token else None)
        else:
            out.append(token)
            token_ops.append(None)
    return out, token_ops


def sample_ngram(n_tokens: int, params: AugmentParams, rng: np.random.Generator) -> slice:
    """With probability p_ng a random n-gram window, n uniform in [ngram_min, ngram_max] clipped to ``n_tokens``;
    otherwise the whole sentence."""
    if rng.random() >= params.p_ng:
        return slice(0, n_tokens)
    n = min(int(rng.integers(params.ngram_min, params.ngram_max + 1)), n_tokens)
    start = int(rng.integers(0, n_tokens - n + 1))
    return slice(start, start + n)


def augment_sentence(
    text: str, tagged: Tagged, params: AugmentParams, rng: np.random.Generator, vocab: TagVocab
) -> tuple[str, set[str]]:
    """One synthetic variant of a sentence and the operations visible in it; the original text if none are."""
    tokens, token_ops = mask_and_replace(*tagged, params, rng, vocab)
    window = sample_ngram(len(tokens), params, rng)
    kept = tokens[window]
    ops = {op for op in token_ops[window] if op is not None}
    if len(kept) < len(tokens):
        ops.add(OP_NGRAM)
    return (" ".join(kept) if ops else text), ops


def _sides_to_augment(index: int, params: AugmentParams, rng: np.random.Generator) -> tuple[bool, bool]:
    """Which sentences of a pair the ``index``-th synthetic example augments: (first, second)."""
    if params.pair_mode == "paper":
        return PAPER_CYCLE[index % len(PAPER_CYCLE)]
    if rng.random() < CODE_P_BOTH:
        return True, True
    first = bool(rng.random() < CODE_P_FIRST)
    return first, not first


def _variant(
    text: str | None, augment: bool, tagged: dict[str, Tagged], params: AugmentParams, rng: np.random.Generator,
    vocab: TagVocab,
) -> tuple[str | None, set[str]]:  # fmt: skip
    """One side of a synthetic example: ``text`` augmented, or unchanged (no ops) when not ``augment``."""
    return augment_sentence(text, tagged[text], params, rng, vocab) if augment else (text, set())


def n_iter_for(task: Task, params: AugmentParams) -> int:
    """Synthetic attempts per original: n_iter_pair for sentence pairs, n_iter_single otherwise."""
    return params.n_iter_pair if task.is_pair else params.n_iter_single


def build_transfer_set(
    prepared_train: pa.Table,
    task: Task,
    params: AugmentParams,
    seed: int,
    tagger: Tagger | None = None,
    unlabelled: pa.Table | None = None,
) -> pa.Table:
    """Originals (in input order), each followed by its deduplicated synthetic variants, then the ``unlabelled``
    rows (with variants of their own when ``params.augment_unlabelled``), as ``transfer_schema``."""
    tagger = tagger or make_tagger(params)
    sources = [(prepared_train, True)]
    if unlabelled is not None and unlabelled.num_rows:
        sources.append((unlabelled, False))
    augmented = [(table, is_labelled) for table, is_labelled in sources if is_labelled or params.augment_unlabelled]
    texts = [
        text
        for table, _ in augmented
        for column in ("text_a", "text_b")
        for text in table.column(column).to_pylist()
        if text is not None
    ]
    occurrences = Counter(texts)
    unique = list(occurrences)
    tagged = dict(zip(unique, tagger(unique)))
    # The unigram distribution counts every occurrence in the text augmented, not each distinct sentence once.
    vocab = TagVocab.from_sentences(tagged.values(), occurrences.values())

    rng = np.random.default_rng(seed)
    n_iter = n_iter_for(task, params)
    seen = {
        pair
        for table, _ in sources
        for pair in zip(table.column("text_a").to_pylist(), table.column("text_b").to_pylist())
    }
    # Columns in schema order (id is added at the end); add() appends one row.
    columns: dict[str, list] = {name: [] for name in transfer_schema(task).names if name != "id"}

    def add(source_id: int, kind: str, text_a: str, text_b: str | None, label: object, ops: set[str]) -> None:
        values = (source_id, kind == "original", kind == "unlabelled", text_a, text_b, label, sorted(ops))
        for name, value in zip(columns, values):
            columns[name].append(value)

    for table, is_labelled in sources:
        rows = zip(
            table.column("id").to_pylist(),
            table.column("text_a").to_pylist(),
            table.column("text_b").to_pylist(),
            table.column("label").to_pylist() if is_labelled else [None] * table.num_rows,
        )
        desc = f"augment {task.name}" + ("" if is_labelled else " (unlabelled)")
        for source_id, text_a, text_b, label in tqdm(rows, total=table.num_rows, desc=desc, disable=None):
            add(source_id, "original" if is_labelled else "unlabelled", text_a, text_b, label, set())
            if not (is_labelled or params.augment_unlabelled):
                continue
            for index in range(n_iter):
                first, second = _sides_to_augment(index, params, rng) if text_b is not None else (True, False)
                new_a, ops_a = _variant(text_a, first, tagged, params, rng, vocab)
                new_b, ops_b = _variant(text_b, second, tagged, params, rng, vocab)
                if (new_a, new_b) in seen:
                    continue
                seen.add((new_a, new_b))
                add(source_id, "synthetic" if is_labelled else "unlabelled", new_a, new_b, None, ops_a | ops_b)

    n_rows = len(columns["source_id"])
    return pa.table({"id": list(range(n_rows)), **columns}, schema=transfer_schema(task))


def run_augment(task: Task, params: Params, prepared_dir: Path, out_path: Path) -> pa.Table:
    """Stage entry point: read the prepared train split (and unlabelled text), build the transfer set, write it
    atomically."""
    prepared = pq.read_table(paths.prepared_split(task.name, "train", prepared_dir))
    unlabelled_path = paths.unlabelled_text(task.name, prepared_dir)
    unlabelled = pq.read_table(unlabelled_path) if unlabelled_path.is_file() else None
    table = build_transfer_set(prepared, task, params.augment, params.seed, unlabelled=unlabelled)
    write_parquet(table, out_path)
    n_originals = prepared.num_rows
    n_unlabelled = 0 if unlabelled is None else unlabelled.num_rows
    n_synthetic = table.num_rows - n_originals - n_unlabelled
    augmented = n_originals + (n_unlabelled if params.augment.augment_unlabelled else 0)
    attempts = augmented * n_iter_for(task, params.augment)
    log.info(
        "%s: %d originals, %d unlabelled rows, %d synthetic rows, %d duplicates dropped -> %s",
        task.name,
        n_originals,
        n_unlabelled,
        n_synthetic,
        attempts - n_synthetic,
        out_path,
    )
    return table
