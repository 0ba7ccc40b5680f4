"""Runs inside the virtualenv holding only the `openpipe` 5.0.0 SDK (see tests/sdk/test_openpipe_sdk.py).

Usage: python openpipe_models_flow.py BASE_URL create DATASET_ID SLUG BASE_MODEL
       python openpipe_models_flow.py BASE_URL read SLUG
       python openpipe_models_flow.py BASE_URL delete SLUG
Drives the model endpoints through the SDK's own typed calls and prints what it saw as one JSON object.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from openpipe import OpenPipe
from openpipe.api_client import (
    CreateModelRequestTrainingConfig_Openpipe,
    CreateModelRequestTrainingConfigOpenpipeSftHyperparameters,
)
from openpipe.api_client.core.api_error import ApiError


def dump(model: Any) -> Any:
    return json.loads(model.json(by_alias=True))


def main() -> None:
    base_url, action, *args = sys.argv[1:]
    op = OpenPipe(api_key="unused", base_url=base_url).base_client
    out: dict[str, Any] = {}
    if action == "create":
        dataset_id, slug, base_model = args
        config = CreateModelRequestTrainingConfig_Openpipe(
            provider="openpipe",
            base_model=base_model,
            sft_hyperparameters=CreateModelRequestTrainingConfigOpenpipeSftHyperparameters(num_epochs=3, batch_size=8),
        )
        out["created"] = dump(op.create_model(dataset_id=dataset_id, slug=slug, training_config=config))
        try:
            op.create_model(dataset_id="ds_nowhere", slug=f"{slug}-again", training_config=config)
        except ApiError as error:
            out["refused"] = {"status": error.status_code, "body": error.body}
    elif action == "read":
        (slug,) = args
        out["listed"] = [dump(model) for model in op.list_models().data]
        out["got"] = dump(op.get_model(slug))
    elif action == "delete":
        (slug,) = args
        out["deleted"] = dump(op.delete_model(slug))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
