"""Process-wide settings that llm-guard scanners need; only service entry points call this."""

from __future__ import annotations

import logging
import os


def configure_scanner_runtime() -> None:
    """Keep llm-guard offline and quiet; call once from `__main__`, before building a chain.

    Environment variables that are already set win.
    """
    # huggingface_hub reads this at import. Without it a model lookup stalls
    # about 46 s before it fails offline.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # tiktoken copies even a bundled encoding into a cache folder (by default
    # under $TMPDIR); an empty value makes it read the bundled file directly.
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")
    # llm-guard 0.3.16 logs matched text at WARNING: TokenLimit logs the
    # prompt's chunks and InvisibleText the characters it found. The services
    # log each verdict themselves, without text.
    logging.getLogger("llm_guard").setLevel(logging.ERROR)
