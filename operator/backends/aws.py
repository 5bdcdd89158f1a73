"""AWS access shared by the SageMaker backend: credentials, clients, and what an error means.

Credentials come from a Secret the handler layer reads (a SecretReader, so this module needs no
Kubernetes client) or from the operator's ambient identity (IRSA). They live only inside the boto3
clients: never in a status, an Event or a log line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

# AWS error codes no retry can fix: wrong permissions, credentials or request.
TERMINAL_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "ValidationException",
        "ValidationError",
        "InvalidParameterValue",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "ExpiredToken",
        "ExpiredTokenException",
        "ResourceLimitExceeded",
        "NoSuchBucket",
    }
)
# Secret keys, as written by hand (lower case) or for envFrom (upper case).
_SECRET_KEYS = {
    "access_key_id": ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
    "secret_access_key": ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    "session_token": ("aws_session_token", "AWS_SESSION_TOKEN"),
}


class CredentialsUnavailable(RuntimeError):
    """The credentials Secret is missing, unreadable or incomplete (the message names keys,
    never values)."""


SecretReader = Callable[[str, str], Mapping[str, str] | None]
"""(namespace, name) → the Secret's decoded data, None when it does not exist."""


def no_secrets(namespace: str, name: str) -> Mapping[str, str] | None:
    raise CredentialsUnavailable(
        f"Secret {name!r}: Secrets can only be read by the operator in a cluster"
    )


@dataclass(frozen=True)
class AwsCredentials:
    """Static credentials from a Secret; repr never shows them."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_secret(cls, name: str, data: Mapping[str, str]) -> AwsCredentials:
        values = {
            attr: next((data[k] for k in keys if data.get(k)), None)
            for attr, keys in _SECRET_KEYS.items()
        }
        missing = [
            _SECRET_KEYS[a][0] for a in ("access_key_id", "secret_access_key") if not values[a]
        ]
        if missing:
            raise CredentialsUnavailable(
                f"spec.sagemaker.credentialsSecret: Secret {name!r} has no {' or '.join(missing)}"
            )
        return cls(**values)  # type: ignore[arg-type]

    def scrub(self, text: str) -> str:
        """`text` with every credential value masked (AWS messages never carry them; belt and
        braces for what reaches status and Events)."""
        for secret in (self.access_key_id, self.secret_access_key, self.session_token):
            if secret:
                text = text.replace(secret, "***")
        return text


@dataclass(frozen=True)
class AwsClients:
    sagemaker: Any
    s3: Any


ClientFactory = Callable[[str, str | None, AwsCredentials | None], AwsClients]
"""(region, endpoint URL, credentials or None for the ambient identity) → clients."""


def boto3_clients(
    region: str, endpoint_url: str | None, credentials: AwsCredentials | None
) -> AwsClients:
    """SageMaker and S3 clients whose calls retry throttling and transient errors with
    exponential backoff (botocore's standard mode) before a reconcile sees them."""
    session = boto3.session.Session(
        aws_access_key_id=credentials.access_key_id if credentials else None,
        aws_secret_access_key=credentials.secret_access_key if credentials else None,
        aws_session_token=credentials.session_token if credentials else None,
        region_name=region,
    )
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
        user_agent_extra="mlplane",
        # Custom endpoints (moto, MinIO-style gateways) rarely resolve bucket subdomains.
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return AwsClients(
        sagemaker=session.client("sagemaker", endpoint_url=endpoint_url, config=config),
        s3=session.client("s3", endpoint_url=endpoint_url, config=config),
    )


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def classify(error: ClientError | BotoCoreError) -> tuple[str, str, bool]:
    """(reason, message, terminal) for an AWS error that botocore's retries did not cure."""
    if isinstance(error, ClientError):
        code = error_code(error) or "Unknown"
        message = error.response.get("Error", {}).get("Message") or str(error)
        return code, f"{error.operation_name}: {message}", code in TERMINAL_CODES
    if isinstance(error, NoCredentialsError):
        return "NoCredentials", f"{error}: set spec.sagemaker.credentialsSecret or IRSA", True
    return "AwsUnavailable", str(error), False


def missing(error: ClientError) -> bool:
    """SageMaker's answer for a name that does not exist (a ValidationException)."""
    message = error.response.get("Error", {}).get("Message", "")
    return error_code(error) in ("ValidationException", "ResourceNotFound") and (
        "Could not find" in message or "does not exist" in message
    )
