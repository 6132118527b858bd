"""What a saved model folder holds (``save_model`` and every checkpoint): for a
transformers PreTrainedModel, what its ``save_pretrained`` writes (config.json,
generation_config.json, model.safetensors with its metadata, each tied weight
once), so ``from_pretrained(folder)`` loads it; for any other model its weights;
and the processing class (tokenizer, processor) beside it, as Hugging Face's
Trainer saves it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytrainer.trainer import checkpoint as ckpt
from pytrainer.trainer.model_io import is_pretrained_model, unwrap

__all__ = ["write_model_folder", "save_model_folder", "writes_files", "processing_to_save"]


def writes_files(args, dist) -> bool:
    """Whether this process writes saved files: the main one, or the first of each
    node with save_on_each_node (nodes without a shared filesystem)."""
    return dist.local_rank == 0 if args.save_on_each_node else dist.is_main


def processing_to_save(processing_class: Any, collator: Any) -> Any:
    """The processing class, else a collator's tokenizer (as Hugging Face saves it)."""
    return processing_class if processing_class is not None else getattr(collator, "tokenizer",
                                                                         None)


def write_model_folder(model: nn.Module, folder: Path, state: dict[str, torch.Tensor],
                       safetensors: bool, processing_class: Any = None) -> None:
    """The model (its whole ``state``, each tied tensor once) and the processing
    class in ``folder``. Without safetensors a PreTrainedModel gets its config
    files from save_pretrained and its weights as pytorch_model.bin (which
    from_pretrained reads too)."""
    model = unwrap(model)
    if is_pretrained_model(model):
        if safetensors:
            model.save_pretrained(folder, state_dict=state, is_main_process=True)
        else:
            model.config.save_pretrained(folder)
            if model.can_generate() and getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(folder)
            ckpt.save_weights(model, folder, False, state)
    else:
        ckpt.save_weights(model, folder, safetensors, state)
    if processing_class is not None and hasattr(processing_class, "save_pretrained"):
        processing_class.save_pretrained(str(folder))


def save_model_folder(model: nn.Module, output_dir: str, state: dict[str, torch.Tensor],
                      safetensors: bool, processing_class: Any, args_json: str) -> None:
    """``write_model_folder`` into ``output_dir`` (which may hold checkpoints), with
    the arguments as training_args.json: written into a temporary folder beside,
    then each file moved into place in one rename."""
    target = Path(output_dir)
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".tmp-model-{os.getpid()}"
    if tmp.exists():  # a crash's leftover
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_model_folder(model, tmp, state, safetensors, processing_class)
    (tmp / ckpt.TRAINING_ARGS).write_text(args_json, encoding="utf-8")
    ckpt.publish_files(tmp, target)
