"""Session fixtures for the real Ray, MLflow and moto servers (filled by the training work)."""
