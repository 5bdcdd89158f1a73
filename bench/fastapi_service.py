"""The baseline service: an MLflow model behind FastAPI, the way users write one by hand.

    MODEL_URI=models:/churn-model/1 uvicorn --app-dir bench fastapi_service:app

Same request shape as a ModelDeployment (`{"instances": [{feature: value}, ...]}`), no batching,
no signature checks beyond what MLflow's own schema enforcement does.
"""

from __future__ import annotations

import os
from typing import Any

import mlflow.pyfunc
import pandas as pd
from fastapi import FastAPI

model = mlflow.pyfunc.load_model(os.environ["MODEL_URI"])
app = FastAPI()


@app.post("/")
def predict(body: dict[str, Any]) -> dict[str, Any]:
    predictions = model.predict(pd.DataFrame(body["instances"]))
    return {"predictions": predictions.to_dict(orient="records")}


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
