"""Reading request bodies: size caps, JSON and YAML with nesting and alias limits."""

from __future__ import annotations

import json
from typing import Any

import yaml

from appliance import errors


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases (billion-laughs) and deep nesting."""

    max_depth = 64

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not allowed",
                                              event.start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(None, None, "YAML anchors are not allowed",
                                              event.start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > self.max_depth:
                raise yaml.composer.ComposerError(
                    None, None, f"YAML nested more than {self.max_depth} levels",
                    event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
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
