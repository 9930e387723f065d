"""Runs a module as a script with TensorFlow and TFDS blocked, as on the GPU machine."""
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
_BLOCKED_RUN = """
import runpy, sys
sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name='__main__', alter_sys=True)
"""


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
  """`python -m module args...` from the repository root, without TensorFlow or TFDS."""
  return subprocess.run([sys.executable, '-c', _BLOCKED_RUN, module, *args],
                        capture_output=True, text=True, timeout=600, cwd=REPO)
