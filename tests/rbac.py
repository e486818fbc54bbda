"""RBAC and impersonation as the Kubernetes API server evaluates them, for the emulator (tests/emulator.py).

Only what stackyard's tests rely on, each rule from the API server's own behaviour:

- Impersonation (https://kubernetes.io/docs/reference/access-authn-authz/authentication/#user-impersonation;
  k8s.io/apiserver/pkg/endpoints/filters/impersonation.go): `Impersonate-User` needs the verb `impersonate`
  on `users` (cluster-wide, by name), or for a service account user `system:serviceaccount:<ns>:<name>` on
  `serviceaccounts` in `<ns>` (by name); each `Impersonate-Group` needs `impersonate` on `groups`. A service
  account impersonated without groups gets its fixed groups (`system:serviceaccounts`,
  `system:serviceaccounts:<ns>`), and every impersonated user `system:authenticated`. A refusal is a 403
  naming the caller and the impersonated name.
- Authorization (https://kubernetes.io/docs/reference/access-authn-authz/rbac/): a request is allowed when a
  rule of a ClusterRole bound by a ClusterRoleBinding, or of a Role or ClusterRole bound by a RoleBinding in
  the request's namespace, names the subject (user, group or service account) and covers the API group, the
  resource (with its subresource: `deployments/status`), the verb and, when the rule lists resourceNames,
  the object's name. Verbs: GET of one object `get`, of a collection `list` (`watch` with `?watch`), POST
  `create`, PUT `update`, PATCH `patch`, DELETE `delete`. A server-side apply (a PATCH) of an object that
  does not exist yet also needs `create` (k8s.io/apiserver/pkg/endpoints/handlers/patch.go authorizes the
  create it turns into). A refusal is a 403: `<resource> "<name>" is forbidden: User "<user>" cannot <verb>
  resource "<resource>" in API group "<group>" in the namespace "<ns>"`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RBAC_GROUP = "rbac.authorization.k8s.io"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()


def service_account(namespace: str, name: str) -> User:
    return User(f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}",
                ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"))


def allows(rules: Iterable[Mapping[str, Any]], group: str, resource: str, verb: str, name: str | None = None) -> bool:
    """Whether any rule covers (group, resource, verb) and, when it lists resourceNames, this name."""
    for rule in rules:
        groups, resources, verbs = rule.get("apiGroups") or [], rule.get("resources") or [], rule.get("verbs") or []
        names = rule.get("resourceNames") or []
        if ((group in groups or "*" in groups) and (resource in resources or "*" in resources)
                and (verb in verbs or "*" in verbs) and (not names or name in names)):
            return True
    return False


# (plural, namespace or None, name) -> the stored object, or None when it does not exist
Lookup = Callable[[str, str | None, str], Mapping[str, Any] | None]
# plural -> every stored object of that RBAC kind, as (namespace or None, object)
Listing = Callable[[str], list[tuple[str | None, Mapping[str, Any]]]]


@dataclass
class Authorizer:
    """Who the caller is (its own rules, `None` for cluster-admin), and the cluster's RBAC objects."""

    caller: User
    caller_rules: list[dict[str, Any]] | None
    lookup: Lookup
    listing: Listing
    denials: list[str] = field(default_factory=list)
    allowed: list[tuple[str, str, str, str | None]] = field(default_factory=list)  # (user, verb, resource, name)

    def _bound(self, subject: Mapping[str, Any], user: User) -> bool:
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "ServiceAccount":
            return user.name == f"{SERVICE_ACCOUNT_PREFIX}{subject.get('namespace')}:{name}"
        if kind == "User":
            return user.name == name
        if kind == "Group":
            return name in user.groups
        return False

    def rules(self, user: User, namespace: str | None) -> list[dict[str, Any]] | None:
        """The rules `user` holds in `namespace` (cluster-wide ones with None): what the bindings stored in the
        cluster grant it, and for the caller its own rules besides; None: everything (the caller as admin)."""
        found: list[dict[str, Any]] = []
        if user == self.caller:
            if self.caller_rules is None:
                return None
            found.extend(self.caller_rules)
        bindings = [(None, b) for _, b in self.listing("clusterrolebindings")]
        if namespace is not None:
            bindings += [(ns, b) for ns, b in self.listing("rolebindings") if ns == namespace]
        for binding_namespace, binding in bindings:
            if not any(self._bound(s, user) for s in binding.get("subjects") or ()):
                continue
            ref = binding.get("roleRef") or {}
            role = (self.lookup("clusterroles", None, ref.get("name", "")) if ref.get("kind") == "ClusterRole"
                    else self.lookup("roles", binding_namespace, ref.get("name", "")))
            found.extend((role or {}).get("rules") or [])
        return found

    def can(self, user: User, verb: str, group: str, resource: str, namespace: str | None,
            name: str | None = None) -> bool:
        rules = self.rules(user, namespace)
        return rules is None or allows(rules, group, resource, verb, name)

    def forbidden(self, user: User, verb: str, group: str, resource: str, namespace: str | None,
                  name: str | None) -> str:
        """The API server's message for a refusal (also kept in `denials`)."""
        subject = f'{resource} "{name}"' if name else resource
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        message = (f'{subject} is forbidden: User "{user.name}" cannot {verb} resource "{resource}" in API group'
                   f' "{group}"{where}')
        self.denials.append(message)
        return message

    def impersonated(self, user_header: str | None, group_headers: list[str]) -> tuple[User, str | None]:
        """(the user a request acts as, a refusal message or None) for its Impersonate-* headers."""
        if not user_header:
            return self.caller, None
        if user_header.startswith(SERVICE_ACCOUNT_PREFIX):
            namespace, _, name = user_header[len(SERVICE_ACCOUNT_PREFIX):].partition(":")
            if not self.can(self.caller, "impersonate", "", "serviceaccounts", namespace, name):
                return self.caller, self.forbidden(self.caller, "impersonate", "", "serviceaccounts", namespace, name)
            acting = service_account(namespace, name)
        else:
            if not self.can(self.caller, "impersonate", "", "users", None, user_header):
                return self.caller, self.forbidden(self.caller, "impersonate", "", "users", None, user_header)
            acting = User(user_header, ("system:authenticated",))
        for group in group_headers:
            if not self.can(self.caller, "impersonate", "", "groups", None, group):
                return self.caller, self.forbidden(self.caller, "impersonate", "", "groups", None, group)
        if group_headers:
            acting = User(acting.name, (*group_headers, "system:authenticated"))
        return acting, None
