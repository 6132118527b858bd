"""TrainingArguments: what a training run does, with Hugging Face's names, defaults
and meanings, checked once at construction.

The fields are those of ``transformers.TrainingArguments`` 5.24, in its order, plus
pytrainer's own (``field_kinds.PYTRAINER_FIELDS``). Scripts written for it work
unchanged: ``pytrainer.field_kinds`` says which fields pytrainer honours and which it
accepts at their default only (any other value is an error saying what to use
instead), and ``pytrainer.deprecated_args`` maps the transformers 4.x names scripts
still carry (``evaluation_strategy``, ``no_cuda``, ``warmup_ratio``, ...). Every value
is checked in ``__post_init__``; a mistake raises a ValueError naming the field and
the value at construction, not an hour into a run. The object is JSON-serialisable
(``to_json_string`` / ``from_json_string``), which is how checkpoints store it
instead of pickling.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal, Mapping, get_args

from pytrainer import deprecated_args
from pytrainer._arg_checks import (MAX_SEED, check_bool, check_str, choice, copy_json,
                                   json_object, plain, same, show, string_list, to_float, to_int,
                                   to_steps)
from pytrainer._build_info import release
from pytrainer._suggest import did_you_mean
from pytrainer.args_runtime import ProcessProperties
from pytrainer.field_kinds import reject_unavailable

__all__ = ["TrainingArguments", "StepIntervals", "resolve_interval", "INTERVAL_STRATEGIES",
           "SAVE_STRATEGIES", "SCHEDULER_TYPES", "DEFAULT_OUTPUT_DIR"]

logger = logging.getLogger(__name__)

IntervalStrategyName = Literal["no", "steps", "epoch"]
#: ``"best"`` saves only when ``metric_for_best_model`` improves
SaveStrategyName = Literal["no", "steps", "epoch", "best"]
#: the schedulers of Hugging Face's ``SchedulerType`` (5.24)
SchedulerName = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                        "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau",
                        "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay",
                        "greedy"]
HubStrategyName = Literal["end", "every_save", "checkpoint", "all_checkpoints"]

INTERVAL_STRATEGIES: tuple[str, ...] = get_args(IntervalStrategyName)
SAVE_STRATEGIES: tuple[str, ...] = get_args(SaveStrategyName)
#: the schedulers pytrainer implements (transformers' "greedy" is not one of them)
SCHEDULER_TYPES: tuple[str, ...] = tuple(s for s in get_args(SchedulerName) if s != "greedy")
LOG_LEVELS = ("detail", "debug", "info", "warning", "error", "critical", "passive")
SAMPLING_STRATEGIES = ("random", "sequential", "group_by_length", "batch_rebalance")
DDP_BACKENDS = ("nccl", "gloo", "mpi", "xccl", "hccl", "cncl", "mccl")
MULTIPROCESSING_CONTEXTS = ("fork", "spawn", "forkserver")
#: the modes torch.compile takes
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
METRIC_INCLUDES = ("inputs", "loss")
TOKEN_COUNTS = ("all", "non_padding", "no")
#: fsdp's string options pytrainer's FSDP2 matches (it shards fully, every child module)
FSDP_OPTIONS = ("full_shard", "auto_wrap")

DEFAULT_OUTPUT_DIR = "trainer_output"


@dataclass(frozen=True)
class StepIntervals:
    """The step-valued fields as optimizer-step counts for one run (see
    :meth:`TrainingArguments.resolve_steps`). 0 means "never"; ``eval_steps`` is
    None when no step interval applies to evaluation."""
    logging_steps: int
    eval_steps: int | None
    save_steps: int


def resolve_interval(value: float | None, total_steps: int) -> int | None:
    """A step-valued field as a step count: values >= 1 are counts, values in
    (0, 1) are ratios of ``total_steps`` rounded up (at least 1), 0 stays 0."""
    if value is None:
        return None
    if value >= 1:
        return int(value)
    if value > 0:
        return max(1, math.ceil(total_steps * value))
    return 0


def _help(text: str, **metadata: Any) -> dict[str, Any]:
    # Only keys argparse takes: transformers' HfArgumentParser passes metadata to
    # add_argument as it is, and scripts build it over this class.
    return {"help": text, **metadata}


def _default_optim() -> str:
    """transformers' default optimizer: torch's fused AdamW from torch 2.8 on, its
    for-each AdamW before. Read from torch's package metadata: importing torch here
    would slow every import of the arguments."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:  # a torch built without metadata
        import torch
        version = torch.__version__
    return "adamw_torch_fused" if release(version) >= (2, 8) else "adamw_torch"


class _OptimizerNames(Sequence):
    """The registered optimizer names, read when asked: the registry imports torch, and
    names registered after this module loaded count. A sequence, so that argparse (ours
    and transformers') can use it as ``choices``."""

    @staticmethod
    def _names() -> list[str]:
        from pytrainer.optim.registry import optimizer_names
        return optimizer_names()

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()


class _TakesTransformers4Names(type):
    """Lets the constructor of TrainingArguments (and of its subclasses, whose generated
    ``__init__`` a wrapper would not reach) take the transformers 4.x names of
    ``pytrainer.deprecated_args``. Seeing the keywords as given also tells an explicit
    ``eval_strategy="no"`` from the default when both names are used."""

    def __call__(cls, *args, **kwargs):
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs, kept = deprecated_args.resolve(kwargs, fields)
        instance = super().__call__(*args, **kwargs)
        if kept:
            instance.__dict__.setdefault(deprecated_args.KEPT, {}).update(kept)
        return instance

    @property
    def __signature__(cls) -> inspect.Signature:
        signature = inspect.signature(cls.__init__)
        parameters = list(signature.parameters.values())[1:]  # without self
        names = {p.name for p in parameters}
        parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                         annotation=entry.hint)
                       for name, entry in deprecated_args.DEPRECATED.items() if name not in names]
        return signature.replace(parameters=parameters)


@dataclass
class TrainingArguments(ProcessProperties, metaclass=_TakesTransformers4Names):
    """The arguments of a training run, as ``transformers.TrainingArguments`` names them.

    Step-valued fields (``logging_steps``, ``eval_steps``, ``save_steps``,
    ``warmup_steps``) below 1 are ratios of the total number of optimizer steps;
    :meth:`resolve_steps` and :meth:`get_warmup_steps` turn them into counts. All
    fields after ``output_dir`` are keyword-only, as scripts pass them.
    """

    output_dir: str | None = field(default=None, metadata=_help(
        "Where checkpoints and results are written; None means 'trainer_output'. `~` is "
        "expanded."))
    _: KW_ONLY
    # --- training length and batch size
    per_device_train_batch_size: int = field(default=8, metadata=_help(
        "Batch size per device (GPU or CPU) for training."))
    num_train_epochs: float = field(default=3.0, metadata=_help(
        "Epochs to train for. A fractional value trains the last epoch partially (that fraction "
        "of its optimizer steps). Ignored when max_steps > 0."))
    max_steps: int = field(default=-1, metadata=_help(
        "When > 0, the total number of optimizer steps to run, overriding num_train_epochs. "
        "Required when the dataset has no length."))
    # --- learning rate and schedule
    learning_rate: float = field(default=5e-5, metadata=_help(
        "The initial learning rate of the optimizer."))
    lr_scheduler_type: SchedulerName = field(default="linear", metadata=_help(
        "The learning-rate schedule (transformers' 'greedy' is not available)."))
    lr_scheduler_kwargs: dict[str, Any] | str | None = field(default=None, metadata=_help(
        "Extra arguments of the scheduler, as a dict or a JSON object string, e.g. "
        "'{\"num_cycles\": 2}'."))
    warmup_steps: float = field(default=0, metadata=_help(
        "Steps of linear warmup: a count when >= 1, a ratio of the total steps when in (0, 1)."))
    # --- optimizer
    optim: str = field(default=_default_optim(), metadata=_help(
        "The optimizer: every name of transformers' OptimizerNames, plus pytrainer's "
        "adamw_custom_fused (fused AdamW kernels) and adamw_hf. Those needing a library are "
        "an error when it is not installed.", choices=_OptimizerNames()))
    optim_args: str | None = field(default=None, metadata=_help(
        "Extra optimizer arguments, as 'key=value,key=value' (e.g. 'momentum=0.9' for sgd)."))
    weight_decay: float = field(default=0.0, metadata=_help(
        "Weight decay applied to every parameter except biases and normalisation-layer weights "
        "(LayerNorm, RMSNorm and parameters named like them)."))
    adam_beta1: float = field(default=0.9, metadata=_help("beta1 of the Adam-type optimizers."))
    adam_beta2: float = field(default=0.999, metadata=_help("beta2 of the Adam-type optimizers."))
    adam_epsilon: float = field(default=1e-8, metadata=_help(
        "epsilon of the Adam-type optimizers."))
    # (transformers' member order: its parser reads the second member of an Optional union)
    optim_target_modules: None | str | list[str] = field(default=None, metadata=_help(
        "The modules GaLore and APOLLO project: names, a regular expression, or 'all-linear'."))
    # --- regularisation and stability
    gradient_accumulation_steps: int = field(default=1, metadata=_help(
        "Forward/backward passes whose gradients are accumulated before one optimizer update: "
        "batch 2 with 4 accumulation steps updates with the gradient of 8 samples, with the "
        "memory of 2."))
    average_tokens_across_devices: bool = field(default=True, metadata=_help(
        "Count the loss's tokens over all processes, so that each token weighs the same "
        "whatever process it is on."))
    max_grad_norm: float = field(default=1.0, metadata=_help(
        "Gradients are clipped to this total norm; 0 (or None) disables clipping."))
    label_smoothing_factor: float = field(default=0.0, metadata=_help(
        "Label smoothing of the cross-entropy loss, in [0, 1]; 0 is none."))
    # --- precision
    bf16: bool = field(default=False, metadata=_help(
        "bfloat16 mixed precision (autocast); weights stay in float32."))
    fp16: bool = field(default=False, metadata=_help(
        "float16 mixed precision (autocast with loss scaling); weights stay in float32."))
    bf16_full_eval: bool = field(default=False, metadata=_help(
        "Not available in pytrainer: evaluation runs in the training precision."))
    fp16_full_eval: bool = field(default=False, metadata=_help(
        "Not available in pytrainer: evaluation runs in the training precision."))
    tf32: bool | None = field(default=None, metadata=_help(
        "TF32 matrix multiplications on Ampere and newer GPUs: True, False, or None to leave "
        "torch's setting."))
    # --- activation checkpointing
    activation_checkpointing: bool | None = field(default=None, metadata=_help(
        "Recompute activations in the backward pass instead of keeping them: less memory, "
        "more compute.", nargs="?", const=True))
    activation_checkpointing_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata=_help(
            "Keyword arguments of the model's gradient_checkpointing_enable (e.g. "
            "'{\"use_reentrant\": false}')."))
    gradient_checkpointing: bool | None = field(default=None, metadata=_help(
        "transformers 5's deprecated name of activation_checkpointing.", nargs="?", const=True))
    gradient_checkpointing_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata=_help(
            "transformers 5's deprecated name of activation_checkpointing_kwargs."))
    # --- compilation
    torch_compile: bool = field(default=False, metadata=_help(
        "Compile the model with torch.compile."))
    torch_compile_backend: str | None = field(default=None, metadata=_help(
        "torch.compile's backend; setting it turns torch_compile on (default 'inductor')."))
    torch_compile_mode: str | None = field(default=None, metadata=_help(
        "torch.compile's mode; setting it turns torch_compile on.",
        choices=list(COMPILE_MODES)))
    # --- kernels
    use_liger_kernel: bool = field(default=False, metadata=_help(
        "Not available in pytrainer: apply Liger's kernels to the model yourself."))
    liger_kernel_config: dict[str, bool] | None = field(default=None, metadata=_help(
        "Not available in pytrainer (see use_liger_kernel)."))
    # --- other optimisations
    use_cache: bool = field(default=False, metadata=_help(
        "Written into model.config.use_cache for training (the key/value cache is of no use "
        "there)."))
    neftune_noise_alpha: float | None = field(default=None, metadata=_help(
        "NEFTune: scale of the uniform noise added to the input embeddings while training; "
        "None is none."))
    torch_empty_cache_steps: int | None = field(default=None, metadata=_help(
        "Empty the device's memory cache every this many steps (slower, lower peak memory); "
        "None never."))
    auto_find_batch_size: bool = field(default=False, metadata=_help(
        "On out-of-memory, halve the per-device batch and retry, keeping the global batch "
        "with more accumulation steps."))
    # --- logging
    logging_strategy: IntervalStrategyName = field(default="steps", metadata=_help(
        "When to log: 'no'; 'steps' (every logging_steps); 'epoch' (at the end of each epoch)."))
    logging_steps: float = field(default=500, metadata=_help(
        "Log every this many optimizer steps with the 'steps' strategy; a value below 1 is a "
        "ratio of the total steps."))
    logging_first_step: bool = field(default=False, metadata=_help(
        "Whether to log after the first optimizer step too."))
    log_on_each_node: bool = field(default=True, metadata=_help(
        "In multi-node runs, whether the first process of each node logs at log_level (True) "
        "or only the first process of the run does."))
    logging_nan_inf_filter: bool = field(default=True, metadata=_help(
        "Leave NaN and inf losses out of the logged training loss (training is not changed)."))
    include_num_input_tokens_seen: str | bool = field(default="no", metadata=_help(
        "Count the input tokens seen and log them with tokens per second: 'all', "
        "'non_padding', 'no' (True means 'all', False 'no')."))
    log_level: str = field(default="passive", metadata=_help(
        "Log level of the main process; 'passive' leaves it to the application.",
        choices=list(LOG_LEVELS)))
    log_level_replica: str = field(default="warning", metadata=_help(
        "Log level of the other processes.", choices=list(LOG_LEVELS)))
    disable_tqdm: bool | None = field(default=None, metadata=_help(
        "Hide the progress bars; None hides them when the log level is above warning."))
    # --- experiment tracking
    report_to: list[str] | str | None = field(default="none", metadata=_help(
        "Where to report metrics besides the log: 'none' (the default, as in transformers 5), "
        "'all', or integration names. Stored as a list; 'none' becomes []."))
    run_name: str | None = field(default=None, metadata=_help(
        "A name for the run, shown by the reporting integrations."))
    project: str = field(default="huggingface", metadata=_help(
        "Not available in pytrainer: a Trackio project."))
    trackio_space_id: str | None = field(default=None, metadata=_help(
        "Not available in pytrainer: a Trackio Space."))
    trackio_bucket_id: str | None = field(default=None, metadata=_help(
        "Not available in pytrainer: a Trackio bucket."))
    trackio_static_space_id: str | None | Literal[False] = field(default=None, metadata=_help(
        "Not available in pytrainer: a static Trackio Space."))
    # --- evaluation
    eval_strategy: IntervalStrategyName = field(default="no", metadata=_help(
        "When to evaluate: 'no'; 'steps' (every eval_steps); 'epoch' (at the end of each epoch)."))
    eval_steps: float | None = field(default=None, metadata=_help(
        "Evaluate every this many optimizer steps with the 'steps' strategy; a value below 1 is "
        "a ratio of the total steps. Defaults to logging_steps."))
    eval_delay: float = field(default=0, metadata=_help(
        "Steps (or epochs, with eval_strategy='epoch') to wait before the first evaluation."))
    per_device_eval_batch_size: int = field(default=8, metadata=_help(
        "Batch size per device (GPU or CPU) for evaluation."))
    prediction_loss_only: bool = field(default=False, metadata=_help(
        "Evaluation and prediction return the loss only (no predictions, no labels)."))
    eval_on_start: bool = field(default=False, metadata=_help(
        "Evaluate once before the first training step, as a check of the evaluation setup."))
    eval_do_concat_batches: bool = field(default=True, metadata=_help(
        "Not available in pytrainer as False: evaluation outputs are concatenated."))
    eval_use_gather_object: bool = field(default=False, metadata=_help(
        "Not available in pytrainer: only tensors are gathered across processes."))
    eval_accumulation_steps: int | None = field(default=None, metadata=_help(
        "Move evaluation outputs to the CPU every this many steps (None: at the end)."))
    # --- metrics
    include_for_metrics: list[str] = field(default_factory=list, metadata=_help(
        "What compute_metrics receives besides predictions and labels: 'inputs', 'loss'."))
    batch_eval_metrics: bool = field(default=False, metadata=_help(
        "Call compute_metrics on each evaluation batch (with compute_result=True on the last) "
        "instead of once on everything."))
    # --- checkpoints
    save_only_model: bool = field(default=False, metadata=_help(
        "Checkpoints hold the model only (no optimizer, scheduler or random states): smaller, "
        "but training cannot resume from them."))
    save_strategy: SaveStrategyName = field(default="steps", metadata=_help(
        "When to save a checkpoint: 'no'; 'steps' (every save_steps); 'epoch' (at the end of "
        "each epoch); 'best' (when metric_for_best_model improves, at each evaluation)."))
    save_steps: float = field(default=500, metadata=_help(
        "Save every this many optimizer steps with the 'steps' strategy; a value below 1 is a "
        "ratio of the total steps."))
    save_on_each_node: bool = field(default=False, metadata=_help(
        "In multi-node runs, write checkpoints on every node (for nodes without a shared "
        "filesystem), not only on the first."))
    save_total_limit: int | None = field(default=None, metadata=_help(
        "Keep at most this many checkpoints in output_dir, deleting the oldest; the best one "
        "(with load_best_model_at_end) is always kept. None or 0 keeps all."))
    save_safetensors: bool = field(default=True, metadata=_help(
        "Save model weights with safetensors; False saves them with torch.save (transformers "
        "4.x's field, kept by pytrainer)."))
    enable_jit_checkpoint: bool = field(default=False, metadata=_help(
        "Not available in pytrainer: checkpoints are atomic, save_steps bounds lost work."))
    # --- Hugging Face Hub
    push_to_hub: bool = field(default=False, metadata=_help(
        "Not available in pytrainer: upload output_dir with huggingface_hub's upload_folder."))
    hub_token: str | None = field(default=None, metadata=_help(
        "Not available in pytrainer (see push_to_hub)."))
    hub_private_repo: bool | None = field(default=None, metadata=_help(
        "Not available in pytrainer (see push_to_hub)."))
    hub_model_id: str | None = field(default=None, metadata=_help(
        "Not available in pytrainer (see push_to_hub)."))
    hub_strategy: HubStrategyName = field(default="every_save", metadata=_help(
        "Not available in pytrainer (see push_to_hub)."))
    hub_always_push: bool = field(default=False, metadata=_help(
        "Not available in pytrainer (see push_to_hub)."))
    hub_revision: str | None = field(default=None, metadata=_help(
        "Not available in pytrainer (see push_to_hub)."))
    # --- best model
    load_best_model_at_end: bool = field(default=False, metadata=_help(
        "Load the best checkpoint (by metric_for_best_model) at the end of training. The save "
        "and eval strategies must match, and save_steps must be a multiple of eval_steps."))
    metric_for_best_model: str | None = field(default=None, metadata=_help(
        "The evaluation metric that ranks checkpoints ('eval_' prefix optional). Defaults to "
        "'loss' with load_best_model_at_end or the reduce_lr_on_plateau scheduler."))
    greater_is_better: bool | None = field(default=None, metadata=_help(
        "Whether a larger metric_for_best_model is better. Defaults to True unless the metric's "
        "name ends with 'loss'."))
    # --- resuming
    ignore_data_skip: bool = field(default=False, metadata=_help(
        "Not available in pytrainer: a resumed run continues at the exact batch."))
    restore_callback_states_from_checkpoint: bool = field(default=False, metadata=_help(
        "On resume, restore the states of the callbacks saved in the checkpoint (e.g. early "
        "stopping's patience)."))
    # --- reproducibility
    full_determinism: bool = field(default=False, metadata=_help(
        "Deterministic algorithms everywhere (torch.use_deterministic_algorithms, cuBLAS "
        "workspace, cuDNN): reproducible across runs, slower."))
    seed: int = field(default=42, metadata=_help("Random seed set at the start of training."))
    data_seed: int | None = field(default=None, metadata=_help(
        "Seed of the data sampler, independent of seed; None means seed."))
    # --- hardware
    use_cpu: bool = field(default=False, metadata=_help(
        "Train on the CPU. When False, CUDA (or MPS) is used if available."))
    accelerator_config: dict | str | None = field(default=None, metadata=_help(
        "Not available in pytrainer: it does not run on Accelerate."))
    parallelism_config: Any = field(default=None, metadata=_help(
        "Not available in pytrainer: use fsdp=True or DDP under torchrun."))
    # --- data loading
    dataloader_drop_last: bool = field(default=False, metadata=_help(
        "Drop the last incomplete batch of each epoch."))
    dataloader_num_workers: int = field(default=0, metadata=_help(
        "Subprocesses loading data; 0 loads in the main process."))
    dataloader_pin_memory: bool = field(default=True, metadata=_help(
        "Pin the batches' memory for faster copies to the GPU (False with use_cpu)."))
    dataloader_persistent_workers: bool = field(default=False, metadata=_help(
        "Keep the loading subprocesses alive between epochs (needs dataloader_num_workers > 0)."))
    dataloader_prefetch_factor: int | None = field(default=None, metadata=_help(
        "Batches each loading subprocess prepares ahead (needs dataloader_num_workers > 0)."))
    dataloader_multiprocessing_context: str | None = field(default=None, metadata=_help(
        "How the loading subprocesses start (needs dataloader_num_workers > 0); None is "
        "torch's default.", choices=list(MULTIPROCESSING_CONTEXTS)))
    dataloader_in_order: bool = field(default=True, metadata=_help(
        "Not available in pytrainer as False: batches come in sampler order."))
    remove_unused_columns: bool = field(default=True, metadata=_help(
        "Drop the dataset columns the model's forward does not take (labels are kept)."))
    label_names: list[str] | None = field(default=None, metadata=_help(
        "The keys of a batch that hold the labels. Default: the model's forward arguments whose "
        "name contains 'label'."))
    train_sampling_strategy: str = field(default="random", metadata=_help(
        "Order of the training samples: 'random'; 'sequential'; 'group_by_length' (batches of "
        "similar lengths, by length_column_name). transformers' 'batch_rebalance' is not "
        "available.", choices=list(SAMPLING_STRATEGIES)))
    length_column_name: str = field(default="length", metadata=_help(
        "The dataset column of precomputed lengths that group_by_length reads when present."))
    # --- DistributedDataParallel
    ddp_find_unused_parameters: bool | None = field(default=None, metadata=_help(
        "Passed to DistributedDataParallel's find_unused_parameters (None means False: faster, "
        "and every parameter must receive a gradient)."))
    ddp_bucket_cap_mb: int | None = field(default=None, metadata=_help(
        "DistributedDataParallel's bucket_cap_mb (None: torch's default)."))
    ddp_broadcast_buffers: bool | None = field(default=None, metadata=_help(
        "DistributedDataParallel's broadcast_buffers (None: torch's default)."))
    ddp_static_graph: bool | None = field(default=None, metadata=_help(
        "DistributedDataParallel's static_graph (None: torch's default)."))
    ddp_backend: str | None = field(default=None, metadata=_help(
        "The torch.distributed backend; None picks nccl on CUDA and gloo on the CPU.",
        choices=list(DDP_BACKENDS)))
    ddp_timeout: int = field(default=1800, metadata=_help(
        "Seconds torch.distributed waits for every rank (rendezvous and collectives) before "
        "failing with an error instead of hanging."))
    # --- sharding
    fsdp: str | None = field(default=None, metadata=_help(
        "Fully sharded data parallelism: a bare --fsdp (fsdp=True), or transformers' option "
        "string 'full_shard' / 'full_shard auto_wrap'; turns fsdp2 on.", nargs="?", const=True))
    fsdp2: bool = field(default=False, metadata=_help(
        "Under torchrun, shard parameters, gradients and optimizer states with FSDP2 "
        "(torch.distributed.fsdp.fully_shard) instead of replicating them with DDP."))
    fsdp_config: dict[str, Any] | str | None = field(default=None, metadata=_help(
        "Not available in pytrainer: fsdp=True uses fully_shard's defaults."))
    deepspeed: dict | str | None = field(default=None, metadata=_help(
        "Not available in pytrainer: use fsdp=True to shard."))
    # --- debugging
    debug: str | list[str] = field(default="", metadata=_help(
        "Not available in pytrainer: nonfinite_steps_limit stops on NaN/inf updates."))
    skip_memory_metrics: bool = field(default=True, metadata=_help(
        "Leave memory use out of the metrics (measuring it slows training down)."))
    nonfinite_steps_limit: int = field(default=10, metadata=_help(
        "Stop with an error (after saving a checkpoint of the last good state) when this many "
        "consecutive updates have a NaN or inf loss or gradient; such updates are skipped. "
        "0 never stops. (fp16 runs leave inf/NaN steps to the GradScaler.)"))
    # --- for scripts
    do_train: bool = field(default=False, metadata=_help(
        "Whether to train. Read by scripts, not by the Trainer."))
    do_eval: bool = field(default=False, metadata=_help(
        "Whether to evaluate; becomes True when eval_strategy is not 'no'. Read by scripts, not "
        "by the Trainer."))
    do_predict: bool = field(default=False, metadata=_help(
        "Whether to predict on the test set. Read by scripts, not by the Trainer."))
    resume_from_checkpoint: str | None = field(default=None, metadata=_help(
        "A checkpoint folder to resume from. Read by scripts; pass it to "
        "Trainer.train(resume_from_checkpoint=...)."))
    local_rank: int = field(default=-1, metadata=_help(
        "Accepted from torch.distributed.launch (--local-rank); pytrainer reads the rank from "
        "the LOCAL_RANK environment variable."))

    # -------------------------------------------------------------- validation
    def __post_init__(self) -> None:
        self._normalise_output_dir()
        reject_unavailable(self, _FIELD_DEFAULTS)
        self._resolve_checkpointing_names()
        self._check_types()
        self._check_values()
        self._check_steps()
        self._check_combinations()
        self._fill_derived_defaults()
        self._check_optimizer()

    def _normalise_output_dir(self) -> None:
        if self.output_dir is None:  # Hugging Face's "not given"
            self.output_dir = DEFAULT_OUTPUT_DIR
        if not isinstance(self.output_dir, (str, os.PathLike)):
            raise ValueError(f"output_dir must be a path, got {show(self.output_dir)}")
        self.output_dir = os.path.expanduser(os.fspath(self.output_dir))
        if not self.output_dir:
            raise ValueError("output_dir must not be empty, got ''")

    def _resolve_checkpointing_names(self) -> None:
        """transformers 5's rule for the deprecated gradient_checkpointing names: used when
        the activation_checkpointing names are not set, then mirroring them. Both set and
        disagreeing is an error here (transformers silently keeps the new one)."""
        for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                         ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
            is_kwargs = old.endswith("_kwargs")
            for name in (old, new):
                if is_kwargs:
                    setattr(self, name, json_object(name, getattr(self, name)))
                else:
                    check_bool(name, getattr(self, name), allow_none=True)
            old_value, new_value = getattr(self, old), getattr(self, new)
            if new_value is None and old_value is not None:
                # stacklevel: the constructor's caller (<- __init__ <- the metaclass's __call__)
                deprecated_args.warn_once(old, f"{old} is deprecated in transformers 5: use "
                                               f"{new}", stacklevel=6)
                setattr(self, new, old_value)
            elif old_value is not None and not same(old_value, new_value):
                raise ValueError(
                    f"{new}={show(new_value)} and {old}={show(old_value)} (its deprecated name) "
                    f"disagree; give one (dataclasses.replace copies both: change both)")
            setattr(self, old, copy_json(getattr(self, new)))
        if self.activation_checkpointing is None:
            self.activation_checkpointing = self.gradient_checkpointing = False

    def _check_types(self) -> None:
        for name in _BOOLS:
            check_bool(name, getattr(self, name))
        for name in _OPTIONAL_BOOLS:
            check_bool(name, getattr(self, name), allow_none=True)
        for name in ("metric_for_best_model", "optim_args", "run_name"):
            check_str(name, getattr(self, name), allow_none=True)
        check_str("torch_compile_backend", self.torch_compile_backend, allow_none=True,
                  nonempty=True)
        check_str("length_column_name", self.length_column_name, nonempty=True)
        if isinstance(self.resume_from_checkpoint, os.PathLike):
            self.resume_from_checkpoint = os.fspath(self.resume_from_checkpoint)
        check_str("resume_from_checkpoint", self.resume_from_checkpoint, allow_none=True)
        if self.max_grad_norm is None:  # some transformers scripts disable clipping this way
            self.max_grad_norm = 0.0
        self.label_names = string_list("label_names", self.label_names)
        self.report_to = _normalise_report_to(self.report_to)
        self.lr_scheduler_kwargs = json_object("lr_scheduler_kwargs", self.lr_scheduler_kwargs)
        self.optim_target_modules = _target_modules(self.optim_target_modules)
        self.include_for_metrics = string_list("include_for_metrics", self.include_for_metrics,
                                               allow_none=False)
        for item in self.include_for_metrics:
            choice("include_for_metrics", item, METRIC_INCLUDES)
        tokens = plain(self.include_num_input_tokens_seen)
        if isinstance(tokens, bool):
            tokens = "all" if tokens else "no"
        self.include_num_input_tokens_seen = choice("include_num_input_tokens_seen", tokens,
                                                    TOKEN_COUNTS)
        self.fsdp = _fsdp_switch(self.fsdp)

    def _check_values(self) -> None:
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps"):
            setattr(self, name, to_int(name, getattr(self, name), minimum=1))
        for name in ("torch_empty_cache_steps", "eval_accumulation_steps",
                     "dataloader_prefetch_factor", "ddp_bucket_cap_mb"):
            setattr(self, name, to_int(name, getattr(self, name), minimum=1, allow_none=True))
        self.dataloader_num_workers = to_int("dataloader_num_workers", self.dataloader_num_workers,
                                             minimum=0)
        self.ddp_timeout = to_int("ddp_timeout", self.ddp_timeout, minimum=1)
        self.nonfinite_steps_limit = to_int("nonfinite_steps_limit", self.nonfinite_steps_limit,
                                            minimum=0, why="0 never stops")
        self.max_steps = to_int("max_steps", self.max_steps, minimum=-1,
                                why="-1 (or 0) means 'use num_train_epochs'")
        self.local_rank = to_int("local_rank", self.local_rank, minimum=-1,
                                 why="-1 means 'not launched by torch.distributed.launch'")
        self.save_total_limit = to_int("save_total_limit", self.save_total_limit, minimum=0,
                                       why="None or 0 keeps every checkpoint", allow_none=True)
        self.seed = to_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        self.data_seed = to_int("data_seed", self.data_seed, minimum=0, maximum=MAX_SEED,
                                allow_none=True)

        self.learning_rate = to_float("learning_rate", self.learning_rate, above=0.0)
        for name in ("weight_decay", "adam_epsilon", "max_grad_norm", "num_train_epochs",
                     "eval_delay"):
            setattr(self, name, to_float(name, getattr(self, name), minimum=0.0))
        for name in ("adam_beta1", "adam_beta2"):
            value = to_float(name, getattr(self, name), minimum=0.0)
            if value >= 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
            setattr(self, name, value)
        self.label_smoothing_factor = to_float("label_smoothing_factor",
                                               self.label_smoothing_factor, minimum=0.0,
                                               maximum=1.0)
        self.neftune_noise_alpha = to_float("neftune_noise_alpha", self.neftune_noise_alpha,
                                            minimum=0.0, allow_none=True)

        self.eval_strategy = choice("eval_strategy", self.eval_strategy, INTERVAL_STRATEGIES)
        self.logging_strategy = choice("logging_strategy", self.logging_strategy,
                                       INTERVAL_STRATEGIES)
        self.save_strategy = choice("save_strategy", self.save_strategy, SAVE_STRATEGIES)
        self.lr_scheduler_type = choice("lr_scheduler_type", self.lr_scheduler_type,
                                        get_args(SchedulerName))
        if self.lr_scheduler_type == "greedy":
            raise ValueError("lr_scheduler_type='greedy' (transformers' GreedyLR) is not "
                             "available in pytrainer: use 'reduce_lr_on_plateau', which also "
                             "lowers the learning rate when evaluations stop improving")
        for name, choices in (("log_level", LOG_LEVELS), ("log_level_replica", LOG_LEVELS),
                              ("train_sampling_strategy", SAMPLING_STRATEGIES)):
            setattr(self, name, choice(name, getattr(self, name), choices))
        if self.train_sampling_strategy == "batch_rebalance":
            raise ValueError("train_sampling_strategy='batch_rebalance' is not available in "
                             "pytrainer: use 'group_by_length', which batches samples of similar "
                             "lengths together")
        for name, choices in (("ddp_backend", DDP_BACKENDS),
                              ("dataloader_multiprocessing_context", MULTIPROCESSING_CONTEXTS),
                              ("torch_compile_mode", COMPILE_MODES)):
            setattr(self, name, choice(name, getattr(self, name), choices, allow_none=True))
        check_str("optim", self.optim)
        self.optim = choice("optim", self.optim, _OptimizerNames())

    def _check_steps(self) -> None:
        for name in ("logging_steps", "save_steps", "warmup_steps"):
            setattr(self, name, to_steps(name, getattr(self, name)))
        if self.eval_steps is not None:
            self.eval_steps = to_steps("eval_steps", self.eval_steps)
        if self.logging_strategy == "steps" and self.logging_steps == 0:
            raise ValueError("logging_strategy='steps' needs logging_steps > 0, got "
                             "logging_steps=0")
        if self.save_strategy == "steps" and self.save_steps == 0:
            raise ValueError("save_strategy='steps' needs save_steps > 0, got save_steps=0")
        if self.eval_strategy == "steps" and not self.eval_steps:
            # Hugging Face: with no eval interval of its own, evaluation follows logging.
            if not self.logging_steps:
                raise ValueError(
                    f"eval_strategy='steps' needs a step interval: set eval_steps (or "
                    f"logging_steps, its default) > 0, got eval_steps={self.eval_steps!r} and "
                    f"logging_steps={self.logging_steps!r}")
            self.eval_steps = self.logging_steps

    def _check_combinations(self) -> None:
        if self.fp16 and self.bf16:
            raise ValueError("fp16=True and bf16=True cannot be used together: choose one "
                             "mixed-precision mode")
        if self.lr_scheduler_type == "reduce_lr_on_plateau" and self.eval_strategy == "no":
            raise ValueError("lr_scheduler_type='reduce_lr_on_plateau' steps on evaluation "
                             "metrics and needs an eval_strategy other than 'no', got "
                             "eval_strategy='no'")
        if self.save_strategy == "best" and self.eval_strategy == "no":
            raise ValueError("save_strategy='best' saves when an evaluation improves and needs an "
                             "eval_strategy other than 'no', got eval_strategy='no'")
        if self.eval_delay > 0 and self.eval_strategy == "no":
            raise ValueError(f"eval_delay={self.eval_delay!r} delays evaluations, but "
                             f"eval_strategy='no' runs none: set eval_strategy, or drop "
                             f"eval_delay")
        if self.dataloader_num_workers == 0:
            for name, value in (("dataloader_prefetch_factor", self.dataloader_prefetch_factor),
                                ("dataloader_persistent_workers",
                                 self.dataloader_persistent_workers or None),
                                ("dataloader_multiprocessing_context",
                                 self.dataloader_multiprocessing_context)):
                if value is not None:
                    raise ValueError(f"{name}={value!r} applies to loading subprocesses and needs "
                                     f"dataloader_num_workers > 0, got dataloader_num_workers=0")
        if self.load_best_model_at_end:
            self._check_load_best()

    def _check_load_best(self) -> None:
        if self.eval_strategy == "no":
            raise ValueError("load_best_model_at_end=True needs evaluations to rank checkpoints, "
                             "got eval_strategy='no'")
        if self.save_strategy == "best":
            return  # saving follows evaluation by construction
        if self.eval_strategy != self.save_strategy:
            raise ValueError(
                f"load_best_model_at_end=True requires the save and eval strategies to match, got "
                f"eval_strategy={self.eval_strategy!r} and save_strategy={self.save_strategy!r}")
        if self.eval_strategy != "steps":
            return
        eval_steps, save_steps = self.eval_steps, self.save_steps
        if (eval_steps < 1) != (save_steps < 1):
            raise ValueError(
                f"load_best_model_at_end=True requires save_steps to be a multiple of eval_steps, "
                f"which cannot be guaranteed when one is a ratio and the other a step count, got "
                f"save_steps={save_steps!r} and eval_steps={eval_steps!r}")
        if eval_steps < 1:
            # Ratios compared as millionths, so 0.3 counts as a multiple of 0.1.
            eval_steps, save_steps = max(1, round(eval_steps * 1e6)), round(save_steps * 1e6)
        if save_steps % eval_steps:
            raise ValueError(
                f"load_best_model_at_end=True requires save_steps to be a multiple of eval_steps, "
                f"got save_steps={self.save_steps!r} and eval_steps={self.eval_steps!r}")

    def _fill_derived_defaults(self) -> None:
        if self.eval_strategy != "no":
            self.do_eval = True
        if self.metric_for_best_model is None and (
                self.load_best_model_at_end or self.lr_scheduler_type == "reduce_lr_on_plateau"):
            self.metric_for_best_model = "loss"
        if self.save_strategy == "best" and self.metric_for_best_model is None:
            raise ValueError("save_strategy='best' needs metric_for_best_model, got None")
        if self.greater_is_better is None and self.metric_for_best_model is not None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")
        if self.disable_tqdm is None:
            self.disable_tqdm = logger.getEffectiveLevel() > logging.WARNING
        # transformers: a backend or a mode turns compilation on; inductor is the default
        if self.torch_compile_backend is not None or self.torch_compile_mode is not None:
            self.torch_compile = True
        if self.torch_compile and self.torch_compile_backend is None:
            self.torch_compile_backend = "inductor"
        if self.use_cpu:  # transformers: pinning memory only helps copies to a GPU
            self.dataloader_pin_memory = False
        self.fsdp2 = self.fsdp2 or self.fsdp is True
        self.fsdp = True if self.fsdp2 else None

    def _check_optimizer(self) -> None:
        """The optimizer's library is installed, pytrainer's Trainer can drive it, and its
        optim_args are valid: setup errors belong here, not at the first step."""
        from pytrainer.optim.registry import check_optimizer
        check_optimizer(self)

    # ------------------------------------------------------- what a Trainer reads
    @property
    def train_batch_size(self) -> int:
        """Training samples per device per forward pass (pytrainer has no DataParallel, so
        unlike Hugging Face this never multiplies by the GPU count)."""
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        """Evaluation samples per device per forward pass."""
        return self.per_device_eval_batch_size

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warmup steps of a run of ``num_training_steps`` optimizer steps: ``warmup_steps``,
        a ratio of the run when below 1 (rounded up)."""
        return resolve_interval(self.warmup_steps, num_training_steps)

    def resolve_steps(self, total_steps: int) -> StepIntervals:
        """The logging, eval and save intervals in optimizer steps for a run of
        ``total_steps``, ratios rounded up as Hugging Face does."""
        return StepIntervals(logging_steps=resolve_interval(self.logging_steps, total_steps),
                             eval_steps=resolve_interval(self.eval_steps, total_steps),
                             save_steps=resolve_interval(self.save_steps, total_steps))

    # ----------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Every field by its current name (no transformers 4.x name), JSON-ready."""
        return {f.name: copy_json(getattr(self, f.name))
                for f in dataclasses.fields(self) if f.init}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, allow_extra_keys: bool = False
                  ) -> "TrainingArguments":
        """The arguments ``data`` describes: a ``to_dict()``, or the ``training_args.json`` of
        transformers 4.x or 5.x (their removed names are read as the constructor reads
        them). Unknown keys raise a ValueError (or, with ``allow_extra_keys``, are ignored)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict needs a mapping, got "
                             f"{type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls) if f.init} | set(
            deprecated_args.DEPRECATED)
        unknown = sorted(set(data) - known, key=str)
        if unknown and not allow_extra_keys:
            hints = "; ".join(f"{key!r}{did_you_mean(key, known)}" for key in unknown)
            raise ValueError(f"unknown {cls.__name__} keys: {hints}")
        return cls(**{key: value for key, value in data.items() if key in known})

    @classmethod
    def from_json_string(cls, text: str, **kwargs: Any) -> "TrainingArguments":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{cls.__name__} JSON is not valid: {error}") from None
        except RecursionError:
            raise ValueError(f"{cls.__name__} JSON is nested too deeply to read") from None
        return cls.from_dict(data, **kwargs)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **kwargs: Any) -> "TrainingArguments":
        with open(path, encoding="utf-8") as file:
            return cls.from_json_string(file.read(), **kwargs)


_FIELD_DEFAULTS = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else f.default for f in dataclasses.fields(TrainingArguments) if f.init}
_BOOLS = tuple(f.name for f in dataclasses.fields(TrainingArguments) if f.type == "bool")
_OPTIONAL_BOOLS = tuple(f.name for f in dataclasses.fields(TrainingArguments)
                        if f.type == "bool | None")


def _deprecated_property(name: str) -> property:
    return property(lambda self: deprecated_args.read(self, name),
                    lambda self, value: deprecated_args.write(self, name, value),
                    doc=f"transformers 4.x's {name} (see pytrainer.deprecated_args).")


for _name in deprecated_args.DEPRECATED:
    setattr(TrainingArguments, _name, _deprecated_property(_name))
#: read by pytrainer's ArgumentParser, which gives each name a flag
TrainingArguments.deprecated_arguments = deprecated_args.DEPRECATED


# ------------------------------------------------------------------ field checks
def _normalise_report_to(value: Any) -> list[str]:
    """Hugging Face's forms (None, "none", "all", a name, a list) as a list:
    "none" is the empty list. "all" is kept, for the Trainer to expand to the
    integrations it finds, so the arguments stay the same on every machine."""
    names = [value] if isinstance(value, str) else [] if value is None else value
    names = string_list("report_to", names)
    if "none" in names:
        if len(names) > 1:
            raise ValueError(f"report_to cannot combine 'none' with other names, got {value!r}")
        return []
    return names


def _target_modules(value: Any) -> str | list[str] | None:
    """None, a regular expression (or 'all-linear'), or a list of module names; a
    one-item list of 'all-linear' (the command line's form) is the keyword."""
    if value is None:
        return None
    if isinstance(value, str):
        check_str("optim_target_modules", value, nonempty=True)
        return value
    names = string_list("optim_target_modules", value)
    if not names or not all(names):
        raise ValueError(f"optim_target_modules must name at least one module, got "
                         f"{show(value)}")
    if len(names) == 1 and names[0].replace("_", "-") == "all-linear":
        return "all-linear"
    return names


def _fsdp_switch(value: Any) -> bool | None:
    """transformers' fsdp (True, a string or list of options, or off) as True or None.
    pytrainer's FSDP2 shards fully, so only the options meaning that are accepted."""
    value = plain(value)
    if value is None or value is False or value == "" or value == []:
        return None
    if value is True:
        return True
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"fsdp must be True, False, None or a string of options, got "
                         f"{show(value)}")
    for item in items:
        item = plain(item)
        if item not in FSDP_OPTIONS:
            raise ValueError(
                f"fsdp option {show(item)} is not available in pytrainer: its FSDP2 "
                f"(fsdp=True) shards parameters, gradients and optimizer states fully, as "
                f"'full_shard'; valid options: {', '.join(FSDP_OPTIONS)}")
    return True
