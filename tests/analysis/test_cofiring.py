"""Documents where two features fire together, strongest pair first (backend.analysis.correlate.cofiring_documents)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from backend.analysis.correlate import QUICK_SCIPY_MAX_NNZ, cofiring_documents, quick_engine


def test_both_must_fire_strongly_to_rank_high():
    """Planted: doc 1 has feature A at its peak but B weak; doc 3 has both fairly strong. Ranking by the weaker
    of the two peak-scaled activations puts doc 3 first; a sum of them would put doc 1 first."""
    X = np.zeros((6, 4), np.float32)
    X[0, [0, 2]] = [1.0, 1.0]  # scaled 0.1, 0.5
    X[1, [0, 2]] = [10.0, 0.3]  # scaled 1.0, 0.15: A carries it
    X[2, [0]] = [5.0]  # only A
    X[3, [0, 2]] = [3.0, 0.7]  # scaled 0.3, 0.35: both
    X[4, [0, 2]] = [2.0, 0.1]  # scaled 0.2, 0.05
    X[5, [2]] = [2.0]  # only B (its peak)
    order = cofiring_documents(sp.csr_matrix(X), 0, 2)
    assert order.tolist() == [3, 1, 0, 4]
    naive = sorted(order.tolist(), key=lambda d: -(X[d, 0] / 10 + X[d, 2] / 2))
    assert naive[0] == 1 != order[0]  # what a sum of scaled activations would have shown first
    assert cofiring_documents(sp.csr_matrix(X), 0, 2, threshold=0.15).tolist() == [3, 1, 0]
    assert cofiring_documents(sp.csr_matrix(X), 1, 2).size == 0  # feature 1 never fires


def test_quick_engine_avoids_compiling_for_small_corpora():
    small = sp.random(100, 50, density=0.1, format="csr", random_state=0)
    assert quick_engine(small) == "scipy"
    big = sp.csr_matrix((np.ones(QUICK_SCIPY_MAX_NNZ + 1, np.float32),
                         (np.arange(QUICK_SCIPY_MAX_NNZ + 1) // 10, np.arange(QUICK_SCIPY_MAX_NNZ + 1) % 10)))
    assert quick_engine(big) == "auto"
