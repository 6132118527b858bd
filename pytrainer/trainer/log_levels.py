"""The log level of each process (``log_level``, ``log_level_replica``,
``log_on_each_node``), as Hugging Face sets it: the main process (the first of
each node with log_on_each_node, else the first of the run) at log_level, the
others at log_level_replica; 'passive' leaves the level as it is. It applies to
pytrainer's logger, and to transformers' when transformers is loaded."""
from __future__ import annotations

import logging
import sys

__all__ = ["LEVELS", "process_log_level", "apply_log_level"]

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL, "detail": logging.DEBUG,
          "passive": None}


def process_log_level(args, rank: int, local_rank: int) -> int | None:
    """The level of this process (None: leave it)."""
    main = local_rank == 0 if args.log_on_each_node else rank == 0
    return LEVELS[args.log_level if main else args.log_level_replica]


def apply_log_level(args, rank: int, local_rank: int) -> None:
    level = process_log_level(args, rank, local_rank)
    if level is None:
        return
    logging.getLogger("pytrainer").setLevel(level)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity(level)
