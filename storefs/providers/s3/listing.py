"""ListObjectsV2, CopyObject and DeleteObjects answers read from their XML (and a DeleteObjects body): no network."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import unquote_plus

from .codec import parse_rfc3339_ns, strip_etag

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
#: what the regular-expression reading of a listing page leaves to the XML parser: CDATA, comments, DTDs,
#: processing instructions past the declaration, prefixed element names
_NOT_PLAIN = re.compile(rb"<!|<\?(?!xml[ ?])|</?[A-Za-z_][\w.-]*:")
_ROOT = re.compile(rb"\s*(?:<\?xml[^>]*\?>\s*)?<ListBucketResult[\s>]")
_TOP_FIELD = re.compile(rb"<(IsTruncated|NextContinuationToken|EncodingType)>([^<]*)</\1>")
_PREFIX = re.compile(rb"<CommonPrefixes>\s*<Prefix>([^<]*)</Prefix>\s*</CommonPrefixes>")
#: an object's start, and its four elements this reader takes (each text up to its closing tag)
_OBJECT_FIELD = re.compile(rb"<(Contents|Key|LastModified|ETag|Size)>([^<]*)")


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
    """A ListBucketResult, names decoded when the server URL-encoded them; ValueError when unreadable.

    A page in the plain form every S3 server writes (no CDATA, comments, DTD or prefixed names) is read
    by a few regular expressions, about four times faster than building its tree (README, "Big folders");
    any other page, or one the expressions cannot read whole, by the XML parser."""
    fast = _scan_list_page(body) if not _NOT_PLAIN.search(body) else None
    return fast if fast is not None else _parse_list_tree(body)


def _text(raw: bytes) -> str:
    """An element's text: UTF-8 with XML's character references (&amp;, &#34;) resolved."""
    text = raw.decode()
    if "&" not in text:
        return text
    text = text.replace("&#34;", '"').replace("&quot;", '"')  # an ETag's quotes: nearly every entry has them
    return html.unescape(text) if "&" in text else text


def _scan_list_page(body: bytes) -> ListPage | None:
    """parse_list_page by regular expressions; None where the page is not what they read (the parser then)."""
    if not _ROOT.match(body):
        return None
    top = {m.group(1): m.group(2) for m in _TOP_FIELD.finditer(body)}
    try:
        encoded = _text(top.get(b"EncodingType", b"")).lower() == "url"

        def name(raw: bytes) -> str:
            return unquote_plus(_text(raw)) if encoded else _text(raw)

        prefixes = [name(m.group(1)) for m in _PREFIX.finditer(body)]
        objects: list[Listed] = []
        times: dict[bytes, int] = {}  # objects put together share their LastModified
        fields: dict[bytes, bytes] | None = None
        # one pass over every <Contents> and the four elements read from each (no other element has their names)
        for tag, value in [*_OBJECT_FIELD.findall(body), (b"Contents", b"")]:
            if tag != b"Contents":
                if fields is None:
                    return None  # one of the four outside any Contents
                fields[tag] = value
                continue
            if fields is not None:
                key = fields.get(b"Key")
                if key is None:
                    return None
                modified = fields.get(b"LastModified", b"")
                modified_ns = times.get(modified)
                if modified_ns is None:
                    modified_ns = times[modified] = _timestamp_ns(_text(modified))
                etag = fields.get(b"ETag")
                objects.append(Listed(key=name(key), size=int(fields.get(b"Size") or 0), modified_ns=modified_ns,
                                      etag=strip_etag(_text(etag)) if etag is not None else None))
            fields = {}
    except (ValueError, UnicodeDecodeError):
        return None  # the parser says what is wrong
    if len(objects) != body.count(b"<Contents>") or len(prefixes) != body.count(b"<CommonPrefixes>"):
        return None
    page = ListPage(prefixes=prefixes, objects=objects)
    if top.get(b"IsTruncated") == b"true":
        page.next_token = _text(top.get(b"NextContinuationToken", b"")) or None
    return page


def _parse_list_tree(body: bytes) -> ListPage:
    """parse_list_page by the XML parser: any well-formed page, and the reason for an unreadable one."""
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
