"""Arrow schemas of the pipeline's tables: prepared splits, the transfer set, and teacher logit shards."""

from __future__ import annotations

# Operations recorded per transfer-set row, in the ``ops`` column.
import pyarrow as pa

from pipeline.data.tasks import Task

OP_MASK = "mask"
OP_POS = "pos"
OP_NGRAM = "ngram"


def label_type(task: Task) -> pa.DataType:
    """Class index (int64) for classification, score (float32) for regression."""
    return pa.float32() if task.is_regression else pa.int64()


def prepared_schema(task: Task) -> pa.Schema:
    """One GLUE split: ``text_b`` is null for single-sentence tasks."""
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("text_a", pa.string(), nullable=False),
            pa.field("text_b", pa.string()),
            pa.field("label", label_type(task), nullable=False),
        ]
    )


def unlabelled_schema() -> pa.Schema:
    """In-domain text without labels (``text_b`` null for single-sentence tasks)."""
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("text_a", pa.string(), nullable=False),
            pa.field("text_b", pa.string()),
        ]
    )


def transfer_schema(task: Task) -> pa.Schema:
    """Transfer set: originals (``is_original``, labelled) each followed by its synthetic variants (label null), then
    the unlabelled in-domain rows (``is_unlabelled``, label null; ``source_id`` their id in ``unlabelled``), each
    followed by its variants when augmented."""
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("source_id", pa.int64(), nullable=False),
            pa.field("is_original", pa.bool_(), nullable=False),
            pa.field("is_unlabelled", pa.bool_(), nullable=False),
            pa.field("text_a", pa.string(), nullable=False),
            pa.field("text_b", pa.string()),
            pa.field("label", label_type(task)),
            pa.field("ops", pa.list_(pa.string()), nullable=False),
        ]
    )


def shard_schema(task: Task) -> pa.Schema:
    """Teacher logit shard: the transfer-set columns plus ``logits`` (fixed-size list of float32)."""
    return transfer_schema(task).append(pa.field("logits", pa.list_(pa.float32(), task.num_outputs), nullable=False))


def table_texts(task: Task, table: pa.Table) -> tuple[list[str], list[str] | None]:
    """``text_a`` and, for pair tasks, ``text_b`` of a prepared/transfer/shard table as Python lists."""
    text_b = table.column("text_b").to_pylist() if task.is_pair else None
    return table.column("text_a").to_pylist(), text_b


MASK_TOKEN = "[MASK]"
