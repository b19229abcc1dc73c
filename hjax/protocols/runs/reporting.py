"""Where a run reports, for both protocols: ``log`` (progress lines and tables, stdout in the
command lines), ``warn`` (notes and warnings, stderr) and ``progress`` (the one-line progress
channel: :class:`hjax.cli.progress.Progress` for a DomainBed job, a line-per-message
callable for ColoredMNIST's groups; None for none). Library code calls these and never
prints."""

from __future__ import annotations

import logging
from typing import Callable

_LOG = logging.getLogger("hjax")


class Reporter:
    def __init__(self, log: Callable[[str], None] = _LOG.info,
                 warn: Callable[[str], None] = _LOG.warning, progress=None):
        self.log, self.warn, self.progress = log, warn, progress

