"""The CPU cases of bench_ops.py under pytest-benchmark: ``pytest benchmarks/ --benchmark-only``.

Each case times one full pass (forward + backward) of the loss; compare the ``reference`` and ``cpu``
rows of one run (``--benchmark-group-by=param:case``).
"""

import pytest
import torch
from bench_ops import Case, leaves, loss_fn, make_inputs

import sgc_fast

BACKENDS = ["research", "reference"] + (["cpu"] if "cpu" in sgc_fast.available_backends("cpu") else [])
CASES = [(m, g) for m in ("sgc", "cgc") for g in ("dense", "head")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[f"{m}-{g}" for m, g in CASES])
def test_loss_full(benchmark, case, backend):
    method, grads = case
    c = Case(method, grads, 32, 512, 7, 7, 224, 224, torch.float32, torch.device("cpu"))
    inputs = make_inputs(c)
    fn = loss_fn(backend, c, inputs)
    params = leaves(inputs)

    def full():
        for p in params:
            p.grad = None
        loss = fn()
        loss.backward()
        return loss

    loss = benchmark.pedantic(full, rounds=5, warmup_rounds=1)
    assert torch.isfinite(loss)
