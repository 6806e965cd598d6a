"""ListObjectsV2, CopyObject and DeleteObjects answers read from their XML (and a DeleteObjects body): no network."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import unquote_plus

from .codec import parse_rfc3339_ns, strip_etag

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class Listed(NamedTuple):
    """One object of a listing page (full key, as stored in the bucket); a tuple: thousands are made per listing."""

    key: str
    size: int
    modified_ns: int  # LastModified in integer nanoseconds (0 when missing)
    etag: str | None


@dataclass
class ListPage:
    """One ListObjectsV2 page: common prefixes, objects, and the token of the next page (None at the end)."""

    prefixes: list[str] = field(default_factory=list)
    objects: list[Listed] = field(default_factory=list)
    next_token: str | None = None


def _root(body: bytes, tag: str) -> tuple[ET.Element, str]:
    """The document's root and its namespace prefix; ValueError unless the root is tag."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise ValueError(f"unreadable XML ({e})") from e
    ns = _NS if root.tag.startswith(_NS) else ""
    if root.tag != ns + tag:
        raise ValueError(f"{tag} expected, got {root.tag!r}")
    return root, ns


def _timestamp_ns(text: str | None) -> int:
    """LastModified (RFC 3339, milliseconds) in ns; ValueError when unreadable, 0 when missing."""
    if not text:
        return 0
    found = parse_rfc3339_ns(text)
    if found is None:
        raise ValueError(f"unreadable LastModified {text[:40]!r}")
    return found


def parse_list_page(body: bytes) -> ListPage:
    """A ListBucketResult, names decoded when the server URL-encoded them; ValueError when unreadable."""
    root, ns = _root(body, "ListBucketResult")
    encoded = (root.findtext(ns + "EncodingType") or "").lower() == "url"

    def name(text: str | None) -> str:
        return unquote_plus(text or "") if encoded else (text or "")

    try:
        page = ListPage(
            prefixes=[name(cp.findtext(ns + "Prefix")) for cp in root.iter(ns + "CommonPrefixes")],
            objects=[Listed(key=name(c.findtext(ns + "Key")), size=int(c.findtext(ns + "Size") or 0),
                            modified_ns=_timestamp_ns(c.findtext(ns + "LastModified")),
                            etag=strip_etag(c.findtext(ns + "ETag")))
                     for c in root.iter(ns + "Contents")])
    except ValueError as e:
        raise ValueError(f"unreadable listing entry ({e})") from e
    if root.findtext(ns + "IsTruncated") == "true":
        page.next_token = root.findtext(ns + "NextContinuationToken") or None
    return page


def parse_delete_result(body: bytes) -> list[tuple[str, str]]:
    """(key, error code) of every object a DeleteObjects request could not delete; ValueError when unreadable."""
    root, ns = _root(body, "DeleteResult")
    return [(e.findtext(ns + "Key") or "", e.findtext(ns + "Code") or "") for e in root.iter(ns + "Error")]


def delete_request(keys: Sequence[str]) -> bytes:
    """The body of a quiet DeleteObjects request for full keys."""
    root = ET.Element("Delete")
    ET.SubElement(root, "Quiet").text = "true"
    for key in keys:
        ET.SubElement(ET.SubElement(root, "Object"), "Key").text = key
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body


def copy_etag(body: bytes) -> str | None:
    """The ETag of a CopyObjectResult (quotes removed); None when the answer has none."""
    try:
        root, ns = _root(body, "CopyObjectResult")
    except ValueError:
        return None
    return strip_etag(root.findtext(ns + "ETag"))
