import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# CI runs more examples than a quick local run; both have no deadline since a
# dask compute per example has variable latency on a shared machine.
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def blobs():
    """Overlapping float64 blobs (labels do change for several iterations)."""
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=3000, n_features=4, centers=5, cluster_std=2.0, random_state=7)
    return X


def general_position_init(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k data rows plus a tiny jitter, so no point is exactly equidistant to two centers.

    Integer-valued data (digits) with integer initial centers have exact
    distance ties; scikit-learn subtracts the column means before computing
    distances, so its rounding breaks those ties differently from a direct
    computation. Centers in general position make the comparison meaningful.
    """
    rng = np.random.default_rng(seed)
    rows = X[rng.choice(len(X), size=k, replace=False)].astype(np.float64)
    return rows + rng.uniform(-1e-3, 1e-3, size=rows.shape)
