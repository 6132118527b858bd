"""python -m pytrainer <command>: the same as the ``pytrainer`` command."""
import sys

from pytrainer.cli import main

sys.exit(main())
