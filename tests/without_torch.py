"""Run a module as `python -m` would, in an interpreter where torch cannot be imported.

    python tests/without_torch.py MODULE [ARGS...]

Every import of torch, transformers, onnx or onnxscript (the `torch`, `export` and `train` extras)
raises ImportError, as on a board where only `pip install .` ran; the onnxruntime path must not
notice. On exit it prints the blocked imports that were attempted (a module that catches the
ImportError and carries on must still show up here).
"""
from __future__ import annotations

import atexit
import runpy
import sys

BLOCKED = ("torch", "transformers", "onnx", "onnxscript")
attempts: list[str] = []


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"No module named '{name}' (blocked by tests/without_torch.py)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
atexit.register(lambda: print(f"[without_torch] blocked imports: {sorted(set(attempts))}", flush=True))

if __name__ == "__main__":
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
