"""A user's training function that always fails, as a broken custom entrypoint does."""


def train_loop_per_worker(config: dict) -> None:
    raise ValueError("feature 'tenure' has 12 missing values and no imputer was configured")
