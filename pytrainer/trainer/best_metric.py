"""The best evaluation of a run (``metric_for_best_model``, ``greater_is_better``),
noted in the state at each evaluation as Hugging Face notes it: the best value
(which EarlyStoppingCallback compares with) and its step (whose checkpoint
load_best_model_at_end loads and rotation keeps)."""
from __future__ import annotations

__all__ = ["metric_key", "note_best_metric"]


def metric_key(args, metrics: dict[str, float]) -> str:
    """The key of ``metric_for_best_model`` in evaluation metrics ('eval_' added)."""
    name = args.metric_for_best_model
    name = name if name.startswith("eval_") else f"eval_{name}"
    if name not in metrics:
        raise KeyError(f"metric_for_best_model={args.metric_for_best_model!r} is not among the "
                       f"evaluation metrics ({', '.join(metrics)}); return it from "
                       f"compute_metrics or choose another")
    return name


def note_best_metric(args, state, metrics: dict[str, float]) -> bool:
    """Whether ``metrics`` improve on the state's best (then noted in it)."""
    if args.metric_for_best_model is None:
        return False
    value = metrics[metric_key(args, metrics)]
    best = state.best_metric
    if best is not None and not (value > best if args.greater_is_better else value < best):
        return False
    state.best_metric = value
    if args.save_strategy != "no":
        state.best_global_step = state.global_step
    return True
