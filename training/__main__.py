"""`python -m mlplane.training train|tune (--spec PACKED | --spec-uri URI) --context PACKED`.

One attempt: `train` runs a TrainingJob, `tune` a TuningSweep. Each is given the resource's spec in
its wire form (camelCase) and the context (`namespace`, `name`, `uid`, `attempt`,
`mlflowTrackingUri`, `storagePath`, `experiment`) as JSON, bz2-compressed; on the command line
base64url-encoded. A spec too big for one command-line string (Linux holds each to 128 KiB)
comes as `--spec-uri`: the operator stored it under the checkpoint storage first
(`mlplane.operator.lifecycle.runner_entrypoint`).
Exit code 0 on success; on failure 1, with the traceback and then, as the very last line of
stderr, `ExcType: message`, which the operator copies onto the Failed condition.
"""

from __future__ import annotations

import argparse
import base64
import bz2
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

from mlplane.crds.trainingjob import TrainingJobSpec
from mlplane.crds.tuningsweep import TuningSweepSpec
from mlplane.training.runner import RunContext, error_line, train


def decode(value: str) -> dict[str, Any]:
    """base64url (padding optional) of bz2-compressed JSON → JSON object."""
    padded = value + "=" * (-len(value) % 4)
    return decompress(base64.urlsafe_b64decode(padded))


def decompress(data: bytes) -> dict[str, Any]:
    return json.loads(bz2.decompress(data))


def read_stored(uri: str) -> dict[str, Any]:
    """The compressed JSON stored at `uri`: a path, s3:// or gs://."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(path) as stream:
        return decompress(stream.read())


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlplane.training")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, _) in COMMANDS.items():
        command = commands.add_parser(name, help=help_text)
        spec = command.add_mutually_exclusive_group(required=True)
        spec.add_argument("--spec", help="the spec: base64url of bz2-compressed JSON")
        spec.add_argument("--spec-uri", help="where the spec too big to pass inline is stored")
        command.add_argument("--context", required=True, help="the context, as --spec")
    return parser.parse_args(argv)


def spec_and_context(args: argparse.Namespace) -> tuple[dict[str, Any], RunContext]:
    """What the command line carries, decoded (and the spec read where it is stored)."""
    spec = read_stored(args.spec_uri) if args.spec_uri else decode(args.spec)
    return spec, RunContext.from_wire(decode(args.context))


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
    args = arguments(argv)
    try:
        _, run = COMMANDS[args.command]
        run(*spec_and_context(args))
    except BaseException as error:
        traceback.print_exc()
        sys.stderr.write(error_line(error) + "\n")
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
