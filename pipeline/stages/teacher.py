"""``teacher`` and ``mt_teacher`` stages: fine-tune the BERT teacher on one task, or on every task with one shared
encoder (MT-DNN); runs in one process or as DDP under ``accelerate launch`` / ``torchrun``, checkpoints every epoch
and, run again after a kill, resumes from the last checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from pipeline import paths
from pipeline.data.io import atomic_dir
from pipeline.data.tasks import Task
from pipeline.params import MtTeacherParams, Params, TeacherParams
from pipeline.serving.teacher import resolve_checkpoint, token_lengths
from pipeline.training.accelerator import RowTrace, accelerated
from pipeline.training.checkpoint import CheckpointPlan, stage_checkpoint_dir
from pipeline.training.device import (
    seed_everything,
    use_threads,
)
from pipeline.training.finetune import (
    ADAMW_OPTIONS,
    FineTuning,
    SharedEncoderTeacher,
    build_teacher,
    load_task_data,
    training_schedule,
)
from pipeline.training.sampling import TaskBatchSampler

log = logging.getLogger(__name__)

SINGLE_TASK_SAMPLING = MtTeacherParams()  # proportional: every training row once per epoch


def save_teachers(
    teacher: SharedEncoderTeacher, tokenizer: PreTrainedTokenizerBase, out_dirs: Mapping[str, Path]
) -> None:
    """Each task's complete model (shared encoder + its head) and the tokenizer, atomically, into ``out_dirs[task]``."""
    for name, model in teacher.models.items():
        with atomic_dir(out_dirs[name]) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)


def build_optimizer(model: nn.Module, hp: TeacherParams) -> torch.optim.Optimizer:
    """The teacher's optimizer: AdamW (fused) over all parameters, ``teacher.learning_rate`` and ``weight_decay``."""
    return torch.optim.AdamW(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay, **ADAMW_OPTIONS)


def checkpoint_plan(
    tasks: Sequence[Task], params: Params, prepared_dir: Path, out_dirs: Mapping[str, Path], sampling: MtTeacherParams,
    checkpoint_dir: Path | None,
) -> CheckpointPlan:  # fmt: skip
    """Where the run checkpoints (``checkpoint_dir``; by default ``checkpoints/teacher/<task>`` or
    ``checkpoints/mt_teacher`` when ``out_dirs`` are the workspace's teacher folders, else none) and what its
    checkpoints depend on: the teacher params, the tasks' prepared splits and the starting checkpoint."""
    outputs = [out_dirs[task.name] for task in tasks]
    folder = stage_checkpoint_dir(
        checkpoint_dir, outputs, [paths.mt_teacher_dir(task.name) for task in tasks], "mt_teacher"
    )
    if len(tasks) == 1 and folder is None:
        folder = stage_checkpoint_dir(None, outputs, [paths.teacher_dir(tasks[0].name)], "teacher", tasks[0].name)
    sections = {
        "seed": params.seed, "threads": params.threads, "tasks": [task.name for task in tasks],
        "teacher": params.teacher, "sampling": sampling,
    }  # fmt: skip
    splits = [paths.prepared_split(t.name, split, prepared_dir) for t in tasks for split in ("train", t.dev_splits[0])]
    return CheckpointPlan(folder, sections, [*splits, Path(resolve_checkpoint(params.teacher.checkpoint))])


def fine_tune(
    tasks: Sequence[Task],
    params: Params,
    prepared_dir: Path,
    out_dirs: Mapping[str, Path],
    log_dir: Path,
    sampling: MtTeacherParams = SINGLE_TASK_SAMPLING,
    checkpoint_dir: Path | None = None,
) -> dict[str, dict[str, float]]:
    """Fine-tune ``teacher.checkpoint`` on the tasks' train splits: one shared encoder, one output layer per task,
    each mini-batch from one task (``sampling``; the default, proportional, sees every row once per epoch).

    Saves each task's model to ``out_dirs[task]`` and logs DVCLive curves to ``log_dir`` (main process only).
    Checkpoints every epoch (``checkpoint_plan``) and deletes the checkpoints once the models are saved.
    Returns the final dev metrics per task on the main process, an empty dict on the others.
    """
    hp = params.teacher
    plan = checkpoint_plan(tasks, params, prepared_dir, out_dirs, sampling, checkpoint_dir)
    with accelerated(hp.mixed_precision, several_tasks=len(tasks) > 1) as accelerator:
        seed_everything(params.seed)
        use_threads(params.threads)
        checkpoint = resolve_checkpoint(hp.checkpoint)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        data = {task.name: load_task_data(task, tokenizer, prepared_dir, hp.max_length) for task in tasks}
        sampler = TaskBatchSampler(
            {name: np.asarray(token_lengths(item.encoded)) for name, item in data.items()},
            {name: hp.batch_size for name in data},
            sampling.sampling, sampling.temperature, params.seed,
        )  # fmt: skip
        schedule = training_schedule(sampler, hp.epochs, hp.gradient_accumulation_steps)
        total_steps = sum(len(steps) for steps in schedule)
        model = build_teacher(checkpoint, tasks)
        optimizer = build_optimizer(model, hp)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(hp.warmup_ratio * total_steps), total_steps)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        run = FineTuning(accelerator, model, optimizer, scheduler, tokenizer, data, RowTrace(accelerator.process_index))
        if accelerator.is_main_process:
            log.info(
                "teacher %s: %d process(es) on %s, mixed precision %s, %d optimizer steps",
                "+".join(data), accelerator.num_processes, accelerator.device.type, accelerator.mixed_precision,
                total_steps,
            )  # fmt: skip
        checkpoints = plan.open(accelerator)
        dev = run.train(schedule, hp, log_dir, checkpoints)
        if accelerator.is_main_process:
            save_teachers(run.teacher(), tokenizer, out_dirs)
        if checkpoints is not None:
            checkpoints.remove(accelerator)
        accelerator.wait_for_everyone()
        return dev
