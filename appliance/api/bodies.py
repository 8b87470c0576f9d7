"""Reading request bodies: size caps, JSON and YAML with nesting and alias-expansion limits."""

from __future__ import annotations

import json
from typing import Any

import yaml

from appliance import errors


#: What YAML's anchors and aliases may expand a document to, in nodes (kube-apiserver
#: accepts aliases too and only bounds their expansion). A document without aliases is
#: bounded by the body's size alone.
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 64


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that bounds nesting while composing and, once a document is composed,
    what its aliases expand it to (nodes and depth), before anything is constructed: a
    billion-laughs body is refused after reading its few hundred bytes."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_EXPANDED_NODES

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        event = self.peek_event()
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > self.max_depth:
                raise yaml.composer.ComposerError(
                    None, None, f"YAML nested more than {self.max_depth} levels",
                    event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):  # type: ignore[no-untyped-def]
        node = super().compose_document()
        if node is not None:
            _check_expansion(node, self.max_nodes, self.max_depth)
        return node


def _check_expansion(root: yaml.Node, max_nodes: int, max_depth: int) -> None:
    """Refuse a composed document whose aliases make it larger than ``max_nodes`` nodes
    (and larger than it is written), deeper than ``max_depth``, or recursive. Each distinct
    node is measured once, so this is linear in the document as written."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, depth)
    open_nodes: set[int] = set()

    def measure(node: yaml.Node, level: int) -> tuple[int, int]:
        key = id(node)
        if key in measured:
            return measured[key]
        if key in open_nodes:
            raise yaml.composer.ComposerError(None, None, "a YAML alias refers to a node "
                                              "that contains it", node.start_mark)
        if level > max_depth:
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases nest it more than {max_depth} levels",
                node.start_mark)
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            measured[key] = (1, 1)
            return measured[key]
        open_nodes.add(key)
        size, depth = 1, 1
        for child in children:
            child_size, child_depth = measure(child, level + 1)
            size, depth = size + child_size, max(depth, child_depth + 1)
            if level + depth > max_depth + 1:
                raise yaml.composer.ComposerError(
                    None, None, f"YAML aliases nest it more than {max_depth} levels",
                    node.start_mark)
            if size > max_nodes and size > len(measured) + len(open_nodes):
                raise yaml.composer.ComposerError(
                    None, None, f"YAML aliases expand it to more than {max_nodes} nodes",
                    node.start_mark)
        open_nodes.discard(key)
        measured[key] = (size, depth)
        return measured[key]

    measure(root, 1)


def load_bounded_yaml(text: str) -> Any:
    """One YAML document, with nesting and alias expansion bounded (``yaml.YAMLError``
    otherwise): for any text a user gave."""
    return yaml.load(text, Loader=_BoundedLoader)


def parse_yaml(text: str) -> Any:
    """A request body's YAML; a Status 400 when it cannot be used."""
    try:
        return load_bounded_yaml(text)
    except yaml.YAMLError as exc:
        raise errors.bad_request(f"error converting YAML to JSON: {exc}") from exc


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise errors.bad_request("the object is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.bad_request(
            f"couldn't get version/kind; json parse error: {exc}") from exc


def parse_body(raw: bytes, content_type: str) -> Any:
    if not raw.strip():
        raise errors.bad_request("the request body is empty")
    media = content_type.split(";")[0].strip().lower()
    if media in ("application/yaml", "application/apply-patch+yaml", "application/x-yaml",
                 "text/yaml"):
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise errors.bad_request("the request body is not valid UTF-8") from exc
        return parse_yaml(text)
    return parse_json(raw)


#: Bodies up to this many times the limit are read and discarded before the
#: 413 answer, so that the client, still sending, gets to read it.
DRAIN_FACTOR = 8


def read_limited(stream: Any, content_length: int | None, limit: int) -> bytes:
    if content_length is not None and content_length > limit:
        if content_length <= DRAIN_FACTOR * limit:
            left = content_length
            while left > 0:
                chunk = stream.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
        raise errors.too_large(limit)
    data = stream.read(limit + 1) if content_length is None else stream.read(content_length)
    if len(data) > limit:
        raise errors.too_large(limit)
    return bytes(data)
