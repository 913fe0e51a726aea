"""A worker's interpreter tuning (checked in a child process: it changes process-wide state)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from workers.tuning import GC_THRESHOLDS, SWITCH_INTERVAL_S

PROBE = """
import gc, json, sys
from workers.tuning import tune_interpreter
before = sys.getswitchinterval()
tune_interpreter()
print(json.dumps([before, sys.getswitchinterval(), gc.get_threshold(), gc.get_freeze_count()]))
"""


def test_tune_interpreter_shortens_the_switch_interval_and_freezes_start_up_objects() -> None:
    output = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    before, after, thresholds, frozen = json.loads(output)
    assert before == 0.005 and after == pytest.approx(SWITCH_INTERVAL_S)
    assert tuple(thresholds) == GC_THRESHOLDS
    assert frozen > 1000  # the imported modules' objects left the collector's view
