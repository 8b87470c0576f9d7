"""Who may do what in the lab registry: the token endpoint's decisions.

Authentication is HTTP Basic with a lab user's password or one of their API
tokens (``lab login``; ``lab registry login`` writes exactly that), or a Bearer
API token. Authorisation is RBAC, so a namespace's role bindings are the
project's members with no second list to keep in step:

========  =====================================================================
action    RBAC verb on ``repositories.registry.pacific.lab`` in the namespace
========  =====================================================================
pull      ``pull``   (view, edit, owner)
push      ``push``   (edit, owner); never into a namespace being deleted
delete    ``delete`` (owner)
========  =====================================================================

Administrators hold every verb. A host agent (``system:nodes``) may pull from a
namespace's project while a pod of that namespace is placed on it, and nothing
else: its credentials are no key to every project. Anonymous callers get nothing.
A scope that is refused in part is granted the rest, as the token protocol
says; every refusal is logged, without credentials.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

from appliance.auth import users
from appliance.auth.rbac import Attributes
from appliance.auth.users import UserInfo
from appliance.kinds.repositories import GROUP
from appliance.objects import ObjectService
from appliance.registry.names import REPOSITORY_ACTIONS, Scope
from appliance.store.repo import Key, ReadTxn

LOG = logging.getLogger(__name__)
NODE_PREFIX = "system:node:"


class Unauthenticated(Exception):
    """Credentials were given and are wrong (not the same as giving none)."""


@dataclass(frozen=True)
class Decision:
    granted: tuple[Scope, ...]
    refused: tuple[str, ...]  # log-safe reasons


def parse_basic(header: str) -> tuple[str, str] | None:
    """``(user, secret)`` of a Basic Authorization header; None when it is not Basic."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unauthenticated("malformed basic credentials") from exc
    if not sep or not user:
        raise Unauthenticated("malformed basic credentials")
    return user, secret


def password_user(header: str) -> str | None:
    """The user name of Basic credentials that carry a password (what a guesser tries), for
    the login throttle; None for anything else, lab tokens included: nobody guesses one,
    and an agent retrying with an expired token must not lock itself out of the next. A
    token is the secret, or what follows its last colon (see :meth:`Access.authenticate`)."""
    try:
        basic = parse_basic(header)
    except Unauthenticated:
        return None
    if basic is None:
        return None
    name, secret = basic
    return None if secret.rpartition(":")[2].startswith(users.TOKEN_PREFIX) else name


class Access:
    def __init__(self, service: ObjectService) -> None:
        self.service = service

    def authenticate(self, authorization: str) -> UserInfo | None:
        """The caller, None for anonymous; ``Unauthenticated`` for wrong credentials."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        with self.service.store.read() as txn:
            if scheme.lower() == "bearer":
                user = users.resolve_token(txn.connection, value.strip())
                if user is None:
                    raise Unauthenticated("invalid or expired token")
                return user
            basic = parse_basic(authorization)
            if basic is None:
                raise Unauthenticated(f"unsupported authorization scheme {scheme[:20]!r}")
            name, secret = basic
            head, _, tail = secret.rpartition(":")
            if head and tail.startswith(users.TOKEN_PREFIX):
                # A user name with colons (a host agent's "system:node:NAME") cannot be
                # told from the secret in Basic credentials: the token may be what follows
                # the last colon, if it belongs to exactly that user.
                user = users.resolve_token(txn.connection, tail)
                if user is not None and user.name == f"{name}:{head}":
                    return user
            if secret.startswith(users.TOKEN_PREFIX):
                user = users.resolve_token(txn.connection, secret)
                if user is None or user.name != name:
                    raise Unauthenticated(f"invalid or expired token for {name[:64]!r}")
                return user
            user = users.authenticate(txn.session, name, secret)
            if user is None:
                raise Unauthenticated(f"invalid user name or password for {name[:64]!r}")
            return user

    def decide(self, user: UserInfo | None, scopes: list[Scope]) -> Decision:
        granted: list[Scope] = []
        refused: list[str] = []
        with self.service.store.read() as txn:
            for scope in scopes:
                actions, why = self._actions(txn, user, scope)
                granted.append(Scope(scope.type, scope.name, actions))
                if why:
                    refused.append(f"{scope}: {why}")
        return Decision(tuple(granted), tuple(refused))

    def _actions(self, txn: ReadTxn, user: UserInfo | None, scope: Scope
                 ) -> tuple[tuple[str, ...], str]:
        if user is None:
            return (), "anonymous access is not allowed"
        if scope.type == "registry":
            if self.service.can(txn, Attributes(user, "list", GROUP, "repositories")):
                return ("*",), ""
            return (), "the catalog is for administrators"
        wanted = REPOSITORY_ACTIONS if "*" in scope.actions else scope.actions
        ns = txn.get(Key("", "namespaces", "", scope.project))
        if ns is None:
            return (), f'no project "{scope.project}"'
        if users.NODES in user.groups:
            return self._node_actions(txn, user, scope, wanted)
        verbs = {"pull": "pull", "push": "push", "delete": "delete"}
        allowed = tuple(a for a in wanted if self.service.can(
            txn, Attributes(user, verbs[a], GROUP, "repositories", namespace=scope.project)))
        if "push" in allowed and ns["metadata"].get("deletionTimestamp"):
            allowed = tuple(a for a in allowed if a != "push")
            return allowed, f'namespace "{scope.project}" is being deleted'
        missing = [a for a in wanted if a not in allowed]
        if missing:
            return allowed, f"{user.name} may not {','.join(missing)} in {scope.project}"
        return allowed, ""

    def _node_actions(self, txn: ReadTxn, user: UserInfo, scope: Scope,
                      wanted: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
        node = user.name.removeprefix(NODE_PREFIX)
        placed = any((p.get("spec") or {}).get("nodeName") == node
                     for p in txn.iterate("", "pods", scope.project))
        if not user.name.startswith(NODE_PREFIX) or not placed:
            return (), f"{user.name} has no pod of {scope.project}"
        if wanted != ("pull",):
            return (("pull",) if "pull" in wanted else ()), f"{user.name} may only pull"
        return ("pull",), ""
