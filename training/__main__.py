"""`python -m mlplane.training train --spec-json B64 --context-json B64`: one TrainingJob attempt.

Both arguments are base64url-encoded JSON: the TrainingJob spec in its wire form (camelCase) and
the context (`namespace`, `name`, `uid`, `attempt`, `mlflowTrackingUri`, `storagePath`,
`experiment`). Exit code 0 on success; on failure 1, with the traceback and then, as the very last
line of stderr, `ExcType: message`, which the operator copies onto the Failed condition.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import traceback
from typing import Any

from mlplane.crds.trainingjob import TrainingJobSpec
from mlplane.training.runner import RunContext, error_line, train


def decode(value: str) -> dict[str, Any]:
    """base64url (padding optional) → JSON object."""
    padded = value + "=" * (-len(value) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlplane.training")
    commands = parser.add_subparsers(dest="command", required=True)
    train_command = commands.add_parser("train", help="run one attempt of a TrainingJob")
    train_command.add_argument("--spec-json", required=True, help="base64url JSON of the spec")
    train_command.add_argument("--context-json", required=True, help="base64url JSON context")
    args = parser.parse_args(argv)
    try:
        spec = TrainingJobSpec.model_validate(decode(args.spec_json))
        train(spec, RunContext.from_wire(decode(args.context_json)))
    except BaseException as error:
        traceback.print_exc()
        sys.stderr.write(error_line(error) + "\n")
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
