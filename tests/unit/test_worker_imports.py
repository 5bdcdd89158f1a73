"""What Ray Train's workers and controller import of mlplane: not MLflow.

Every worker imports the built-in loop and unpickles the prepared data; the controller unpickles
the epoch logger, before it starts the worker group. Importing MLflow costs seconds of CPU per
process, which on a small machine the whole worker group start waits for.
"""

from __future__ import annotations

import subprocess
import sys

WORKER_SIDE = (
    "mlplane.training.torch_trainer",
    "mlplane.training.xgboost_trainer",
    "mlplane.training.epoch_logging",
)


def test_the_training_loops_and_the_epoch_logger_import_no_mlflow() -> None:
    imports = "; ".join(f"import {module}" for module in WORKER_SIDE)
    probe = f"{imports}; import sys; print('mlflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_prepared_data_unpickles_without_the_preprocessing() -> None:
    """The data a worker fetches from the object store names a class of the loops' module."""
    probe = (
        "import pickle, numpy as np; from mlplane.training.worker import PreparedData; "
        "data = PreparedData(np.zeros((2, 1)), np.zeros(2), np.zeros((1, 1)), np.zeros(1), "
        "['x'], 'regression', 0); print(pickle.dumps(data).hex())"
    )
    pickled = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    load = (
        f"import pickle, sys; data = pickle.loads(bytes.fromhex('{pickled}')); "
        "print(data.feature_names, 'sklearn' in sys.modules, 'mlflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['x'] False False"
