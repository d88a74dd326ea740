"""Named points of the record steps, for fault-injection tests. Documented and inert
unless the environment asks:

* ``SCF_TEST_KILL_AT=<stage>``: the process kills itself with SIGKILL there, so a test can
  show what a ``kill -9`` at that stage leaves;
* ``SCF_TEST_PAUSE_AT=<stage>`` with ``SCF_TEST_PAUSE_FILE=<path>``: the process creates
  the file there and waits (up to ten minutes) until the test removes it, so a test can
  break something outside the process (kill the tracking server) at exactly that point.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

KILL_ENV, PAUSE_ENV, PAUSE_FILE_ENV = "SCF_TEST_KILL_AT", "SCF_TEST_PAUSE_AT", "SCF_TEST_PAUSE_FILE"


def checkpoint(stage: str) -> None:
    if os.environ.get(KILL_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(PAUSE_ENV) == stage and os.environ.get(PAUSE_FILE_ENV):
        flag = Path(os.environ[PAUSE_FILE_ENV])
        flag.write_text(str(os.getpid()))
        deadline = time.monotonic() + 600
        while flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


__all__ = ["checkpoint", "KILL_ENV", "PAUSE_ENV", "PAUSE_FILE_ENV"]
