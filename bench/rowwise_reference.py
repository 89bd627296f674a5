"""pytest plugin (row-wise AdaGrad study only): the tests' numpy reference with row-wise AdaGrad
on the latent vectors v / W (G += mean over the k lanes of g^2, one accumulator per vector), so the
kernel-path tests check the prototype on every compiled variant and path:

    FMRECALL_ROWWISE=1 PYTHONPATH=python:bench python -m pytest tests/test_kernels.py -p rowwise_reference
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import numpy as np


def _rowwise_apply(
    params: Any, state: Any, grad: Any, touched: Any, *, lr: float, reg_linear: float, reg_factors: float
) -> Any:
    new = copy.deepcopy(params)
    st = copy.deepcopy(state)
    if touched["bias"]:
        g = grad["bias"]
        st["bias"] += g * g
        new["bias"] = params["bias"] - lr * g / np.sqrt(st["bias"])
    for name, lam in (("linear", reg_linear), ("v", reg_factors), ("W", reg_factors)):
        if params[name] is None:
            continue
        m = touched[name]
        g = grad[name] + lam * params[name]
        if name == "linear":
            st[name][m] += g[m] ** 2
        else:  # one accumulator per vector (all lanes of st hold the same value)
            msq = np.broadcast_to(np.mean(g * g, axis=-1, keepdims=True), g.shape)
            st[name][m] += msq[m]
        new[name][m] = params[name][m] - lr * g[m] / np.sqrt(st[name][m])
    return new, st


def pytest_collection_modifyitems(session: Any, config: Any, items: Any) -> None:
    ref = sys.modules["reference"]
    ref.adagrad_apply = _rowwise_apply
