"""The MLflow tags mlplane puts on a run: the runner writes them, the operator reads them back onto
the resource's status, `mlplane run` prints them, and a person finds runs by them in MLflow. Every
name starts with `mlplane.`; a spec's tracking.tags add others beside them."""

# Lineage: who ran what.
RUN_UID_TAG = "mlplane.uid"
"""The UID of the resource the run is for: the operator finds the run by it."""
KIND_TAG = "mlplane.kind"
NAMESPACE_TAG = "mlplane.namespace"
NAME_TAG = "mlplane.name"
ATTEMPT_TAG = "mlplane.attempt"
VERSION_TAG = "mlplane.version"
"""mlplane's own version."""
SPEC_HASH_TAG = "mlplane.spec_hash"
DATASET_URI_TAG = "mlplane.dataset_uri"
DATASET_HASH_TAG = "mlplane.dataset_hash"
"""A hash of the dataset's content, as read."""

# Progress: the operator's denominators.
EPOCHS_PLANNED_TAG = "mlplane.epochs_planned"
TRIALS_PLANNED_TAG = "mlplane.trials_planned"

# Outcome.
GATES_TAG = "mlplane.gates"
"""`passed`, `none` (no gates set) or `failed: <the gates that did not hold>`."""
MODEL_NAME_TAG = "mlplane.model_name"
MODEL_VERSION_TAG = "mlplane.model_version"
MODEL_URI_TAG = "mlplane.model_uri"
ERROR_TAG = "mlplane.error"
"""Why the run failed, in one line: said on the resource instead of the log's last line."""

# A sweep's trials, each a child run of the sweep's run.
TRIAL_ID_TAG = "mlplane.trial_id"
TRIAL_NUMBER_TAG = "mlplane.trial_number"
TRIAL_STATE_TAG = "mlplane.trial_state"
BEST_TRIAL_TAG = "mlplane.best_trial"
"""On the sweep's run: the best trial (number, parameters, metrics) as JSON."""
