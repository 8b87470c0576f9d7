"""Image references parse and normalise as docker/containerd do (distribution/reference)."""

from __future__ import annotations

import pytest

from hypervisor.oci import InvalidImageName, parse_reference
from hypervisor.oci.errors import INVALID_IMAGE_NAME

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "expected"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/busybox:1.36", "docker.io/library/busybox:1.36"),
    ("docker.io/library/busybox:1.36", "docker.io/library/busybox:1.36"),
    ("foo/bar", "docker.io/foo/bar:latest"),
    ("foo/bar/baz:v1", "docker.io/foo/bar/baz:v1"),
    ("localhost/foo", "localhost/foo:latest"),
    ("localhost:5000/foo/bar:tag", "localhost:5000/foo/bar:tag"),
    ("127.0.0.1:5000/demo/busybox:1.36", "127.0.0.1:5000/demo/busybox:1.36"),
    ("[::1]:5000/demo/busybox", "[::1]:5000/demo/busybox:latest"),
    ("registry.example.com/a__b/c-d--e/f.g_h:T.a-g_1", "registry.example.com/a__b/c-d--e/f.g_h:T.a-g_1"),
    ("Example.COM/foo", "Example.COM/foo:latest"),  # a capitalised first part is a host
    (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
    (f"busybox:1.36@{DIGEST}", f"docker.io/library/busybox:1.36@{DIGEST}"),
    ("sha256:abc", "docker.io/library/sha256:abc"),  # a repository called sha256, tag abc
])
def test_normalised(text: str, expected: str) -> None:
    assert str(parse_reference(text)) == expected


def test_parts_and_registry() -> None:
    ref = parse_reference("nginx:1.25")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("docker.io", "library/nginx", "1.25", None)
    assert ref.registry == "registry-1.docker.io"
    assert ref.name == "docker.io/library/nginx"
    assert ref.manifest_ref == "1.25"
    local = parse_reference("127.0.0.1:5000/demo/busybox")
    assert local.registry == "127.0.0.1:5000"


def test_digest_decides_what_is_pulled() -> None:
    ref = parse_reference(f"busybox:1.36@{DIGEST}")
    assert ref.tag == "1.36" and ref.digest == DIGEST
    assert ref.manifest_ref == DIGEST
    assert parse_reference(f"busybox@{DIGEST}").tag is None
    assert str(ref.with_digest(DIGEST)) == f"docker.io/library/busybox@{DIGEST}"


@pytest.mark.parametrize(("text", "words"), [
    ("", "at least one component"),
    (" busybox", "whitespace"),
    ("busybox\n", "whitespace"),
    ("a" * 64 + "0" * 0, "64-byte hexadecimal"),
    ("0123456789abcdef" * 4, "64-byte hexadecimal"),
    ("foo/Bar", "must be lowercase"),
    ("UPPER", "must be lowercase"),
    ("example.com/Foo/bar", "must be lowercase"),
    ("busybox:", "invalid reference format"),
    (":tag", "invalid reference format"),
    ("foo//bar", "invalid reference format"),
    ("foo/bar/", "invalid reference format"),
    ("a-/b", "invalid reference format"),
    ("-a/b", "invalid reference format"),
    ("busybox:" + "t" * 129, "invalid reference format"),
    ("busybox:-tag", "invalid reference format"),
    ("busybox@sha256:abc", "invalid reference format"),
    ("busybox@sha256:" + "AB" * 32, "invalid checksum digest"),
    ("busybox@sha256:" + "ab" * 33, "invalid checksum digest"),
    ("busybox@md5:" + "ab" * 16, "unsupported digest algorithm"),
    ("example.com:port/foo", "invalid reference format"),
    ("ex_ample.com/foo", "invalid reference format"),
    ("busybox\x00", "invalid reference format"),
    ("büsybox", "invalid reference format"),
])
def test_invalid(text: str, words: str) -> None:
    with pytest.raises(InvalidImageName) as info:
        parse_reference(text)
    assert words in str(info.value)
    assert info.value.reason == INVALID_IMAGE_NAME == "InvalidImageName"


def test_length_limits() -> None:
    assert parse_reference("busybox:" + "t" * 128).tag == "t" * 128
    path = "/".join(["abcdefghi"] * 24)  # 239 characters
    assert parse_reference(f"example.com/{path}").path == path
    with pytest.raises(InvalidImageName, match="255 characters"):
        parse_reference(f"example.com/{path}/more-than-enough")


def test_sha384_and_sha512_digests() -> None:
    for algorithm, length in (("sha384", 96), ("sha512", 128)):
        digest = f"{algorithm}:" + "c" * length
        assert parse_reference(f"busybox@{digest}").digest == digest
