"""Container images for pod VMs: pull from OCI registries, cache as read-only erofs disks.

    from hypervisor.oci import ImageCache, RegistryPolicy, credentials_for

    cache = ImageCache(Path("/var/lib/pacific-lab/oci"),
                       RegistryPolicy(allowed_private=frozenset({"127.0.0.1:5000"}),
                                      insecure=frozenset({"127.0.0.1:5000"})))
    creds = credentials_for(secret_bytes, "127.0.0.1:5000")  # or None
    image = cache.ensure("127.0.0.1:5000/demo/busybox:1.36", creds)
    image.disk, image.config.cmd  # attach the disk read-only; start the container's process

Modules: ``reference`` (parse image names like docker/containerd),
``auth`` (pull secrets, ``WWW-Authenticate``), ``policy`` (which registries
and addresses may be contacted), ``transport`` (pinned HTTP connections),
``manifest`` (manifests, indexes, configs, platform choice), ``registry``
(the Distribution v2 client), ``layers`` (safe layer extraction, whiteouts),
``cache`` (the erofs image cache), ``errors`` (one hierarchy with Kubernetes
reasons).
"""

from hypervisor.oci.auth import Credentials, credentials_for, parse_www_authenticate
from hypervisor.oci.cache import CachedImage, ImageCache, PullPolicy, PullProgress
from hypervisor.oci.errors import (BadCredentials, BadImage, BadLayer, BuildFailed, DigestMismatch,
                                   ImageNeverPull, ImageNotFound, ImagePullError, InvalidImageName,
                                   NoMatchingPlatform, PolicyRefused, RegistryError,
                                   RegistryUnreachable, TooLarge, Unauthorized, UnsupportedImage)
from hypervisor.oci.manifest import ImageConfig, Platform
from hypervisor.oci.policy import RegistryPolicy
from hypervisor.oci.reference import ImageReference, parse_reference
from hypervisor.oci.registry import Limits, RegistryClient, ResolvedImage

__all__ = [
    "BadCredentials", "BadImage", "BadLayer", "BuildFailed", "CachedImage", "Credentials",
    "DigestMismatch", "ImageCache", "ImageConfig", "ImageNeverPull", "ImageNotFound",
    "ImagePullError", "ImageReference", "InvalidImageName", "Limits", "NoMatchingPlatform",
    "Platform", "PolicyRefused", "PullPolicy", "PullProgress", "RegistryClient", "RegistryError",
    "RegistryPolicy", "RegistryUnreachable", "ResolvedImage", "TooLarge", "Unauthorized",
    "UnsupportedImage", "credentials_for", "parse_reference", "parse_www_authenticate",
]
