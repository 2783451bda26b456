"""The Triton backend on the CPU: its kernels in Triton's interpreter, in a process of their own.

Triton reads ``TRITON_INTERPRET`` when it is imported, so the interpreter cases (tests/triton_interpret_cases.py,
not collected here by name) run in a child pytest with ``TRITON_INTERPRET=1``; this test passes when they all
pass and shows their output when they do not. The same seed policy applies (``SGC_TEST_SEED`` is passed on).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

TESTS = Path(__file__).resolve().parent
#: Generous bound on the child run (it takes well under a minute on two cores).
TIMEOUT_S = 600


def test_triton_kernels_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "triton_interpret_cases.py")]
    run = subprocess.run(cmd, cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == 0, f"interpreter cases failed (exit {run.returncode}):\n{run.stdout[-20000:]}\n{run.stderr[-5000:]}"
    summary = run.stdout.strip().splitlines()[-1]
    assert " passed" in summary, f"no interpreter case ran: {summary}"


def test_triton_unavailable_on_cpu_without_interpreter():
    """Without the interpreter, CPU tensors are refused with a reason that says how to enable it."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("this process runs with TRITON_INTERPRET set")
    import sgc_fast.triton as sgc_triton

    why = sgc_triton.unavailable_reason("cpu")
    assert why is not None and "TRITON_INTERPRET=1" in why
    from sgc_fast import ops

    assert "TRITON_INTERPRET" in ops.explain_backends("cpu")["triton"]
