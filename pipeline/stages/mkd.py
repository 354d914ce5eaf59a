"""MKD stage (Liu et al.): one student per architecture, distilled jointly on every task, then fine-tuned per task.

The student (shared layers + one head per task) learns from each task's logit shards — scored by the multi-task
teacher (``mkd.teacher: multitask``) or by the single-task teachers (``single``) — with every mini-batch from one
task. Optional per-task fine-tuning then starts from the jointly distilled weights and yields one model per task; a
task keeps the fine-tuned model only if it beats the joint model on that task's dev score (``task_score``, as
``compare`` ranks). One process, or DDP under ``torchrun`` / ``accelerate launch`` (every process reads all rows and
trains on its share of each batch). The joint run and each fine-tuning checkpoint every epoch, so a killed stage run
again resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from pipeline import paths
from pipeline.data.io import atomic_dir
from pipeline.data.metrics import task_score
from pipeline.data.subsets import filter_originals, kept_originals
from pipeline.data.tasks import Task, resolve_task
from pipeline.params import MKDStudentTraining, Params
from pipeline.serving.teacher import resolve_checkpoint
from pipeline.students.architectures import get_architecture, save_student
from pipeline.students.base import StudentModel
from pipeline.students.encoding import StudentEncoder
from pipeline.students.transformer import stored_tensors
from pipeline.training.accelerator import accelerated
from pipeline.training.checkpoint import CheckpointPlan, Checkpoints, stage_checkpoint_dir
from pipeline.training.device import seed_everything, use_threads
from pipeline.training.fit import TaskData, fit
from pipeline.training.losses import distillation_loss_fn
from pipeline.training.student_data import (
    all_texts,
    build_task_data,
    distillation_targets,
    read_shards,
    training_summary,
)

log = logging.getLogger(__name__)
HEAD_PREFIX = "classifier."  # a fine-tuned teacher's task head (AutoModelForSequenceClassification)


def _task_data(task: Task, params: Params, encoder: StudentEncoder, table: pa.Table, prepared_dir: Path) -> TaskData:
    loss_fn = distillation_loss_fn(task, params.mkd.alpha)
    return build_task_data(task, encoder, table, distillation_targets(task, table), loss_fn, prepared_dir)


def run_mkd(
    architecture: str, params: Params, logits_root: Path, prepared_dir: Path, mt_teacher_root: Path, out_dir: Path,
    log_dir: Path, finetune_log_dir: Path, checkpoint_dir: Path | None = None, teacher_root: Path = paths.TEACHER_DIR,
) -> dict[str, Any]:  # fmt: skip
    """Distil every task in ``params.tasks`` into one ``architecture`` student, then fine-tune per task; save all.

    Training curves go to ``log_dir`` (joint distillation) and ``finetune_log_dir/<task>``. The student starts from
    ``mkd.init_source(architecture)``: ``teacher.checkpoint``, the multi-task teacher (any task's folder under
    ``mt_teacher_root``: they share the encoder) or the mean of the single-task teachers under ``teacher_root``.
    Writes ``out_dir/multitask`` (the joint student, all heads) and, with ``mkd.finetune_epochs > 0``,
    ``out_dir/<task>`` (one head each). Returns a summary with every model's best dev metrics. Epochs are
    checkpointed in ``checkpoint_dir`` (default: ``checkpoints/mkd/<architecture>`` when ``out_dir`` is the
    workspace's ``models/mkd/<architecture>``, else none).
    """
    train_params = getattr(params.mkd.training, architecture)
    tasks = [resolve_task(name, params) for name in params.tasks]
    shard_dirs = {task.name: paths.shard_dir(task.name, params.mkd.teacher, logits_root) for task in tasks}
    init_from = params.mkd.init_source(architecture)
    if init_from == "teachers":
        init_dirs = [paths.teacher_dir(task.name, teacher_root) for task in tasks]
    elif init_from == "mt_teacher":
        init_dirs = [paths.mt_teacher_dir(tasks[0].name, mt_teacher_root)]
    else:
        init_dirs = [Path(resolve_checkpoint(params.teacher.checkpoint))]
    plan = CheckpointPlan(
        stage_checkpoint_dir(checkpoint_dir, [out_dir], [paths.mkd_dir(architecture)], "mkd", architecture),
        {
            "seed": params.seed, "threads": params.threads, "tasks": params.tasks, "mkd": params.mkd,
            architecture: getattr(params, architecture), "teacher.checkpoint": params.teacher.checkpoint,
        },
        [*shard_dirs.values(), *(paths.prepared_split(t.name, t.dev_splits[0], prepared_dir) for t in tasks),
         *init_dirs],
    )  # fmt: skip
    with (
        accelerated(train_params.mixed_precision, several_tasks=len(tasks) > 1) as accelerator,
        tempfile.TemporaryDirectory(prefix="mkd-init-") as scratch,
    ):
        if len(init_dirs) > 1:
            log.info("mkd %s: starting from the mean of %d teachers' weights", architecture, len(init_dirs))
        init_dir = init_dirs[0] if len(init_dirs) == 1 else average_teachers(init_dirs, Path(scratch))
        seed_everything(params.seed)
        use_threads(params.threads)
        budget = min(
            (limit for limit in (params.mkd.max_originals_per_task, train_params.max_originals_per_task) if limit),
            default=None,
        )
        tables = {task.name: budgeted_rows(task, shard_dirs[task.name], budget, params.seed) for task in tasks}
        texts = itertools.chain.from_iterable(all_texts(task, tables[task.name]) for task in tasks)
        model, encoder = get_architecture(architecture).build(params, tasks, init_dir, texts, params.seed)
        data = {task.name: _task_data(task, params, encoder, tables[task.name], prepared_dir) for task in tasks}
        rows = {name: table.num_rows for name, table in tables.items()}
        log.info("mkd %s: transfer rows per task %s; training %s", architecture, rows, train_params)
        main = accelerator.is_main_process
        if main:
            shutil.rmtree(finetune_log_dir, ignore_errors=True)
        checkpoints = plan.open(accelerator)
        with atomic_dir(out_dir) if main else contextlib.nullcontext(out_dir) as tmp_out:
            summary = _distil_and_fine_tune(
                architecture, params, train_params, model, encoder, data, rows, tmp_out, log_dir, finetune_log_dir,
                accelerator, checkpoints,
            )  # fmt: skip
            accelerator.wait_for_everyone()
        if checkpoints is not None:
            checkpoints.remove(accelerator)
    return summary


def average_teachers(teacher_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Write to ``out_dir`` one checkpoint whose tensors are the element-wise means of the fine-tuned teachers'.

    The teachers must be fine-tuned copies of one checkpoint (same tokenizer, same encoder shapes); task heads whose
    shapes differ between them (other label counts) are left out. Config and tokenizer files come from the first
    teacher. Returns ``out_dir``.
    """
    if not teacher_dirs:
        raise ValueError("average_teachers: no teacher to average")
    first = Path(teacher_dirs[0])
    tokenizer_files = sorted(path.name for path in first.glob("*") if path.name.startswith(("tokenizer", "vocab")))
    total: dict[str, torch.Tensor] = {}
    for teacher_dir in map(Path, teacher_dirs):
        for name in tokenizer_files:
            if (teacher_dir / name).read_bytes() != (first / name).read_bytes():
                raise ValueError(f"{teacher_dir / name} differs from {first / name}: teachers of other tokenizers")
        stored = stored_tensors(teacher_dir)
        if not total:
            total = {name: tensor.double() for name, tensor in stored.items()}
            continue
        if missing := sorted(set(total) - set(stored)):
            raise ValueError(f"{teacher_dir}: lacks {', '.join(missing[:3])}, which {first} has")
        reshaped = [name for name, sum_ in total.items() if sum_.shape != stored[name].shape]
        if encoder := [name for name in reshaped if not name.startswith(HEAD_PREFIX)]:
            raise ValueError(
                f"{teacher_dir}: {encoder[0]} has shape {list(stored[encoder[0]].shape)}, in {first} "
                f"{list(total[encoder[0]].shape)}: the teachers are not fine-tuned copies of one checkpoint"
            )
        total = {name: sum_ + stored[name].double() for name, sum_ in total.items() if name not in reshaped}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({name: (sum_ / len(teacher_dirs)).float() for name, sum_ in total.items()}, out_dir / "model.safetensors")
    for name in ["config.json", *tokenizer_files]:
        shutil.copy2(first / name, out_dir / name)
    return out_dir


def budgeted_rows(task: Task, shard_dir: Path, budget: int | None, seed: int) -> pa.Table:
    """The shard rows of the ``budget`` originals (``pipeline.subsets``) chosen among all the shards' originals."""
    table = read_shards(task, shard_dir)
    return filter_originals(table, kept_originals(table.column("source_id").to_numpy(), budget, seed))


def _distil_and_fine_tune(
    architecture: str, params: Params, train_params: MKDStudentTraining, model: StudentModel, encoder: StudentEncoder,
    data: dict[str, TaskData], rows: dict[str, int], out_dir: Path, log_dir: Path, finetune_log_dir: Path,
    accelerator: Accelerator, checkpoints: Checkpoints | None,
) -> dict[str, Any]:  # fmt: skip
    """Joint distillation, then per-task fine-tuning; only the main process logs and saves."""
    tasks = [d.task for d in data.values()]
    main = accelerator.is_main_process
    joint = fit(
        model, data, train_params, params.seed, accelerator, log_dir, params.mkd.sampling, params.mkd.temperature,
        desc=f"mkd {architecture}", checkpoints=checkpoints and checkpoints.sub(paths.MKD_JOINT),
        length_keys=(f"mkd.training.{architecture}.epochs", f"mkd.training.{architecture}.steps"),
    )  # fmt: skip
    summary: dict[str, Any] = {paths.MKD_JOINT: training_summary(model, joint, rows)}
    if main:
        save_student(model, encoder, out_dir / paths.MKD_JOINT, summary[paths.MKD_JOINT])

    if params.mkd.finetune_epochs:
        # mkd.finetune_epochs alone sets the fine-tuning length, whatever steps budget the joint phase has
        finetune_params = train_params.model_copy(update={"epochs": params.mkd.finetune_epochs, "steps": None})
        for task in tasks:
            tuned = copy.deepcopy(model)
            tuned.keep_tasks([task.name])
            result = fit(
                tuned, {task.name: data[task.name]}, finetune_params, params.seed, accelerator,
                finetune_log_dir / task.name, desc=f"mkd {architecture} fine-tune {task.name}",
                checkpoints=checkpoints and checkpoints.sub(task.name), length_keys=("mkd.finetune_epochs", ""),
            )  # fmt: skip
            tuned_score, joint_score = (task_score(task, r.best_metrics[task.name]) for r in (result, joint))
            improved = tuned_score > joint_score
            if not improved:
                tuned = copy.deepcopy(model)
                tuned.keep_tasks([task.name])
            task_summary = {
                **training_summary(tuned, result, {task.name: rows[task.name]}),
                "fine_tuned": improved,
                "dev": {task.name: result.best_metrics[task.name] if improved else joint.best_metrics[task.name]},
            }
            log.info("mkd %s %s: %s", architecture, task.name, "fine-tuned" if improved else "joint model kept")
            summary[task.name] = task_summary
            if main:
                save_student(tuned, encoder, out_dir / task.name, task_summary)
    return summary
