"""Repository names and token scopes, as Distribution spells them; everything else refused.

A repository name is path components joined by ``/``, each component
``[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`` (Distribution's reference grammar),
255 characters at most. That grammar alone rules out ``..``, ``.``, empty
components and absolute paths. In the lab registry the first component is the
project, which is the namespace: ``dev-team/hello`` lives in project ``dev-team``.

A scope (Docker token spec) is ``type[(class)]:name:actions``; the lab grants
``repository`` scopes (actions ``pull``, ``push``, ``delete``, ``*``) and
``registry:catalog:*`` (administrators only). A scope that does not parse is an
error, not a silently empty grant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_NAME = 255
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
REPOSITORY_ACTIONS = ("pull", "push", "delete")


class InvalidName(ValueError):
    """A repository name, reference or scope that the registry must not see."""


def check_repository(name: str) -> str:
    """``name`` if it is a valid repository name with a project, else ``InvalidName``."""
    if not name or len(name) > MAX_NAME:
        raise InvalidName(f"repository name must be 1 to {MAX_NAME} characters")
    parts = name.split("/")
    if len(parts) < 2:
        raise InvalidName(f'repository "{name[:80]}" must be inside a project: PROJECT/NAME')
    for part in parts:
        if not _COMPONENT.fullmatch(part):
            raise InvalidName(f'invalid repository name "{name[:80]}": component '
                              f'"{part[:40]}" is not [a-z0-9] separated by ".", "_", "__" or "-"')
    return name


def project_of(repository: str) -> str:
    return repository.split("/", 1)[0]


def check_reference(reference: str) -> str:
    """A tag or a sha256 digest."""
    if _TAG.fullmatch(reference) or _DIGEST.fullmatch(reference):
        return reference
    raise InvalidName(f'invalid tag or digest "{reference[:80]}"')


def is_digest(reference: str) -> bool:
    return bool(_DIGEST.fullmatch(reference))


@dataclass(frozen=True)
class Scope:
    type: str  # "repository" or "registry"
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    @property
    def project(self) -> str:
        return project_of(self.name) if self.type == "repository" else ""


def parse_scope(text: str) -> Scope:
    """One ``scope`` parameter of a token request."""
    if len(text) > 512 or any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
        raise InvalidName("malformed scope")
    head, sep, actions = text.rpartition(":")
    rtype, sep2, name = head.partition(":")
    if not sep or not sep2 or not rtype or not name or not actions:
        raise InvalidName(f'malformed scope "{text[:80]}": want TYPE:NAME:ACTIONS')
    wanted = tuple(dict.fromkeys(a for a in actions.split(",") if a))
    if rtype == "registry":
        if name != "catalog" or wanted != ("*",):
            raise InvalidName(f'unsupported scope "{text[:80]}"')
        return Scope("registry", "catalog", ("*",))
    if rtype not in ("repository", "repository(plugin)"):
        raise InvalidName(f'unsupported resource type "{rtype[:40]}" in scope')
    check_repository(name)
    if not wanted or any(a not in (*REPOSITORY_ACTIONS, "*") for a in wanted):
        raise InvalidName(f'unsupported action in scope "{text[:80]}"')
    if "*" in wanted:
        wanted = ("*",)
    return Scope("repository", name, wanted)


def object_name(repository: str) -> str:
    """The Repository object's name for ``PROJECT/PATH``: PATH with ``/`` as ``.``, plus a
    short hash when that is not already a unique DNS subdomain (nested paths, ``_``)."""
    import hashlib

    path = repository.split("/", 1)[1]
    simple = path.replace("/", ".")
    # A plain name is kept unless it could pass for another repository's hashed name.
    if re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,200}[a-z0-9])?", simple) and \
            not re.search(r"-[0-9a-f]{8}$", simple):
        return simple
    digest = hashlib.sha256(repository.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^a-z0-9.-]+", "-", simple).strip(".-")[:200] or "repo"
    return f"{cleaned}-{digest}"
