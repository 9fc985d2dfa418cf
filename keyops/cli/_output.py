"""How the CLI talks to a person (internal): notes, log verbosity and colour.

Results (values, ciphertexts, ``--json``) are never affected by any of it:
``--quiet`` drops notes and human reports, ``--verbose`` adds keyops' own log
records on stderr, and colour appears only on a terminal, never with
``NO_COLOR`` set (https://no-color.org) or ``TERM=dumb``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

_COLOURS = {"red": "31", "yellow": "33", "green": "32", "bold": "1"}
_state = {"quiet": False}
#: Only keyops' own loggers: hvac's and urllib3's debug records name request URLs and headers.
_LOGGER = "keyops"


def configure(*, quiet: bool = False, verbose: int = 0) -> None:
    _state["quiet"] = quiet
    logger = logging.getLogger(_LOGGER)
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("keyops: %(levelname)s: %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (``main()`` may run more than once in a process)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def quiet() -> bool:
    return _state["quiet"]


def note(message: str) -> None:
    """A note for the person at the terminal, on stderr; dropped with ``--quiet``."""
    if not _state["quiet"]:
        print(message, file=sys.stderr, flush=True)


def colour_enabled(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, colour: str, stream: TextIO) -> str:
    """``text`` in ``colour`` when ``stream`` is a terminal that may show colour, else as it is."""
    if not colour_enabled(stream):
        return text
    return f"\033[{_COLOURS[colour]}m{text}\033[0m"
