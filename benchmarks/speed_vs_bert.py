"""CPU inference speed of the trained student against BERT-base and BERT-large sized teachers.

The paper's speed-up (434x) is against BERT-large. Weights do not change a forward pass's cost, so the BERT
architectures are built randomly initialised from their published sizes (no download) and timed side by side
with the packaged MiniLM teacher and the trained student, on the same dev sentences, in one run.

    python benchmarks/speed_vs_bert.py --task sst2 --sentences 64 --threads 2
"""

from __future__ import annotations

import argparse

import pyarrow.parquet as pq
import torch
from transformers import BertConfig, BertForSequenceClassification

from pipeline import paths
from pipeline.data.schema import table_texts
from pipeline.data.tasks import get_task
from pipeline.serving.teacher import load_teacher, predict_logits
from pipeline.stages.evaluate import measure_throughput
from pipeline.students.architectures import load_student
from pipeline.students.inference import predict

BERT_SIZES = {  # published architecture sizes (hidden, layers, heads, intermediate)
    "bert-base": BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
MAX_LENGTH = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per model, interleaved; the median counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    cpu = torch.device("cpu")
    dev = pq.read_table(paths.prepared_split(task.name, task.dev_splits[0])).slice(0, args.sentences)
    text_a, text_b = table_texts(task, dev)

    teacher, tokenizer = load_teacher(paths.teacher_dir(task.name), cpu)
    models = {"teacher (fine-tuned)": teacher}
    for name, config in BERT_SIZES.items():
        config.num_labels = task.num_outputs
        config.vocab_size = tokenizer.vocab_size
        models[f"{name} (random init, timing only)"] = BertForSequenceClassification(config).eval()
    student, encoder = load_student(paths.student_dir(task.name), cpu)

    predictors = {
        name: lambda a, b, bs, model=model: predict_logits(model, tokenizer, a, b, bs, MAX_LENGTH)
        for name, model in models.items()
    }
    predictors["student"] = lambda a, b, bs: predict(student, encoder, task.name, a, b, bs)
    speed = measure_throughput(predictors, text_a, text_b, args.batch_size, args.repeats)
    rates = {name: value["median"] for name, value in speed.items()}
    print(f"task {task.name}, {len(text_a)} dev sentences, batch size {args.batch_size}, {args.threads} CPU threads")
    for name, rate in rates.items():
        ratio = rates["student"] / rate
        print(f"{name:40s} {rate:9.1f} sentences/s   student is {ratio:7.1f}x faster")


if __name__ == "__main__":
    main()
