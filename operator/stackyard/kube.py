"""stackyard's own Kubernetes calls, made with the official `kubernetes` client.

What this module adds to the client, and nothing more: credentials that keep
working (a service account token re-read when its file changes; kubeconfig
`exec` plugins refreshed by the client itself), retries the API server asks
for, calls run off the event loop, and `KUBE_CALLS`, the list of every call
stackyard makes, which the RBAC must grant (tests/test_rbac.py).

Why threads: the official client is synchronous (urllib3). Each call runs in
a small bounded thread pool, so the asyncio loop never blocks and a burst of
calls cannot start unbounded threads; the pool's size bounds the concurrent
requests to the API server too.

Errors are the client's typed exceptions (`kubernetes.dynamic.exceptions`:
`NotFoundError`, `ConflictError`, `ForbiddenError`, ... all `ApiError`);
network failures surface as `urllib3.exceptions.HTTPError`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, DynamicApiError, NotFoundError, ResourceNotFoundError
from kubernetes.dynamic.resource import Resource

T = TypeVar("T")

ApiError = DynamicApiError
__all__ = ["ApiError", "DynamicApiError", "CALL_ERRORS", "ConflictError", "KUBE_CALLS", "Kube", "NotFoundError", "Ref",
           "ResourceNotFoundError", "describe", "kube_configuration", "load_configuration",
           "url_configuration"]
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Retried: throttling (429, Retry-After honoured) and server errors, on idempotent methods only
# (server-side apply and merge patches are idempotent; POST is not retried).
RETRY_STATUSES = (429, 500, 502, 503, 504)
RETRY_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "PATCH"})


def retry_policy(total: int = 5, backoff: float = 0.5, maximum: float = 30.0) -> urllib3.Retry:
    """Jittered exponential backoff, `Retry-After` honoured, bounded in count and delay."""
    return urllib3.Retry(
        total=total, connect=total, read=0, status=total, other=0,
        status_forcelist=RETRY_STATUSES, allowed_methods=RETRY_METHODS,
        backoff_factor=backoff, backoff_max=maximum, backoff_jitter=backoff,
        respect_retry_after_header=True, raise_on_status=False,
    )


class TokenFile:
    """A bearer token read from a file and read again whenever the file changes.

    The kubelet rewrites a projected service account token before it expires;
    an agent that read it once would stop working after the first rotation.
    Checking the file's modification time is one `stat` per request.
    """

    def __init__(self, path: Path):
        self.path = path
        self._seen: tuple[float, int] | None = None
        self._lock = threading.Lock()

    def __call__(self, configuration: k8s.Configuration) -> None:
        stat = self.path.stat()
        key = (stat.st_mtime, stat.st_size)
        with self._lock:
            if key != self._seen:
                configuration.api_key["BearerToken"] = self.path.read_text().strip()
                configuration.api_key_prefix["BearerToken"] = "Bearer"
                self._seen = key


def in_cluster_configuration(host: str, token_file: Path, ca_file: Path | None) -> k8s.Configuration:
    """A configuration for a service account: `host`, the token file (re-read on change), the CA."""
    configuration = k8s.Configuration(host=host)
    if ca_file is not None:
        configuration.ssl_ca_cert = str(ca_file)
    else:
        configuration.verify_ssl = False
    token = TokenFile(token_file)
    token(configuration)  # the client adds the header only when a key is present, then refreshes it per request
    configuration.refresh_api_key_hook = token  # type: ignore[assignment]  # the client types the hook as None
    configuration.retries = retry_policy()
    return configuration


def load_configuration(kubeconfig: str | None = None) -> k8s.Configuration:
    """In-cluster service account when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config).

    The kubeconfig is loaded by the official client: `exec` credential plugins
    (EKS, GKE, AKS, OIDC) with their expiry and refresh, `proxy-url` and
    `tls-server-name` all work as in kubectl.
    """
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if kubeconfig is None and host and port and (SERVICE_ACCOUNT / "token").exists():
        url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        return in_cluster_configuration(url, SERVICE_ACCOUNT / "token", SERVICE_ACCOUNT / "ca.crt")
    configuration = k8s.Configuration()
    try:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except k8s_config.ConfigException as exc:
        raise RuntimeError(
            f"no Kubernetes credentials ({exc}): run in a pod with a service account, or set KUBECONFIG"
        ) from None
    configuration.retries = retry_policy()
    return configuration


def url_configuration(server: str, token: str | None = None) -> k8s.Configuration:
    """A configuration for a plain URL (tests and benchmarks against an emulated API server)."""
    configuration = k8s.Configuration(host=server.rstrip("/"))
    configuration.verify_ssl = False
    if token:
        configuration.api_key["BearerToken"] = token
        configuration.api_key_prefix["BearerToken"] = "Bearer"
    configuration.retries = retry_policy()
    return configuration


def kube_configuration(connection: Any = None) -> k8s.Configuration:
    """The configuration for a Kopf `ConnectionInfo` given explicitly (tests), else `load_configuration()`."""
    if connection is not None:
        return url_configuration(connection.server, connection.token)
    return load_configuration()


@dataclass(frozen=True)
class Ref:
    """Which object: apiVersion, kind, name and (for namespaced kinds) namespace."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None


def describe(exc: BaseException) -> str:
    """A one-line account of a failed call, for logs, conditions and agent events."""
    if isinstance(exc, DynamicApiError):
        message = ""
        try:
            message = json.loads(exc.body or "{}").get("message", "")
        except (ValueError, AttributeError):
            message = str(exc.body or "")[:300]
        return f"{exc.status} {exc.reason}: {message}".rstrip(": ")
    if isinstance(exc, ResourceNotFoundError):
        return f"404 NotFound: the server does not serve this kind ({exc})"
    return f"unreachable: {exc}"


# What a call may raise besides a bug: an answer of the API server, an unknown kind, the network.
CALL_ERRORS: tuple[type[BaseException], ...] = (DynamicApiError, ResourceNotFoundError, urllib3.exceptions.HTTPError,
                                                OSError)


def impersonating(user: str | None) -> dict[str, str]:
    """The headers of a request made as `user` (Kubernetes user impersonation: for a service account user
    `system:serviceaccount:<ns>:<name>` the API server adds its groups itself). A fresh dict per call: the
    client adds its own headers to it."""
    return {"Impersonate-User": user} if user else {}


# Every request to the API server has a deadline, (connect, read) seconds: a connection that goes silent (a
# partition, a load balancer dropping it without a reset) fails the call, as a network error the callers
# already handle, instead of holding one of the few pool threads forever. Read timeouts are not retried
# (`retry_policy`), so a call ends within about the read timeout once connected.
REQUEST_TIMEOUT = (10.0, 60.0)


class DeadlineApiClient(k8s.ApiClient):
    """The official client with a deadline on every request it makes: ours, and discovery's own."""

    request_timeout: tuple[float, float] = REQUEST_TIMEOUT

    def call_api(self, method: Any, url: Any, header_params: Any = None, body: Any = None, post_params: Any = None,
                 _request_timeout: Any = None) -> Any:
        return super().call_api(method, url, header_params, body, post_params,
                                _request_timeout=_request_timeout or self.request_timeout)


class Kube:
    """Async access to one API server through the official client (one per process and credential)."""

    def __init__(self, configuration: k8s.Configuration, user_agent: str = "stackyard", workers: int = 4,
                 request_timeout: tuple[float, float] = REQUEST_TIMEOUT):
        self.api_client = DeadlineApiClient(configuration)
        self.api_client.request_timeout = request_timeout
        self.api_client.user_agent = user_agent
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{user_agent}-kube")
        self._dynamic: DynamicClient | None = None
        self._dynamic_lock = threading.Lock()
        self._cache_dir = tempfile.mkdtemp(prefix="stackyard-discovery-")

    async def __aenter__(self) -> "Kube":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()
        shutil.rmtree(self._cache_dir, ignore_errors=True)  # the discovery cache is this client's alone

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking client call in the pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    # Discovery --------------------------------------------------------------------------

    def _client(self) -> DynamicClient:
        with self._dynamic_lock:
            if self._dynamic is None:
                # The discoverer caches in a file; one per client, so two API servers never share it.
                self._dynamic = DynamicClient(self.api_client, cache_file=os.path.join(self._cache_dir, "discovery.json"))
            return self._dynamic

    def _resource(self, api_version: str, kind: str) -> Resource:
        try:
            return self._client().resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            # A kind created a moment ago (a CRD just established): discover again once.
            self._client().resources.invalidate_cache()
            return self._client().resources.get(api_version=api_version, kind=kind)

    async def resource(self, api_version: str, kind: str) -> Resource:
        """The API resource of a kind; `ResourceNotFoundError` when the server does not serve it."""
        return await self.run(self._resource, api_version, kind)

    async def forget_discovery(self) -> None:
        """Drop cached discovery (after CRDs were created). Discovering again is network I/O: it runs in the
        pool, under the request deadline, never on the event loop."""
        if self._dynamic is not None:
            await self.run(self._dynamic.resources.invalidate_cache)

    # Calls --------------------------------------------------------------------------------

    def _namespace(self, resource: Resource, namespace: str | None) -> str | None:
        return namespace if resource.namespaced else None

    async def get(self, ref: Ref, as_user: str | None = None) -> dict[str, Any] | None:
        """The object, or None when it does not exist (read as `as_user`, impersonated, when given)."""

        def call() -> dict[str, Any] | None:
            resource = self._resource(ref.api_version, ref.kind)
            try:
                return self._client().get(resource, name=ref.name, namespace=self._namespace(resource, ref.namespace),
                                          header_params=impersonating(as_user)).to_dict()
            except NotFoundError:
                return None

        return await self.run(call)

    async def list(self, api_version: str, kind: str, namespace: str | None = None,
                   label_selector: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The objects of a kind (in a namespace, matching a label selector)."""

        def call() -> list[dict[str, Any]]:
            resource = self._resource(api_version, kind)
            answer = self._client().get(resource, namespace=self._namespace(resource, namespace),
                                        label_selector=label_selector, limit=limit)
            return [item for item in answer.to_dict().get("items") or []]

        return await self.run(call)

    async def apply(self, body: Mapping[str, Any], field_manager: str, force: bool = True,
                    as_user: str | None = None) -> dict[str, Any]:
        """Server-side apply of `body` (apiVersion, kind, metadata.name and, if namespaced, metadata.namespace),
        as `as_user` (impersonated) when given.

        The body is sent as UTF-8 JSON text, not `\\uXXXX` escapes: the API server parses an apply
        body as YAML, which refuses the surrogate pairs a default JSON encoder writes for emoji.
        """
        meta = body.get("metadata") or {}

        def call() -> dict[str, Any]:
            resource = self._resource(body["apiVersion"], body["kind"])
            return self._client().server_side_apply(
                resource, body=json.dumps(body, ensure_ascii=False), name=meta["name"],
                namespace=self._namespace(resource, meta.get("namespace")), field_manager=field_manager,
                force_conflicts="true" if force else None, header_params=impersonating(as_user),
            ).to_dict()

        return await self.run(call)

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object (not retried: POST is not idempotent)."""

        def call() -> dict[str, Any]:
            resource = self._resource(body["apiVersion"], body["kind"])
            namespace = self._namespace(resource, (body.get("metadata") or {}).get("namespace"))
            return self._client().create(resource, body=dict(body), namespace=namespace).to_dict()

        return await self.run(call)

    async def merge_patch(self, ref: Ref, patch: Mapping[str, Any], subresource: str | None = None) -> dict[str, Any]:
        """A JSON merge patch of the object (or of its `status` subresource)."""

        def call() -> dict[str, Any]:
            resource = self._resource(ref.api_version, ref.kind)
            if subresource:
                resource = resource.subresources[subresource]
            return self._client().patch(resource, body=dict(patch), name=ref.name,
                                        namespace=self._namespace(resource, ref.namespace),
                                        content_type="application/merge-patch+json").to_dict()

        return await self.run(call)

    async def delete(self, ref: Ref, propagation: str = "Background", as_user: str | None = None) -> bool:
        """Delete (as `as_user`, impersonated, when given); False when it was already gone (or its kind is no
        longer served)."""

        def call() -> bool:
            try:
                resource = self._resource(ref.api_version, ref.kind)
            except ResourceNotFoundError:
                return False  # the kind is gone, and so are its objects
            try:
                self._client().delete(resource, name=ref.name, namespace=self._namespace(resource, ref.namespace),
                                      propagation_policy=propagation, header_params=impersonating(as_user))
            except NotFoundError:
                return False
            return True

        return await self.run(call)


# Every Kubernetes call stackyard makes: (component, verb, group, resource). The RBAC in manifests/
# and in the chart must grant exactly these; tests/test_rbac.py checks both ways, and that the
# operator's real calls (recorded by the emulator in tests) stay within this list.
_CR = ("stacks", "agenttargets", "agents")
KUBE_CALLS: tuple[tuple[str, str, str, str], ...] = (
    *((("operator", verb, "stackyard.dev", plural) for plural in _CR for verb in ("get", "list", "watch", "patch"))),
    *((("operator", "patch", "stackyard.dev", f"{plural}/status") for plural in _CR)),
    ("operator", "create", "", "secrets"),  # agents' key Secrets
    ("operator", "patch", "", "secrets"),
    ("operator", "get", "", "secrets"),  # Secrets that Stacks ship by reference (spec.secretRefs) ...
    ("operator", "list", "", "secrets"),  # ... and their changes (Kopf's watch of labelled Secrets)
    ("operator", "watch", "", "secrets"),
    ("operator", "create", "", "events"),
    ("operator", "get", "coordination.k8s.io", "leases"),
    ("operator", "create", "coordination.k8s.io", "leases"),
    ("operator", "patch", "coordination.k8s.io", "leases"),
    ("operator", "list", "apiextensions.k8s.io", "customresourcedefinitions"),
    ("operator", "list", "", "namespaces"),  # Agents' allowedNamespaceSelector (cluster-wide installs only)
    ("operator", "watch", "apiextensions.k8s.io", "customresourcedefinitions"),
    ("agent", "list", "", "configmaps"),
    ("agent", "get", "", "configmaps"),
    ("agent", "create", "", "configmaps"),
    ("agent", "patch", "", "configmaps"),
    ("agent", "delete", "", "configmaps"),
    # the agent applies whatever its stacks hold: every kind, with these verbs
    ("agent", "get", "*", "*"),
    ("agent", "create", "*", "*"),
    ("agent", "patch", "*", "*"),
    ("agent", "delete", "*", "*"),
    # stacks may ship Roles and bindings that grant more than the agent holds (RBAC escalation prevention)
    ("agent", "escalate", "rbac.authorization.k8s.io", "roles"),
    ("agent", "escalate", "rbac.authorization.k8s.io", "clusterroles"),
    ("agent", "bind", "rbac.authorization.k8s.io", "roles"),
    ("agent", "bind", "rbac.authorization.k8s.io", "clusterroles"),
    # with every stack impersonated (Agent spec.impersonationRequired; manifests/agent/components/impersonation):
    # its inventories, a shipped CRD's status, and acting as the mapped service accounts, nothing else
    *((("agent-least-privilege", verb, "", "configmaps") for verb in ("list", "get", "create", "patch", "delete"))),
    ("agent-least-privilege", "get", "apiextensions.k8s.io", "customresourcedefinitions"),
    ("agent-least-privilege", "impersonate", "", "serviceaccounts"),
)
