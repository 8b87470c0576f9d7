"""One exception hierarchy for pulling images, each error with a Kubernetes reason.

The host agent turns an ``ImagePullError`` into a container status: ``reason``
is what kubelet would show (``ErrImagePull``, ``InvalidImageName``,
``ErrImageNeverPull``; the agent itself turns repeated ``ErrImagePull`` into
``ImagePullBackOff``), ``code`` says what went wrong in one word for logs,
metrics and tests, and ``str(error)`` is one readable line for the pod's
status message. ``temporary`` says whether trying again later may help
without anyone changing anything (an unreachable registry), as opposed to a
problem only a spec or registry change can clear (an unknown tag).

No message ever carries a password, a token or a signed URL's query string:
messages are built from our own words, the image reference and sanitised
fragments of what the registry said.
"""

from __future__ import annotations

ERR_IMAGE_PULL = "ErrImagePull"
INVALID_IMAGE_NAME = "InvalidImageName"
ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"


class ImagePullError(Exception):
    """Base of every error raised by ``hypervisor.oci``."""

    reason: str = ERR_IMAGE_PULL
    code: str = "PullFailed"
    temporary: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImageName(ImagePullError):
    """The reference cannot be parsed; only a changed pod spec can fix it."""

    reason = INVALID_IMAGE_NAME
    code = "InvalidImageName"


class ImageNeverPull(ImagePullError):
    """The pull policy is ``Never`` and the image is not in the cache."""

    reason = ERR_IMAGE_NEVER_PULL
    code = "NeverPull"


class ImageNotFound(ImagePullError):
    """The registry says the repository, tag, digest or blob does not exist."""

    code = "NotFound"


class Unauthorized(ImagePullError):
    """Credentials were missing, wrong, or not allowed to pull this repository."""

    code = "Unauthorized"


class RegistryUnreachable(ImagePullError):
    """The registry could not be reached (DNS, connection refused, timeout, TLS)."""

    code = "Unreachable"
    temporary = True


class RegistryError(ImagePullError):
    """The registry answered, but not as the distribution protocol says it should."""

    code = "RegistryError"

    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class PolicyRefused(ImagePullError):
    """The registry policy forbids this destination (private address, plain HTTP, ...)."""

    code = "PolicyRefused"


class NoMatchingPlatform(ImagePullError):
    """The image has no variant for this host's platform (linux/amd64)."""

    code = "NoMatchingPlatform"


class DigestMismatch(ImagePullError):
    """Content did not hash to the digest that names it: corrupted or tampered with."""

    code = "DigestMismatch"


class TooLarge(ImagePullError):
    """A manifest, config, layer or the unpacked image exceeds its configured limit."""

    code = "TooLarge"


class UnsupportedImage(ImagePullError):
    """A well-formed image in a format this code does not handle (schema 1, zstd without zstd)."""

    code = "Unsupported"


class BadImage(ImagePullError):
    """A manifest or config that is not valid JSON of the expected shape."""

    code = "BadImage"


class BadLayer(ImagePullError):
    """A layer archive that is malformed or tries to escape or trick the extraction."""

    code = "BadLayer"


class BadCredentials(ImagePullError):
    """An image pull secret that cannot be read (not JSON, bad base64, no password)."""

    code = "BadSecret"


class BuildFailed(ImagePullError):
    """The image was fetched, but the local disk image could not be made (disk full, mkfs)."""

    code = "BuildFailed"
    temporary = True
