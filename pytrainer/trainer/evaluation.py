"""The evaluation loop: prediction steps over an evaluation loader, losses
weighted by batch size, predictions, labels (and, with ``include_for_metrics``,
inputs and losses) gathered across batches and ranks, and ``compute_metrics``
called as Hugging Face calls it (once at the end, or per batch with
``batch_eval_metrics``)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from pytrainer.trainer.model_io import to_device
from pytrainer.trainer.state import eval_prediction

__all__ = ["batch_size_of", "logits_of", "labels_of", "inference_ignore_keys", "to_numpy",
           "concat_padded", "gather_in_order",
           "EvalSettings", "EvalOutput", "run_evaluation", "prefixed", "speed_metrics"]


def batch_size_of(batch: Any) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("cannot tell the batch size: no tensor with a batch dimension in the batch")


def logits_of(outputs: Any, ignore: tuple[str, ...] = (), has_loss: bool = True) -> Any:
    """What a model returned besides its loss (and the ``ignore`` keys, e.g. its
    key/value cache), as Hugging Face takes it: the values of a dict-like output
    (one value alone, several as a tuple), a tuple's items after the loss (all
    of them when there is no loss)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.detach()
    if isinstance(outputs, dict) or hasattr(outputs, "keys"):
        rest = tuple(v for k, v in outputs.items() if k not in ("loss", *ignore))
    elif isinstance(outputs, (tuple, list)):
        rest = tuple(outputs[1:] if has_loss else outputs)
    else:
        return getattr(outputs, "logits", None)
    rest = tuple(v.detach() if isinstance(v, torch.Tensor) else v for v in rest)
    return rest[0] if len(rest) == 1 else rest


def labels_of(inputs: Any, names: list[str]) -> Any:
    """The batch's labels (one tensor, or a tuple for several label names); None
    when the batch lacks any of them."""
    if not names or any(inputs.get(k) is None for k in names):
        return None
    labels = tuple(inputs[k].detach() if isinstance(inputs[k], torch.Tensor) else inputs[k]
                   for k in names)
    return labels[0] if len(labels) == 1 else labels


def inference_ignore_keys(model: torch.nn.Module) -> list[str]:
    """The outputs that are no predictions: a transformers config's
    keys_to_ignore_at_inference (its caches)."""
    config = getattr(model, "config", None)
    return list(getattr(config, "keys_to_ignore_at_inference", ["cache"])) \
        if config is not None else []


def to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.cpu().numpy()
    if isinstance(value, (tuple, list)):
        return type(value)(to_numpy(v) for v in value)
    return value


def concat_padded(arrays: list[Any], pad: int = -100) -> Any:
    """Concatenates along the first dim, padding the second dim (sequence lengths
    differ between batches) with ``pad``; tuples are concatenated item by item."""
    if not arrays:
        return None
    if isinstance(arrays[0], (tuple, list)):
        return type(arrays[0])(concat_padded([a[i] for a in arrays], pad)
                               for i in range(len(arrays[0])))
    arrays = [np.asarray(a) for a in arrays]
    if arrays[0].ndim < 2 or all(a.shape[1:] == arrays[0].shape[1:] for a in arrays):
        return np.concatenate(arrays, axis=0)
    length = max(a.shape[1] for a in arrays)
    padded = []
    for a in arrays:
        out = np.full((a.shape[0], length, *a.shape[2:]), pad, dtype=a.dtype)
        out[:, :a.shape[1]] = a
        padded.append(out)
    return np.concatenate(padded, axis=0)


def gather_in_order(dist, parts: list[tuple[int, Any]]) -> Any:
    """Every rank's (batch index, array) pairs, back in dataset order (rank r's
    batch i is the evaluation set's batch i * world + r), concatenated."""
    world = dist.world_size
    ordered = []
    for rank, pairs in enumerate(dist.all_gather_objects(parts)):
        ordered += [(index * world + rank, item) for index, item in pairs]
    ordered.sort(key=lambda item: item[0])
    items = [item for _, item in ordered]
    return None if not items or items[0] is None else concat_padded(items)


def speed_metrics(prefix: str, runtime: float, samples: int, steps: int) -> dict[str, float]:
    """Hugging Face's speed metrics, rounded as it rounds them."""
    result = {f"{prefix}_runtime": round(runtime, 4)}
    if runtime > 0:
        result[f"{prefix}_samples_per_second"] = round(samples / runtime, 3)
        result[f"{prefix}_steps_per_second"] = round(steps / runtime, 3)
    return result


def prefixed(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Keys prefixed with ``prefix_`` (the others moved to the end, in Hugging
    Face's order), numpy and 0-d tensor values as Python numbers (JSON-ready)."""
    def plain(value):
        if isinstance(value, torch.Tensor) and value.dim() == 0 or isinstance(value, np.generic):
            return value.item()
        return value

    mine = {k: plain(v) for k, v in metrics.items() if k.startswith(f"{prefix}_")}
    mine.update({f"{prefix}_{k}": plain(v) for k, v in metrics.items()
                 if not k.startswith(f"{prefix}_")})
    return mine


@dataclass
class EvalSettings:
    """What an evaluation needs besides the model and the data."""
    device: torch.device
    dist: Any
    #: the evaluation batch size of one rank (the steps per second)
    batch_size: int
    prediction_step: Callable
    on_prediction_step: Callable[[], None]
    compute_metrics: Callable | None = None
    preprocess_logits_for_metrics: Callable | None = None
    include_for_metrics: tuple[str, ...] = ()
    batch_eval_metrics: bool = False
    eval_accumulation_steps: int | None = None
    nan_inf_filter: bool = True
    main_input_name: str = "input_ids"

    @classmethod
    def of(cls, args, device: torch.device, dist, model: torch.nn.Module, **callables: Any
           ) -> "EvalSettings":
        """The settings of the arguments (batch size, include_for_metrics,
        batch_eval_metrics, eval_accumulation_steps, logging_nan_inf_filter)."""
        return cls(device=device, dist=dist, batch_size=args.per_device_eval_batch_size,
                   include_for_metrics=tuple(args.include_for_metrics),
                   batch_eval_metrics=args.batch_eval_metrics,
                   eval_accumulation_steps=args.eval_accumulation_steps,
                   nan_inf_filter=args.logging_nan_inf_filter,
                   main_input_name=getattr(model, "main_input_name", "input_ids"), **callables)


@dataclass
class EvalOutput:
    predictions: Any
    label_ids: Any
    metrics: dict[str, Any]
    num_samples: int


class _Collected:
    """(batch index, value) pairs of one output; device tensors move to the CPU
    in one go every ``every`` batches (eval_accumulation_steps; None: at the end)."""

    def __init__(self):
        self.host: list[tuple[int, Any]] = []
        self.device: list[tuple[int, Any]] = []

    def add(self, index: int, value: Any) -> None:
        if value is not None:
            self.device.append((index, value))

    def to_host(self) -> None:
        self.host += [(index, to_numpy(value)) for index, value in self.device]
        self.device = []


def run_evaluation(model: torch.nn.Module, loader, real: int | None, settings: EvalSettings,
                   prediction_loss_only: bool, prefix: str) -> EvalOutput:
    """One pass over ``loader`` (batches past ``real`` only keep the ranks in
    step); metrics with ``prefix``."""
    s = settings
    keep = not prediction_loss_only
    # weighted sums of the finite losses (all of them without the filter), samples
    # they count, and samples of any loss: on the device, read once at the end
    sums = torch.zeros(3, dtype=torch.float64, device=s.device)
    outputs = {name: _Collected() for name in ("predictions", "labels", "inputs", "losses")}
    metrics, samples, start = {}, 0, time.perf_counter()
    batches = enumerate(loader)
    index, batch = next(batches, (None, None))
    while batch is not None:
        batch = to_device(batch, s.device)
        loss, logits, labels = s.prediction_step(model, batch, prediction_loss_only)
        following = next(batches, (None, None))
        s.on_prediction_step()
        counted = real is None or index < real
        losses = None
        if counted and loss is not None:
            size = batch_size_of(batch)
            losses = loss.reshape(1).float().expand(size)
            good = torch.isfinite(loss) | (not s.nan_inf_filter)
            sums += torch.stack([torch.where(good, loss.double() * size, 0.0),
                                 good.double() * size, loss.new_tensor(size).double()])
        samples += batch_size_of(batch) if counted else 0
        if keep and logits is not None and s.preprocess_logits_for_metrics is not None:
            logits = s.preprocess_logits_for_metrics(logits, labels)
        inputs = batch.get(s.main_input_name) if "inputs" in s.include_for_metrics else None
        if s.batch_eval_metrics:  # every rank takes part (a padding batch brings nothing)
            found = (logits, labels, batch, losses) if counted else (None, None, None, None)
            metrics = _batch_metrics(s, *found, last=following[1] is None) or metrics
        elif keep and counted:
            for name, value in (("predictions", logits), ("labels", labels), ("inputs", inputs),
                                ("losses", losses if "loss" in s.include_for_metrics else None)):
                outputs[name].add(index, value)
        if s.eval_accumulation_steps and (index + 1) % s.eval_accumulation_steps == 0:
            for collected in outputs.values():
                collected.to_host()
        index, batch = following
    for collected in outputs.values():
        collected.to_host()
    return _finish(s, outputs, metrics, sums, samples, keep, prefix,
                   time.perf_counter() - start)


def _batch_metrics(s: EvalSettings, logits, labels, batch, losses, last: bool):
    """compute_metrics on one batch (of every rank), as Hugging Face calls it with
    batch_eval_metrics: tensors, ``compute_result`` on the last batch."""
    if s.compute_metrics is None:
        return None
    if s.dist.enabled:  # every rank calls this at every batch: the gather is matched
        parts = [g for g in s.dist.all_gather_objects(to_numpy((logits, labels)))
                 if g[0] is not None and g[1] is not None]
        if not parts:
            return None
        logits = torch.from_numpy(concat_padded([g[0] for g in parts]))
        labels = torch.from_numpy(concat_padded([g[1] for g in parts]))
    if logits is None or labels is None:
        return None
    prediction = eval_prediction(logits, labels,
                                 inputs=batch if "inputs" in s.include_for_metrics else None,
                                 losses=losses if "loss" in s.include_for_metrics else None)
    return s.compute_metrics(prediction, compute_result=last)


def _finish(s: EvalSettings, outputs: dict[str, _Collected], metrics: dict, sums: torch.Tensor,
            samples: int, keep: bool, prefix: str, runtime: float) -> EvalOutput:
    s.dist.all_reduce_sum(sums)
    gathered = {name: gather_in_order(s.dist, c.host) for name, c in outputs.items()} \
        if keep and not s.batch_eval_metrics else {}
    predictions, labels = gathered.get("predictions"), gathered.get("labels")
    if s.compute_metrics is not None and not s.batch_eval_metrics and \
            predictions is not None and labels is not None:
        metrics = s.compute_metrics(eval_prediction(
            predictions, labels,
            inputs=gathered["inputs"] if "inputs" in s.include_for_metrics else None,
            losses=gathered["losses"] if "loss" in s.include_for_metrics else None))
    metrics = dict(metrics or {})
    loss_sum, counted, seen = sums.tolist()
    if counted > 0:
        metrics[f"{prefix}_loss"] = loss_sum / counted
    elif seen > 0:  # every loss was NaN or inf
        metrics[f"{prefix}_loss"] = float("nan")
    metrics = prefixed(metrics, prefix)
    num_samples = sum(s.dist.all_gather_objects(samples))
    steps = math.ceil(num_samples / (s.batch_size * s.dist.world_size))
    metrics.update(speed_metrics(prefix, runtime, num_samples, steps))
    return EvalOutput(predictions, labels, metrics, num_samples)
