"""Tiny GLUE data in the real GLUE layout of every task (column order, header, label strings, quirks).

Every file is tab-separated UTF-8 as distributed by GLUE's download script. Quirks reproduced:

- SST-2: sentences end with a space before the tab;
- CoLA: no header, columns (source, label, original-label notes ``*`` or empty, sentence);
- MRPC: header starts with a UTF-8 byte-order mark (as in the real files: ``\\ufeffQuality``), label first;
- QQP: questions with unbalanced / leading double quotes and commas;
- STS-B: ten columns, float scores ``0.000`` .. ``5.000``;
- MNLI: binary parses and parses before the sentences; train has label1 + gold_label, the dev files
  (dev_matched, dev_mismatched) label1..label5 + gold_label.

The data is learnable and small: the label is decided by a cue word (as ``tests.conftest.make_sentence``) drawn
from words the tiny test BERT knows. The first rows of some files are fixed, hand-written rows (``FIXED_ROWS``)
that tests spot-check.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.tasks import TASKS, Task, get_task
from tests.conftest import FILLER, NEGATIVE, POSITIVE


@dataclass(frozen=True)
class Example:
    """One row's content: texts as written in the file and the label string as written in the file."""

    text_a: str
    text_b: str | None
    label: str


# Cue words per class index (regression: score band); the last class of 3-way tasks (MNLI neutral) has no cue.
CUES: tuple[list[str] | None, ...] = (NEGATIVE, POSITIVE, None)

# Hand-written first rows (per task and split) carrying the layouts' quirks; tests spot-check them.
FIXED_ROWS: dict[str, dict[str, list[Example]]] = {
    "sst2": {"train": [Example("the film is really charming", None, "1"), Example("a dull story", None, "0")]},
    "cola": {"train": [Example("The story is very good.", None, "1"), Example("The plot is awful.", None, "0")]},
    "mrpc": {
        "train": [
            Example('The film, "a story", is good.', 'The "plot" is lovely, really.', "1"),
            Example("The acting is quite weak.", "A story with acting and plot.", "0"),
        ]
    },
    "qqp": {
        "train": [
            Example('What is "the best way to learn?', "How is the film, really, so funny?", "1"),
            Example('"Why is the plot so dull?"', 'Is the "acting really boring?', "0"),
            Example("Is the story, with acting, quite a film?", 'Why is it "clever"?', "1"),
        ],
        "dev": [Example('Is "the film good?', "Why is the acting awful?", "0")],
    },
    "stsb": {
        "train": [
            Example("A film is very funny.", "The story is funny.", "3.800"),
            Example("The plot and acting.", "A dull film.", "0.600"),
        ],
        "dev": [Example("The acting is superb.", "A superb story.", "5.000")],
    },
    "mnli": {
        "train": [
            Example("The film is a story with acting.", 'The "plot" is lovely.', "entailment"),
            Example("The film is a story with acting.", "The plot is tedious.", "contradiction"),
            Example("The film is a story with acting.", "The plot is a story.", "neutral"),
        ],
        "dev_matched": [Example("A film with acting.", "The acting is clumsy.", "contradiction")],
        "dev_mismatched": [Example("A story, really.", "The story is quite a story.", "neutral")],
    },
    "qnli": {"train": [Example("What is the film with acting?", "The film is great.", "not_entailment")]},
    "rte": {"train": [Example("The plot is a story.", "The story is lifeless.", "not_entailment")]},
    "wnli": {"train": [Example("The film is a story.", "The film is funny.", "1")]},
}


def _words(rng: random.Random, cue: list[str] | None) -> list[str]:
    words = rng.sample(FILLER, rng.randint(2, 5))
    if cue is not None:
        words.insert(rng.randint(0, len(words)), rng.choice(cue))
    return words


def _sentence(rng: random.Random, cue: list[str] | None, end: str = ".") -> str:
    """A capitalised sentence (``end`` attached), carrying one cue word if ``cue`` is given."""
    text = " ".join(_words(rng, cue))
    return text[0].upper() + text[1:] + end


def generate_examples(task: Task, n: int, rng: random.Random) -> list[Example]:
    """``n`` learnable rows: class ``i % num_classes`` (or a score band) decided by a cue word."""
    examples = []
    for i in range(n):
        if task.is_regression:
            similar = i % 2 == 1
            cue = CUES[int(similar)]
            label = f"{rng.uniform(3.0, 5.0) if similar else rng.uniform(0.0, 2.0):.3f}"
        else:
            cue = CUES[i % len(task.labels)]
            label = task.labels[i % len(task.labels)]
        if task.name == "sst2":
            examples.append(Example(" ".join(_words(rng, cue)), None, label))
        elif task.name == "cola":
            examples.append(Example(_sentence(rng, cue), None, label))
        elif task.name == "qqp":
            examples.append(Example(_sentence(rng, None, "?"), _sentence(rng, cue, "?"), label))
        elif task.name == "qnli":
            examples.append(Example(_sentence(rng, None, "?"), _sentence(rng, cue), label))
        else:
            examples.append(Example(_sentence(rng, None), _sentence(rng, cue), label))
    return examples


# --- one row of each layout -----------------------------------------------------------------------------------

MNLI_GENRES = {
    "train": ("government", "fiction", "telephone", "slate", "travel"),
    "dev_matched": ("government", "fiction", "telephone", "slate", "travel"),
    "dev_mismatched": ("nineeleven", "facetoface", "letters", "oup", "verbatim"),
}
MNLI_LETTER = {"contradiction": "c", "entailment": "e", "neutral": "n"}
STSB_GENRES = (
    ("main-captions", "MSRvid", "2012test"),
    ("main-news", "headlines", "2013"),
    ("main-forums", "answers-forums", "2015"),
)
COLA_SOURCES = ("gj04", "bc01", "ks08", "r-67", "c-05")


def _binary_parse(text: str) -> str:
    return "( " + " ".join(text.split()) + " )"


def _parse(text: str) -> str:
    return "(ROOT (S " + " ".join(f"(NN {word})" for word in text.split()) + "))"


def _header(task: Task, split: str) -> list[str] | None:
    return {
        "sst2": ["sentence", "label"],
        "cola": None,
        "mrpc": ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        "stsb": [
            "index",
            "genre",
            "filename",
            "year",
            "old_index",
            "source1",
            "source2",
            "sentence1",
            "sentence2",
            "score",
        ],
        "mnli": [
            "index",
            "promptID",
            "pairID",
            "genre",
            "sentence1_binary_parse",
            "sentence2_binary_parse",
            "sentence1_parse",
            "sentence2_parse",
            "sentence1",
            "sentence2",
            "label1",
            *(["label2", "label3", "label4", "label5"] if split != "train" else []),
            "gold_label",
        ],
        "qnli": ["index", "question", "sentence", "label"],
        "rte": ["index", "sentence1", "sentence2", "label"],
        "wnli": ["index", "sentence1", "sentence2", "label"],
    }[task.name]


def _fields(task: Task, split: str, i: int, ex: Example) -> list[str]:
    a, b, label = ex.text_a, ex.text_b, ex.label
    if task.name == "sst2":
        return [f"{a} ", label]
    if task.name == "cola":
        return [COLA_SOURCES[i % len(COLA_SOURCES)], label, "" if label == "1" else "*", a]
    if task.name == "mrpc":
        return [label, str(702876 + 7 * i), str(702977 + 11 * i), a, b]
    if task.name == "qqp":
        return [str(133273 + i), str(2 * i + 213221), str(2 * i + 213222), a, b, label]
    if task.name == "stsb":
        genre, filename, year = STSB_GENRES[i % len(STSB_GENRES)]
        return [str(i), genre, filename, year, f"{i + 1:04d}", "none", "none", a, b, label]
    if task.name == "mnli":
        genres = MNLI_GENRES[split]
        prompt = 31193 + 3 * i
        others = [other for other in MNLI_LETTER if other != label]
        annotators = [label] if split == "train" else [label, label, others[i % 2], label, label]
        return [
            str(i),
            str(prompt),
            f"{prompt}{MNLI_LETTER[label]}",
            genres[i % len(genres)],
            _binary_parse(a),
            _binary_parse(b),
            _parse(a),
            _parse(b),
            a,
            b,
            *annotators,
            label,
        ]
    return [str(i), a, b, label]  # qnli, rte, wnli


# --- writers --------------------------------------------------------------------------------------------------


def split_path(glue_dir: Path, task_name: str, split: str) -> Path:
    return Path(glue_dir) / get_task(task_name).glue_dir_name / f"{split}.tsv"


def write_task(
    glue_dir: Path, task_name: str, n_train: int = 40, n_dev: int = 16, seed: int = 0
) -> dict[str, list[Example]]:
    """Write every split of ``task_name`` under ``glue_dir/<GLUE folder>/``; return the rows written, per split."""
    task = get_task(task_name)
    rng = random.Random(f"{task.name}-{seed}")
    task_dir = Path(glue_dir) / task.glue_dir_name
    task_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Example]] = {}
    for split in task.splits:
        n = n_train if split == "train" else n_dev
        fixed = FIXED_ROWS.get(task.name, {}).get(split, [])[:n]
        examples = fixed + generate_examples(task, n - len(fixed), rng)
        header = _header(task, split)
        lines = ([] if header is None else ["\t".join(header)]) + [
            "\t".join(_fields(task, split, i, ex)) for i, ex in enumerate(examples)
        ]
        (task_dir / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        written[split] = examples
    return written


def write_glue(glue_dir: Path, task_names: list[str] | None = None, **kwargs) -> Path:
    """Write several tasks (default: every task of the registry) under ``glue_dir``; return ``glue_dir``."""
    for name in task_names if task_names is not None else list(TASKS):
        write_task(glue_dir, name, **kwargs)
    return Path(glue_dir)


def data_line_no(task_name: str, row: int) -> int:
    """1-based file line of data row ``row`` (0-based), accounting for the header row."""
    return row + (2 if get_task(task_name).has_header else 1)


def edit_line(path: Path, line_no: int, edit: Callable[[list[str]], list[str]]) -> None:
    """Replace the tab-separated fields of 1-based line ``line_no`` by ``edit(fields)``."""
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[line_no - 1] = "\t".join(edit(lines[line_no - 1].split("\t")))
    path.write_text("\n".join(lines), encoding="utf-8")


def drop_column(path: Path, column: str) -> None:
    """Remove the named column (header and every row) from a headed TSV file."""
    lines = path.read_text(encoding="utf-8").split("\n")
    index = lines[0].split("\t").index(column)
    path.write_text(
        "\n".join(
            "\t".join(f for j, f in enumerate(line.split("\t")) if j != index) if line else line for line in lines
        ),
        encoding="utf-8",
    )
