"""Listing pages read by regular expressions (storefs.providers.s3.listing): whatever a server writes, the
answer is the XML parser's, and a page the expressions do not read whole goes to the parser."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storefs.providers.s3 import listing
from storefs.providers.s3.listing import _parse_list_tree, _scan_list_page, parse_list_page

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# XML 1.0 cannot carry most control characters: a server URL-encodes such keys (EncodingType url)
xml_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r",
                          min_codepoint=0x20)
keys = st.text(xml_chars, min_size=1, max_size=40)


def page(objects: list[tuple[str, int, str, str]], prefixes: list[str], *, encoded: bool, ns: bool,
         aws_order: bool, token: str | None = None) -> bytes:
    """A ListBucketResult as a server writes it (ElementTree escapes the text)."""
    root = ET.Element("ListBucketResult", {"xmlns": NS} if ns else {})
    ET.SubElement(root, "Name").text = "bucket"
    ET.SubElement(root, "Prefix").text = "a/"
    ET.SubElement(root, "IsTruncated").text = "true" if token else "false"
    if token:
        ET.SubElement(root, "NextContinuationToken").text = token

    def name(k: str) -> str:
        return quote(k, safe="/") if encoded else k
    for key, size, modified, etag in objects:
        c = ET.SubElement(root, "Contents")
        order = ["Key", "LastModified", "ETag", "Size", "StorageClass"] if aws_order else \
            ["Key", "ETag", "Size", "StorageClass", "LastModified"]
        values = {"Key": name(key), "LastModified": modified, "ETag": f'"{etag}"', "Size": str(size),
                  "StorageClass": "STANDARD"}
        for field in order:
            ET.SubElement(c, field).text = values[field]
        if aws_order:
            owner = ET.SubElement(c, "Owner")
            ET.SubElement(owner, "ID").text = "x<y>"
    for p in prefixes:
        ET.SubElement(ET.SubElement(root, "CommonPrefixes"), "Prefix").text = name(p)
    if encoded:
        ET.SubElement(root, "EncodingType").text = "url"
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


@settings(max_examples=150, deadline=None)
@given(objects=st.lists(st.tuples(keys, st.integers(0, 2**50), st.sampled_from(
           ["2026-12-03T04:31:18Z", "2026-12-03T04:31:18.123Z", "1999-01-01T00:00:00.000Z"]),
           st.text("0123456789abcdef-", min_size=0, max_size=34)), max_size=8),
       prefixes=st.lists(keys, max_size=4), encoded=st.booleans(), ns=st.booleans(), aws_order=st.booleans(),
       token=st.one_of(st.none(), st.text(xml_chars, min_size=1, max_size=20)))
def test_the_expressions_read_what_the_parser_reads(objects, prefixes, encoded, ns, aws_order, token):
    body = page(objects, prefixes, encoded=encoded, ns=ns, aws_order=aws_order, token=token)
    fast = _scan_list_page(body)
    assert fast is not None  # a plain page is read by the expressions
    assert fast == _parse_list_tree(body)


def test_what_seaweedfs_writes():
    body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b'<Name>xxx</Name><Prefix>a/</Prefix><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter>'
            b'<IsTruncated>true</IsTruncated><NextContinuationToken>tok&amp;1</NextContinuationToken>'
            b'<Contents><Key>a/b%26c.txt</Key><ETag>&#34;c20ad4d7&#34;</ETag><Size>2</Size>'
            b'<StorageClass>STANDARD</StorageClass><LastModified>2026-12-03T04:31:18Z</LastModified></Contents>'
            b'<Contents><Key>a/%C3%BC%01.png</Key><ETag>&#34;e1&#34;</ETag><Size>7</Size>'
            b'<LastModified>2026-12-03T04:31:18Z</LastModified></Contents>'
            b'<CommonPrefixes><Prefix>a/sub%20x/</Prefix></CommonPrefixes><EncodingType>url</EncodingType>'
            b'<KeyCount>3</KeyCount></ListBucketResult>')
    got = _scan_list_page(body)
    assert got is not None and got == _parse_list_tree(body)
    assert [o.key for o in got.objects] == ["a/b&c.txt", "a/\u00fc\x01.png"]
    assert [o.etag for o in got.objects] == ["c20ad4d7", "e1"]
    assert got.prefixes == ["a/sub x/"] and got.next_token == "tok&1"


@pytest.mark.parametrize("odd", [
    b"<Contents><Key><![CDATA[a/x<y]]></Key><Size>1</Size></Contents>",  # CDATA
    b"<!-- a comment --><Contents><Key>a/x</Key><Size>1</Size></Contents>",
    b"<Contents><s3:Key xmlns:s3='urn:x'>a/x</s3:Key><Key>a/y</Key><Size>1</Size></Contents>",  # prefixed name
])
def test_a_page_the_expressions_do_not_read_goes_to_the_parser(odd, monkeypatch):
    body = b"<ListBucketResult><IsTruncated>false</IsTruncated>" + odd + b"</ListBucketResult>"
    used: list[bytes] = []
    real = listing._parse_list_tree
    monkeypatch.setattr(listing, "_parse_list_tree", lambda b: (used.append(b), real(b))[1])
    got = parse_list_page(body)
    assert used == [body] and got == real(body)


@pytest.mark.parametrize("bad", [
    b"<Error><Code>AccessDenied</Code></Error>",
    b"<ListBucketResult><Contents><Key>a</Key><Size>x</Size></Contents></ListBucketResult>",
    b"not xml",
])
def test_an_unreadable_page_is_refused_with_the_parser_s_reason(bad):
    with pytest.raises(ValueError):
        parse_list_page(bad)
