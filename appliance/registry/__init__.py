"""The lab registry: one CNCF Distribution per lab, a project per namespace (Harbor's role).

How the pieces fit (see docs/registry.md):

- ``daemon``: runs ``docker-registry serve`` as a child of the host service,
  restarts it if it dies, and switches it to read-only for garbage collection.
  It listens on a unix socket in the state directory; nothing else reaches it.
- ``front``: the registry's TLS endpoint (``lab registry url``, port
  ``registry_port``), in the host service. It serves the token endpoint
  (``/service/token``, Distribution's token protocol), refuses bad names,
  oversized manifests and pushes over the namespace's storage quota, and passes
  everything else to Distribution, which checks every request's token itself.
- ``tokens``: the per-install signing key and the JWTs it signs.
- ``access``: who gets which actions: RBAC verbs ``pull``/``push``/``delete`` on
  the namespace's ``repositories`` (view, edit, owner); administrators all;
  host agents pull for the pods placed on them; anonymous nothing.
- ``storage``: reads Distribution's filesystem layout (repositories, tags, sizes)
  and removes a deleted repository's directory, never following links.
- ``controller``: keeps the ``Repository`` objects (``kubectl get repo``) in step
  with the storage and deletes a repository's manifests when its object is deleted
  (so also when its namespace is), then collects garbage.
"""

from __future__ import annotations

import socket

from appliance.settings import Settings

#: The ``service`` of Distribution's token protocol, and the tokens' issuer.
SERVICE = "pacific-lab-registry"
ISSUER = "pacific-lab-supervisor"
TOKEN_PATH = "/service/token"


def registry_host(settings: Settings) -> str:
    """``HOST:PORT`` that users push to and pods pull from (what `lab registry url` prints)."""
    from appliance.service import primary_address

    return f"{settings.public_host or primary_address()}:{settings.registry_port}"


def local_names(settings: Settings) -> set[str]:
    """Every ``host:port`` that reaches the lab registry from this host."""
    from appliance.service import local_addresses, primary_address

    hosts = {settings.public_host, primary_address(), socket.gethostname(), socket.getfqdn(),
             "localhost", *local_addresses()}
    return {f"{h.lower()}:{settings.registry_port}" for h in hosts if h}


def is_lab_registry(settings: Settings, hostport: str) -> bool:
    """True when an image's registry (``host[:port]``) is the lab registry."""
    return settings.registry_enabled and hostport.lower() in local_names(settings)
