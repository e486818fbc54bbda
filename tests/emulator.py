"""A Kubernetes API for tests: kmock's emulator with what stock kmock 0.8 lacks (docs/architecture.md, "Testing").

No Kubernetes cluster can run on the test machines, so this emulator stands in
for the API server, over real HTTP, in its own thread and event loop. It adds:
metadata.uid, resourceVersion (bumped on every write), generation (bumped on
spec changes), creationTimestamp, generateName, JSON-patch with a 422 for a
failed `test`, merge patches that delete keys set to null, status-subresource
semantics, create-or-patch for server-side apply, pruning and validation of
custom resources by their structural schema (tests/structural.py), CRDs
written through the API established and served (`establish`), label
validation, RBAC escalation prevention, and, when `enforce_rbac` is called,
authorization and impersonation as the API server does them (tests/rbac.py).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import json
import re
import secrets
import threading
import types
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import enums

from .rbac import RBAC_GROUP, Authorizer, User, service_account
from .structural import apply_schema

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/([^/]+))?/?$")
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")


DISCOVERY_PATH = re.compile(r"^/(api/v1|apis/[^/]+/[^/]+)/?$")


def discovery(response: aiohttp.web.StreamResponse) -> aiohttp.web.StreamResponse:
    """An APIResourceList as the API server writes it: the core group's `groupVersion` is `v1` (kmock writes
    `/v1`, and kubectl then finds no core kind at all), and categories and short names belong to a resource, not
    to its subresources (`kubectl get <category>` would otherwise ask for `agents/status`)."""
    body = getattr(response, "body", None)
    if not isinstance(body, bytes):
        return response
    document = json.loads(body)
    if document.get("groupVersion") == "/v1":
        document["groupVersion"] = "v1"
    for entry in document.get("resources") or ():
        if "/" in entry.get("name", ""):
            entry.pop("categories", None)
            entry.pop("shortNames", None)
    return aiohttp.web.json_response(document, status=response.status)


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response(
        {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code,
         "reason": reason, "message": message},
        status=code,
    )


_REQUIREMENT = re.compile(r"\s*(!?)([^=!,\s()]+)\s*(?:(==|=|!=)\s*([^,\s]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*(?:,|$)")


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """A labelSelector query (`a=b,c!=d,e in (f,g),h,!i`) against labels, as the API server filters lists."""
    position = 0
    while position < len(selector):
        match = _REQUIREMENT.match(selector, position)
        if match is None or match.end() == position:
            raise ValueError(f"unable to parse requirement: {selector[position:]!r}")
        position = match.end()
        negated, key, op, value, set_op, values = match.groups()
        present = key in labels
        if op in ("=", "=="):
            ok = labels.get(key) == value
        elif op == "!=":
            ok = labels.get(key) != value
        elif set_op:
            options = {v.strip() for v in values.split(",") if v.strip()}
            ok = (present and labels[key] in options) if set_op == "in" else not (present and labels[key] in options)
        else:
            ok = present != bool(negated)
        if not ok:
            return False
    return True


def only_removes(patch: Any) -> bool:
    """True for a merge patch whose every leaf is null (it deletes keys and sets nothing)."""
    if not isinstance(patch, dict) or not patch:
        return False
    leaves = [patch]
    while leaves:
        item = leaves.pop()
        for value in item.values():
            if isinstance(value, dict):
                leaves.append(value)
            elif value is not None:
                return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: null deletes a key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Label syntax, as the API server validates it on every write (apimachinery's validation.IsQualifiedName and
# IsValidLabelValue): a key is an optional DNS-subdomain prefix and "/", then a name of at most 63
# characters; a value is empty or at most 63 characters of the same alphabet.
# https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def invalid_labels(labels: Any) -> str | None:
    """Why the API server would refuse these metadata.labels (422), or None."""
    if labels is None:
        return None
    if not isinstance(labels, dict):
        return "metadata.labels: Invalid value: must be a map of strings"
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix))) or not _LABEL_NAME.fullmatch(name):
            return f"metadata.labels: Invalid value: {key!r}: name part must consist of alphanumeric characters," \
                   " '-', '_' or '.', at most 63 characters"
        if not isinstance(value, str) or (value and not _LABEL_NAME.fullmatch(value)):
            return f"metadata.labels: Invalid value: {value!r}: must be no more than 63 characters of" \
                   " alphanumerics, '-', '_' or '.', beginning and ending with an alphanumeric character"
    return None


ROLE_KINDS = {"roles": "roles", "clusterroles": "clusterroles"}
BINDINGS = {"rolebindings", "clusterrolebindings"}


def _covers(held: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        (group in rule.get("apiGroups", ()) or "*" in rule.get("apiGroups", ()))
        and (resource in rule.get("resources", ()) or "*" in rule.get("resources", ()))
        and (verb in rule.get("verbs", ()) or "*" in rule.get("verbs", ()))
        for rule in held
    )


def _all_covered(held: list[dict[str, Any]], rules: list[dict[str, Any]]) -> bool:
    return all(
        _covers(held, group, resource, verb)
        for rule in rules or ()
        for group in rule.get("apiGroups", [""])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    )


def rules_of(path: Path) -> list[dict[str, Any]]:
    """Every rule of every Role and ClusterRole in a manifest file: what its ServiceAccount holds."""
    return [rule for doc in yaml.safe_load_all(path.read_text())
            if doc and doc.get("kind") in ("Role", "ClusterRole") for rule in doc.get("rules", [])]


class Emulator(kmock.KubernetesEmulator):
    """KubernetesEmulator with the object lifecycle a Kopf operator and an agent rely on."""

    # The rules the (single) client holds, or None for cluster-admin. When set, writes of RBAC objects
    # follow the API server's escalation prevention: a Role or ClusterRole may grant only permissions the
    # requester holds, unless it holds `escalate` on roles/clusterroles; a binding may reference only a
    # role whose permissions the requester holds, unless it holds `bind` on it.
    # https://kubernetes.io/docs/reference/access-authn-authz/rbac/#privilege-escalation-prevention-and-bootstrapping
    held_rules: list[dict[str, Any]] | None = None
    # Requests RBAC would refuse: (method, path, user agent) -> True answers 403.
    forbid: Callable[[str, str, str], bool] | None = None
    # Authentication as the API server does it: a request whose bearer token this refuses gets 401.
    accept_token: Callable[[str], bool] | None = None
    # The structural schema of each custom resource (register_crd): the API server prunes and validates with it.
    schemas: dict[Any, dict[str, Any]]
    # RBAC authorization and impersonation of every request (enforce_rbac), as the API server does them.
    authorizer: Authorizer | None = None

    def enforce_rbac(self, caller_rules: list[dict[str, Any]] | None,
                     caller: User = service_account("stackyard-system", "stackyard-agent")) -> Authorizer:
        """From now on authorize every request: the caller (whoever connects) holds `caller_rules` (None:
        everything), an impersonated user what the RBAC objects stored here grant it (tests/rbac.py)."""

        def lookup(plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
            return self._stored((kmock.resource(RBAC_GROUP, "v1", plural), namespace, name))

        def listing(plural: str) -> list[tuple[str | None, dict[str, Any]]]:
            wanted = kmock.resource(RBAC_GROUP, "v1", plural)
            return [(ns, o.raw) for (r, ns, _), o in list(self._objects.items()) if r == wanted and not o.deleted]

        self.authorizer = Authorizer(caller, caller_rules, lookup, listing)
        return self.authorizer

    def _stored(self, key: tuple[Any, str | None, str | None]) -> dict[str, Any] | None:
        """The live object under (resource, namespace, name), or None."""
        if key not in self._objects or self._objects[key].deleted:
            return None
        return self._objects[key].raw

    def _authorize(self, request: kmock.Request, method: str) -> tuple[User | None, aiohttp.web.StreamResponse | None]:
        """(the user the request acts as, a 403 when RBAC or impersonation refuses it): tests/rbac.py."""
        if self.authorizer is None:
            return None, None
        headers = request.headers
        raw = getattr(request, "_raw_request", None)  # kmock keeps one value per header; a group may repeat
        groups = (raw.headers.getall("Impersonate-Group", []) if raw is not None
                  else [headers["Impersonate-Group"]] if "Impersonate-Group" in headers else [])
        user, refused = self.authorizer.impersonated(headers.get("Impersonate-User"), list(groups))
        if refused is not None:
            return user, _status(403, "Forbidden", refused)
        match = NAMESPACE_PATH.match(request.url.path)
        if match is not None:
            group, plural, namespace, name = "", "namespaces", None, match.group(1)
        elif request.resource is not None and isinstance(getattr(request.resource, "plural", None), str):
            group, plural = request.resource.group or "", request.resource.plural
            namespace, name = request.namespace, request.name
        else:
            return user, None
        if request.subresource:
            plural = f"{plural}/{request.subresource}"
        verbs = {"GET": "get" if name else ("watch" if request.params.get("watch") in ("true", "1") else "list"),
                 "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        wanted = [verbs.get(method, method.lower())]
        if method == "PATCH" and "apply-patch" in headers.get("Content-Type", "") and match is None:
            if self._stored((request.resource, namespace, name)) is None:
                wanted.append("create")  # an apply that creates is authorized as a create too
        for verb in wanted:
            if not self.authorizer.can(user, verb, group, plural, namespace, name):
                return user, _status(403, "Forbidden",
                                     self.authorizer.forbidden(user, verb, group, plural, namespace, name))
            self.authorizer.allowed.append((user.name, verb, plural, name))
        return user, None

    def _structured(self, resource: Any, obj: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """`obj` as the API server stores a custom resource: fields its schema lacks dropped, and a 422 reason
        when a value has the wrong type, is outside its enum or its bounds (tests/structural.py)."""
        schema = self.__dict__.get("schemas", {}).get(resource)
        if schema is None:
            return obj, None
        stored, errors = apply_schema(obj, schema)
        return stored, ("; ".join(errors[:5]) if errors else None)

    def inject(self, method: str, path_contains: str, status: int, times: int = 1,
               headers: dict[str, str] | None = None) -> None:
        """Answer the next `times` matching requests with `status` (e.g. 429 with Retry-After, a 500)."""
        self.__dict__.setdefault("_faults", []).append(
            {"method": method, "path": path_contains, "status": status, "times": times, "headers": headers or {}})

    def _escalation(self, request: kmock.Request, body: Any, user: User | None = None) -> aiohttp.web.StreamResponse | None:
        resource = getattr(request.resource, "plural", None)
        held = self.held_rules
        if self.authorizer is not None and user is not None:  # the rules of whoever the request acts as
            held = self.authorizer.rules(user, request.namespace)
        if held is None or getattr(request.resource, "group", None) != RBAC_GROUP or not isinstance(body, dict):
            return None
        if resource in ROLE_KINDS and not _covers(held, RBAC_GROUP, resource, "escalate"):
            if not _all_covered(held, body.get("rules") or []):
                return _status(403, "Forbidden", f"{resource} {request.name!r} is forbidden: user is attempting to"
                                                  " grant RBAC permissions not currently held")
        if resource in BINDINGS:
            ref = body.get("roleRef") or {}
            plural = "clusterroles" if ref.get("kind") == "ClusterRole" else "roles"
            if not _covers(held, RBAC_GROUP, plural, "bind"):
                namespace = None if plural == "clusterroles" else request.namespace
                role = self._stored((kmock.resource(RBAC_GROUP, "v1", plural), namespace, ref.get("name")))
                rules = role.get("rules") if role is not None else None
                if rules is None or not _all_covered(held, rules):
                    return _status(403, "Forbidden", f"{resource} {request.name!r} is forbidden: user is attempting"
                                                      " to grant RBAC permissions not currently held")
        return None

    def _now(self) -> str:
        return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")

    def _next_version(self) -> str:
        self._rv = getattr(self, "_rv", 1000) + 1
        return str(self._rv)

    def _manage(self, obj: dict[str, Any], request: kmock.Request, current: dict[str, Any] | None) -> None:
        """Record the writer in metadata.managedFields, as the API server does for every write: one entry per
        (manager, operation, subresource), with the time of its last write. The field sets (fieldsV1) are not
        computed; stackyard reads only who wrote, and compares values itself."""
        content_type = (getattr(request, "headers", None) or {}).get("Content-Type", "")
        operation = "Apply" if "apply-patch" in content_type else "Update"
        manager = (getattr(request, "params", None) or {}).get("fieldManager") or "unknown"
        if current is not None and operation == "Update" and obj == current:
            return
        if current is not None and operation == "Update" and only_removes(getattr(request, "data", None)):
            # A write that only removes fields leaves its manager owning nothing, and the API server drops a
            # managedFields entry whose field set is empty: a removal leaves no trace of who did it.
            return
        subresource = getattr(request, "subresource", None)
        entries = [e for e in obj["metadata"].get("managedFields") or ()
                   if (e.get("manager"), e.get("operation"), e.get("subresource")) != (manager, operation, subresource)]
        entry = {"manager": manager, "operation": operation, "apiVersion": obj.get("apiVersion"), "time": self._now(),
                 "fieldsType": "FieldsV1", "fieldsV1": {}}
        if subresource:
            entry["subresource"] = subresource
        obj["metadata"]["managedFields"] = [*entries, entry]

    def _has_status_subresource(self, resource: Any) -> bool:
        try:
            return "status" in self.resources[resource].subresources
        except Exception:
            return False

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        """How many requests were served (optionally of one method, on paths containing a string)."""
        served: collections.Counter = self.__dict__.setdefault("_served", collections.Counter())
        return sum(n for (m, path), n in served.items() if (method is None or m == method) and path_contains in path)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """The namespace collection, which kmock 0.8 cannot even parse (a 500 before any handler runs); and
        discovery as the API server serves it (`discovery`)."""
        if DISCOVERY_PATH.match(raw_request.path) and raw_request.method == "GET":
            return discovery(await super().__call__(raw_request))
        if raw_request.path.rstrip("/") != "/api/v1/namespaces":
            return await super().__call__(raw_request)
        method = raw_request.method.upper()
        served: collections.Counter = self.__dict__.setdefault("_served", collections.Counter())
        served[(method, raw_request.path)] += 1
        if self.forbid is not None and self.forbid(method, raw_request.path, raw_request.headers.get("User-Agent", "")):
            return _status(403, "Forbidden", f"{method} {raw_request.path} is forbidden for this user (test RBAC)")
        resource = kmock.resource("", "v1", "namespaces")
        if method == "POST":
            body = await raw_request.json()
            return await self._create(types.SimpleNamespace(resource=resource, namespace=None, name=None), body)
        if method != "GET":
            return _status(405, "MethodNotAllowed", f"{method} is not supported on the namespace collection")
        async with self._lock:
            items = [copy.deepcopy(o.raw) for (r, _, _), o in self._objects.items() if r == resource and not o.deleted]
        selector = raw_request.query.get("labelSelector")
        if selector:  # the API server filters lists by label selector
            items = [i for i in items if selector_matches(selector, i.get("metadata", {}).get("labels") or {})]
        return aiohttp.web.json_response({"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": items})

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        served: collections.Counter = self.__dict__.setdefault("_served", collections.Counter())
        method = request.method.value.upper() if hasattr(request.method, "value") else str(request.method).upper()
        served[(method, request.url.path)] += 1
        if self.accept_token is not None:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not self.accept_token(token):
                return _status(401, "Unauthorized", "Unauthorized")
        for fault in self.__dict__.setdefault("_faults", []):
            if fault["times"] > 0 and fault["method"] == method and fault["path"] in request.url.path:
                fault["times"] -= 1
                response = _status(fault["status"], "Injected", f"injected {fault['status']}")
                response.headers.update(fault["headers"])
                return response
        if self.forbid is not None and self.forbid(method, request.url.path, request.headers.get("User-Agent", "")):
            return _status(403, "Forbidden", f"{method} {request.url.path} is forbidden for this user (test RBAC)")
        user, refused = self._authorize(request, method)
        if refused is not None:
            return refused
        match = NAMESPACE_PATH.match(request.url.path)
        if match is not None:
            return await self._namespaces(request, match.group(1))
        refused = self._escalation(request, request.data, user) if request.action in (
            enums.action.CREATE, enums.action.UPDATE) else None
        if refused is not None:
            return refused
        if request.resource is not None and request.action == enums.action.CREATE:
            return await self._create(request, request.data)
        if request.resource is not None and request.action == enums.action.UPDATE and request.name:
            return await self._update(request)
        if request.resource is not None and request.action == enums.action.DELETE and request.name:
            return await self._delete(request)
        # Reads are served here too: kmock's reaction matching grows with the request history,
        # which made long runs (benchmarks) slower with every request.
        concrete = request.resource is not None and isinstance(getattr(request.resource, "plural", None), str)
        if concrete and request.action == enums.action.FETCH and request.name:
            return await self._fetch(request)
        if concrete and request.action == enums.action.LIST and request.resource in self._get_resources():
            return aiohttp.web.json_response(await self._serve_list(request))
        return await super()._handle(request)

    async def _namespaces(self, request: kmock.Request, name: str | None) -> aiohttp.web.StreamResponse:
        """One Namespace as an object: stock kmock cannot route /api/v1/namespaces/<name> (the collection is
        served by `__call__`)."""
        resource = kmock.resource("", "v1", "namespaces")
        evolved = attrs.evolve(request, resource=resource, namespace=None, name=name)
        method = request.method.value.upper() if hasattr(request.method, "value") else str(request.method).upper()
        if method in ("PATCH", "PUT") and name:
            return await self._update(evolved)
        if method == "DELETE" and name:
            return await self._delete(evolved)
        if method == "GET" and name:
            async with self._lock:
                key = (resource, None, name)
                if key not in self._objects or self._objects[key].deleted:
                    return _status(404, "NotFound", f'namespaces "{name}" not found')
                return aiohttp.web.json_response(copy.deepcopy(self._objects[key].raw))
        return _status(405, "MethodNotAllowed", f"{method} is not supported on namespaces here")

    def _log(self, resource: Any) -> collections.deque:
        logs = self.__dict__.setdefault("_event_logs", {})
        return logs.setdefault(resource, collections.deque(maxlen=50_000))

    async def _publish(self, resource: Any, kind: str, obj: dict[str, Any]) -> None:
        """Record an event with the object's resourceVersion and send it to the watchers (lock held)."""
        if kind != "DELETED" and (resource.group, resource.plural) == ("apiextensions.k8s.io", CRD_PLURAL):
            obj["status"] = establish(self, obj)
            self._objects[(resource, None, obj["metadata"]["name"])]["status"] = obj["status"]
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self._log(resource).append((int(obj["metadata"]["resourceVersion"]), event))
        await self._buses[resource].put(event)

    def _matches(self, request: kmock.Request, resource: Any, namespace: str | None) -> bool:
        return resource == request.resource and (request.namespace is None or namespace == request.namespace)

    async def _serve_list(self, request: kmock.Request) -> Any:
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            items = [
                copy.deepcopy(obj.raw)
                for (resource, namespace, _name), obj in self._objects.items()
                if self._matches(request, resource, namespace) and not obj.deleted
            ]
            version = str(getattr(self, "_rv", 1000))
        selector = request.params.get("labelSelector")
        if selector:
            items = [i for i in items if selector_matches(selector, i.get("metadata", {}).get("labels") or {})]
        return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": version}, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> Any:
        """Watch from a resourceVersion, as the API server does.

        Stock kmock re-sends every object as ADDED and subscribes only after
        that, so a client that lists first sees duplicates and can miss writes
        made in between; Kopf then stalls on a stale resourceVersion.
        """
        yield b""
        bus = self._buses[request.resource]
        since = request.params.get("resourceVersion", "")
        async with self._lock:
            marker = await bus.mark()
            if since.isdigit() and int(since) > 0:
                replay = [event for version, event in self._log(request.resource) if version > int(since)]
            else:
                replay = [
                    {"type": "ADDED", "object": copy.deepcopy(obj.raw)}
                    for (resource, namespace, _name), obj in self._objects.items()
                    if self._matches(request, resource, namespace) and not obj.deleted
                ]
        try:
            for event in replay:
                if self._matches(request, request.resource, event["object"]["metadata"].get("namespace")):
                    yield event
            async for event in bus.stream(since=marker):
                if self._matches(request, request.resource, event["object"]["metadata"].get("namespace")):
                    yield event
        finally:
            await bus.unmark(marker)

    async def _fetch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                return _status(404, "NotFound", f"{request.name} not found")
            obj = copy.deepcopy(self._objects[key].raw)
        if request.subresource and request.subresource != "status":
            return _status(404, "NotFound", f"no subresource {request.subresource}")
        return aiohttp.web.json_response(obj)

    async def _delete(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                return _status(404, "NotFound", f"{request.name} not found")
            obj = copy.deepcopy(self._objects[key].raw)
            meta = obj["metadata"]
            meta["resourceVersion"] = self._next_version()
            if meta.get("finalizers"):
                if not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = self._now()
                self._objects[key].create(obj)
                await self._publish(request.resource, "MODIFIED", obj)
            else:
                self._objects[key].delete()
                await self._publish(request.resource, "DELETED", obj)
        return aiohttp.web.json_response(obj)

    async def _create(self, request: kmock.Request, body: Any) -> aiohttp.web.StreamResponse:
        if not isinstance(body, dict):
            return _status(400, "BadRequest", "the body must be an object")
        refused = invalid_labels((body.get("metadata") or {}).get("labels"))
        if refused is not None:
            return _status(422, "Invalid", refused)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if request.name and not meta.get("name"):
            meta["name"] = request.name
        if not meta.get("name"):
            return _status(422, "Invalid", "metadata.name: Required value")
        namespace = request.namespace or meta.get("namespace")
        if namespace:
            meta["namespace"] = namespace
        key = (request.resource, namespace, meta["name"])
        async with self._lock:
            if key in self._objects and not self._objects[key].deleted:
                return _status(409, "AlreadyExists", f"{meta['name']} already exists")
            if self._has_status_subresource(request.resource):
                obj.pop("status", None)  # with the status subresource, a create's status is ignored
            obj, invalid = self._structured(request.resource, obj)
            if invalid is not None:
                return _status(422, "Invalid", f"{meta['name']}: {invalid}")
            meta = obj["metadata"]
            meta["uid"] = str(uuid.uuid4())
            meta["resourceVersion"] = self._next_version()
            meta["generation"] = 1
            meta["creationTimestamp"] = self._now()
            meta.pop("deletionTimestamp", None)
            meta.pop("managedFields", None)
            self._manage(obj, request, None)
            if key in self._objects:
                self._objects[key].create(obj)
            else:
                self._objects[key] = obj
            await self._publish(request.resource, "ADDED", obj)
        return aiohttp.web.json_response(obj, status=201)

    async def _update(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        key = (request.resource, request.namespace, request.name)
        content_type = request.headers.get("Content-Type", "")
        if "apply-patch+yaml" in content_type and SURROGATE_ESCAPE.search(request.body):
            # The API server parses an apply body as YAML (go-yaml), which refuses the UTF-16 surrogate
            # escapes that JSON encoders write for characters outside the BMP (an emoji as "\ud83d\ude00").
            return _status(400, "BadRequest",
                           "error converting YAML to JSON: yaml: found invalid Unicode character escape code")
        async with self._lock:
            exists = key in self._objects and not self._objects[key].deleted
        if not exists:
            if "apply-patch" in content_type and request.subresource is None:
                body = copy.deepcopy(request.data) if isinstance(request.data, dict) else None
                if body is None:
                    return _status(400, "BadRequest", "the apply body must be an object")
                body.setdefault("metadata", {})["name"] = request.name
                return await self._create(request, body)
            return _status(404, "NotFound", f"{request.name} not found")
        async with self._lock:
            current = copy.deepcopy(self._objects[key].raw)
            wanted_version = (request.data.get("metadata") or {}).get("resourceVersion") if isinstance(
                request.data, dict) else None
            if wanted_version and wanted_version != current["metadata"].get("resourceVersion"):
                return _status(409, "Conflict", "the object has been modified; please apply your changes to the latest version")
            if isinstance(request.data, list):
                try:
                    new = jsonpatch.apply_patch(current, request.data)
                except jsonpatch.JsonPatchTestFailed as exc:
                    return _status(422, "Invalid", f"the test operation failed: {exc}")
                except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                    return _status(422, "Invalid", f"the JSON patch cannot be applied: {exc}")
            elif isinstance(request.data, dict):
                if request.method == enums.method.PUT:
                    new = copy.deepcopy(request.data)
                else:
                    new = merge_patch(current, request.data)
            else:
                return _status(400, "BadRequest", "the patch body must be an object or a list")
            if request.subresource == "status":
                new = {**current, "status": new.get("status")}
            elif self._has_status_subresource(request.resource):
                new["status"] = current.get("status")
            if new.get("status") is None:
                new.pop("status", None)
            new, invalid = self._structured(request.resource, new)
            if invalid is not None:
                return _status(422, "Invalid", f"{request.name}: {invalid}")
            meta = new.setdefault("metadata", {})
            refused = invalid_labels(meta.get("labels"))
            if refused is not None:
                return _status(422, "Invalid", refused)
            for fixed in ("uid", "creationTimestamp", "name", "namespace", "managedFields"):
                if fixed in current.get("metadata", {}):
                    meta[fixed] = current["metadata"][fixed]
            self._manage(new, request, current)
            if current["metadata"].get("deletionTimestamp"):
                meta["deletionTimestamp"] = current["metadata"]["deletionTimestamp"]
            generation = current["metadata"].get("generation", 1)
            changed_spec = {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
                k: v for k, v in current.items() if k not in ("metadata", "status")
            }
            meta["generation"] = generation + 1 if changed_spec else generation
            meta["resourceVersion"] = self._next_version()
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                self._objects[key].delete()
                await self._publish(request.resource, "DELETED", new)
            else:
                self._objects[key].create(new)
                await self._publish(request.resource, "MODIFIED", new)
        return aiohttp.web.json_response(new)


def load_crds() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]


CRD_PLURAL = "customresourcedefinitions"


def establish(emulator: Emulator, crd: dict[str, Any]) -> dict[str, Any]:
    """A CRD written through the API: the API server checks its names, then serves its kind (discovery, storage,
    structural schema) and reports `NamesAccepted` and `Established` in its status (returned) (apiextensions-apiserver's
    naming and establishing controllers; the real server does it a moment later, the emulator at once)."""
    register_crd(emulator, crd)
    now = emulator._now()
    return {**(crd.get("status") or {}), "acceptedNames": crd["spec"]["names"], "conditions": [
        {"type": kind, "status": "True", "reason": reason, "message": "", "lastTransitionTime": now}
        for kind, reason in (("NamesAccepted", "NoConflicts"), ("Established", "InitialNamesAccepted"))]}


def register_crd(emulator: Emulator, crd: dict[str, Any]) -> None:
    """Serve a CRD's resource in discovery, as the API server does once it is established, and store, prune and
    validate its objects by its structural schema."""
    spec = crd["spec"]
    for version in spec["versions"]:
        resource = kmock.resource(spec["group"], version["name"], spec["names"]["plural"])
        emulator.__dict__.setdefault("schemas", {})[resource] = version["schema"]["openAPIV3Schema"]
        emulator.resources[f"{spec['group']}/{version['name']}/{spec['names']['plural']}"] = kmock.ResourceInfo(
            kind=spec["names"]["kind"],
            singular=spec["names"].get("singular"),
            namespaced=spec["scope"] == "Namespaced",
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            shortnames=set(spec["names"].get("shortNames", [])),
            categories=set(spec["names"].get("categories", [])),
            subresources=set(version.get("subresources", {})),
        )


class LoopThread:
    """An event loop in a daemon thread, for servers and operators that must not share the test's loop."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


class KubeServer:
    """An emulated API server on 127.0.0.1 with the built-in kinds and stackyard's CRDs."""

    def __init__(self, crds: bool = True):
        self.thread = LoopThread("kmock")
        self.emulator: Emulator | None = None
        self._server: kmock.Server | None = None
        self._crds = crds
        self.url = ""

    def start(self) -> "KubeServer":
        async def start() -> str:
            self.emulator = Emulator()
            self.emulator.resources.load_bundled()
            if self._crds:
                for crd in load_crds():
                    register_crd(self.emulator, crd)
            await self.emulator.__aenter__()
            self._server = kmock.Server(self.emulator)
            await self._server.__aenter__()
            return str(self._server.url).rstrip("/")

        self.url = self.thread.run(start())
        return self

    def stop(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                await self._server.__aexit__(None, None, None)
            if self.emulator is not None:
                await self.emulator.__aexit__(None, None, None)

        try:
            self.thread.run(stop(), timeout=20)
        finally:
            self.thread.stop()

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the emulator's loop (for direct, thread-safe access to its objects)."""

        async def wrapper() -> T:
            return fn()

        return self.thread.run(wrapper())
