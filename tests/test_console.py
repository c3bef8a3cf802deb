"""What every console script sets up for its process (fimvision.console.prepare_script)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
gc.disable()  # only the collection at exit may find the cycle below
from fimvision.console import prepare_script
class Cycle:
    def __del__(self):
        print("collected at exit")
cycle = Cycle()
cycle.me = cycle
del cycle
{setup}
"""


def test_a_console_script_process_skips_the_last_garbage_collection_at_exit():
    # The collection at exit costs ~1.5 s of a 7 s command once torch and Lightning are imported
    # (benchmarks/command_startup.py); a script's process skips it, however often its main runs.
    def output(setup: str) -> str:
        result = subprocess.run([sys.executable, "-c", SCRIPT.format(setup=setup)], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert output("pass") == "collected at exit\n"  # without it, as any Python process
    assert output("prepare_script()\nprepare_script()") == ""
