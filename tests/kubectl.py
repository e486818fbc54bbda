"""The tests' own kubectl: a small path-based async client over aiohttp for reading and writing the emulators.

stackyard itself uses the official `kubernetes` client (`stackyard.kube`); the
tests use this one to play the user (create, patch, delete, read what landed),
so what they observe does not go through the code under test.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

JSON_MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class KubeError(Exception):
    """A Kubernetes API call failed; `status` is the HTTP status (0 when unreachable)."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ApiResource:
    """Where objects of one kind live in the API."""

    group_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/api/{self.group_version}" if "/" not in self.group_version else f"/apis/{self.group_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
        return base


class KubeClient:
    """Async JSON client for one API server."""

    def __init__(self, info: kopf.ConnectionInfo, timeout: float = 30.0, user_agent: str = "stackyard"):
        self.info = info
        self.server = info.server.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": user_agent}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username and info.password:
            raw = f"{info.username}:{info.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        self._headers = headers
        # Kopf builds the context (CA and client certificates, base64 kubeconfig data decoded, insecure honoured).
        self._ssl = info.as_ssl_context() if self.server.startswith("https") else False
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._discovery: dict[tuple[str, str], ApiResource] = {}

    async def __aenter__(self) -> "KubeClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout, connector=aiohttp.TCPConnector(ssl=self._ssl)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One API call; returns the decoded JSON or raises KubeError."""
        # Raw UTF-8, never \uXXXX escapes: an apply body is parsed as YAML, which refuses the surrogate
        # pairs a JSON encoder writes for characters outside the BMP (emoji).
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = {"Content-Type": content_type} if data is not None else None
        try:
            async with self._session_now().request(
                method, self.server + path, data=data, headers=headers, params=params
            ) as response:
                text = await response.text()
                if response.status >= 400:
                    reason, message = response.reason or "", text[:500]
                    try:
                        status_body = json.loads(text)
                        reason = status_body.get("reason", reason)
                        message = status_body.get("message", message)
                    except ValueError:
                        pass
                    raise KubeError(response.status, str(reason), str(message))
                return json.loads(text) if text else None
        except aiohttp.ClientError as exc:
            raise KubeError(0, "Unreachable", f"{method} {path}: {exc}") from exc
        except TimeoutError as exc:
            raise KubeError(0, "Timeout", f"{method} {path} timed out") from exc

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str) -> Any:
        """GET, or None on 404."""
        try:
            return await self.get(path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def apply(self, path: str, body: Mapping[str, Any], field_manager: str, force: bool = True) -> Any:
        """Server-side apply of `body` at the object's `path`."""
        params = {"fieldManager": field_manager}
        if force:
            params["force"] = "true"
        return await self.request("PATCH", path, body, APPLY_PATCH, params)

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> Any:
        return await self.request("PATCH", path, body, JSON_MERGE_PATCH)

    async def delete(self, path: str, propagation: str = "Background") -> bool:
        """Delete; False when it was already gone."""
        try:
            await self.request("DELETE", path, {"propagationPolicy": propagation})
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise

    async def resource_for(self, api_version: str, kind: str) -> ApiResource:
        """Discover plural and scope of `kind` in `api_version` (cached)."""
        key = (api_version, kind)
        if key not in self._discovery:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            listing = await self.get(path)
            for entry in listing.get("resources", []):
                if "/" in entry.get("name", ""):
                    continue
                resource = ApiResource(api_version, entry["kind"], entry["name"], bool(entry.get("namespaced")))
                self._discovery[(api_version, entry["kind"])] = resource
            if key not in self._discovery:
                raise KubeError(404, "NotFound", f"the server has no kind {kind!r} in {api_version!r}")
        return self._discovery[key]

    def forget_discovery(self) -> None:
        """Drop cached discovery (after CRDs were created)."""
        self._discovery.clear()


SECRETS = ApiResource("v1", "Secret", "secrets", True)
