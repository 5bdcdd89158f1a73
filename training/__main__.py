"""`python -m mlplane.training train|tune --spec-json B64 --context-json B64`: one attempt.

`train` runs a TrainingJob, `tune` a TuningSweep. Both arguments are base64url-encoded JSON: the
resource's spec in its wire form (camelCase) and the context (`namespace`, `name`, `uid`,
`attempt`, `mlflowTrackingUri`, `storagePath`, `experiment`). Exit code 0 on success; on failure 1,
with the traceback and then, as the very last line of stderr, `ExcType: message`, which the
operator copies onto the Failed condition.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

from mlplane.crds.trainingjob import TrainingJobSpec
from mlplane.crds.tuningsweep import TuningSweepSpec
from mlplane.training.runner import RunContext, error_line, train


def decode(value: str) -> dict[str, Any]:
    """base64url (padding optional) → JSON object."""
    padded = value + "=" * (-len(value) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def _train(spec: dict[str, Any], context: RunContext) -> None:
    train(TrainingJobSpec.model_validate(spec), context)


def _tune(spec: dict[str, Any], context: RunContext) -> None:
    from mlplane.training.tuning import tune_sweep  # Ray Tune and Optuna load only for sweeps

    tune_sweep(TuningSweepSpec.model_validate(spec), context)


COMMANDS: dict[str, tuple[str, Callable[[dict[str, Any], RunContext], None]]] = {
    "train": ("run one attempt of a TrainingJob", _train),
    "tune": ("run one attempt of a TuningSweep", _tune),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlplane.training")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, _) in COMMANDS.items():
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--spec-json", required=True, help="base64url JSON of the spec")
        command.add_argument("--context-json", required=True, help="base64url JSON context")
    args = parser.parse_args(argv)
    try:
        _, run = COMMANDS[args.command]
        run(decode(args.spec_json), RunContext.from_wire(decode(args.context_json)))
    except BaseException as error:
        traceback.print_exc()
        sys.stderr.write(error_line(error) + "\n")
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
