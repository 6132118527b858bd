"""The embedded default of ``pytrainer train``: a byte-level GPT and its corpus."""
