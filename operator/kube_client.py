"""The operator's own Kubernetes API client (kopf keeps its own for watches and status)."""

from __future__ import annotations

import urllib3
from kubernetes import client
from kubernetes import config as kubeconfig
from kubernetes.client import rest

from mlplane.operator.config import RECONCILE_THREADS

REQUEST_TIMEOUT = (5.0, 30.0)
"""Seconds to connect to the API server and to wait for its answer."""


class BoundedApiClient(client.ApiClient):
    """The kubernetes client with a timeout on every request.

    The client waits forever unless each call passes `_request_timeout`: one API server (or a
    proxy before it) that accepts and never answers would hold a reconcile thread for good.
    """

    def __init__(
        self,
        configuration: client.Configuration | None = None,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> None:
        configuration = configuration or client.Configuration.get_default_copy()
        if configuration.retries is None:
            # urllib3 would otherwise ask a silent server three more times, each waiting out the
            # timeout; a refused connection is still asked again, and so is a read the API server
            # answers 429 or 503 with Retry-After (its flow control, or a new kind's storage
            # still starting), after the wait it names.
            configuration.retries = urllib3.Retry(connect=2, read=0, redirect=0, status=2)
        super().__init__(configuration)
        self.timeout = timeout

    def call_api(
        self,
        method: str,
        url: str,
        header_params: dict[str, str] | None = None,
        body: object = None,
        post_params: list[tuple[str, object]] | None = None,
        _request_timeout: float | tuple[float, float] | None = None,
    ) -> rest.RESTResponse:
        return super().call_api(
            method, url, header_params, body, post_params, _request_timeout or self.timeout
        )


def connect() -> client.ApiClient:
    """In a pod: its ServiceAccount; elsewhere: $KUBECONFIG, as kubectl does. One connection per
    reconcile thread, so none is opened (a TLS handshake) only to be discarded."""
    configuration = client.Configuration()
    try:
        kubeconfig.load_incluster_config(client_configuration=configuration)
    except kubeconfig.ConfigException:
        kubeconfig.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = RECONCILE_THREADS
    return BoundedApiClient(configuration)
