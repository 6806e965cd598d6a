"""Config of the policies: layout.content_types, tenant / with_tenant, routing rules (first match, size bounds)."""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap

import pytest

from storefs.config import Config, MiB, RoutingRule, load_config, with_tenant
from storefs.errors import ConfigError

BASE = """
default_provider: local
providers:
  local: {type: local, base_path: DATA}
  s3: {type: s3, bucket: artifacts, endpoint_url: "http://127.0.0.1:8333", region: us-east-1}
cache: {dir: CACHE}
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for var in list(os.environ):
        if var.startswith("STOREFS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def write(tmp_path, extra: str, base: str = BASE) -> str:
    path = tmp_path / "storefs.yaml"
    text = textwrap.dedent(base) + textwrap.dedent(extra)
    path.write_text(text.replace("DATA", str(tmp_path / "data")).replace("CACHE", str(tmp_path / "cache")))
    return str(path)


def load(tmp_path, extra: str = "", base: str = BASE) -> Config:
    return load_config(write(tmp_path, extra, base))


def error(tmp_path, extra: str, base: str = BASE) -> ConfigError:
    path = write(tmp_path, extra, base)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.source == path
    assert str(exc.value).startswith(f"{path}: {exc.value.key}: "), str(exc.value)
    return exc.value


# --------------------------------------------------------------------------- layout.content_types


def test_content_types_absent_means_any_file(tmp_path) -> None:
    assert load(tmp_path).layout.content_types == {}
    assert load(tmp_path, "layout: {types: [image, video]}\n").layout.content_types == {}


@pytest.mark.parametrize("text, expected", [
    ('layout: {content_types: {image: ["image/*"]}}', {"image": ("image/*",)}),
    ("layout: {content_types: {image: image/*}}", {"image": ("image/*",)}),  # one string is a list of one
    ('layout: {content_types: {image: ["image/png", "image/jpeg"], metadata: [application/json, "text/*"]}}',
     {"image": ("image/png", "image/jpeg"), "metadata": ("application/json", "text/*")}),
    ("layout: {content_types: {}}", {}),
])
def test_content_types_good_forms(tmp_path, text, expected) -> None:
    cfg = load(tmp_path, text + "\n")
    assert cfg.layout.content_types == expected
    assert cfg.layout.types == ("image", "video", "audio", "model", "metadata")


def test_content_types_follow_custom_types(tmp_path) -> None:
    cfg = load(tmp_path, "layout:\n  types: [photo, clip]\n  content_types: {photo: [image/*], clip: [video/*]}\n")
    assert cfg.layout.content_types == {"photo": ("image/*",), "clip": ("video/*",)}
    # "image" is no longer a type, so it is an unknown key there
    e = error(tmp_path, "layout:\n  types: [photo]\n  content_types: {image: [image/*]}\n")
    assert e.key == "layout.content_types.image"
    assert "unknown key" in e.reason


@pytest.mark.parametrize("text, key, words", [
    ("layout: {content_types: {pictures: [image/*]}}", "layout.content_types.pictures", ["unknown key", "image"]),
    ("layout: {content_types: [image/*]}", "layout.content_types", ["expected a mapping", "a list"]),
    ("layout: {content_types: image/*}", "layout.content_types", ["expected a mapping", "a string"]),
    ("layout: {content_types: {image: []}}", "layout.content_types.image", ["content types like image/*"]),
    ("layout: {content_types: {image: [png]}}", "layout.content_types.image", ["content types like image/*"]),
    ("layout: {content_types: {image: png}}", "layout.content_types.image", ["content types like image/*"]),
    ("layout: {content_types: {image: [image/png, 42]}}", "layout.content_types.image", ["content types"]),
    ("layout: {content_types: {image: {png: image/png}}}", "layout.content_types.image", ["content types"]),
    ("layout: {content_types: {image: 7}}", "layout.content_types.image", ["content types"]),
])
def test_content_types_bad_forms(tmp_path, text, key, words) -> None:
    e = error(tmp_path, text + "\n")
    assert e.key == key, str(e)
    for w in words:
        assert w in e.reason, str(e)


# --------------------------------------------------------------------------- tenant


def test_no_tenant_by_default(tmp_path) -> None:
    assert load(tmp_path).tenant is None


@pytest.mark.parametrize("name", ["acme", "Acme-1", "user_123", "a.b", "0", "x" * 128])
def test_valid_tenant(tmp_path, name) -> None:
    assert load(tmp_path, f'tenant: "{name}"\n').tenant == name


def test_numeric_tenant_is_a_name(tmp_path) -> None:
    assert load(tmp_path, "tenant: 12345\n").tenant == "12345"


@pytest.mark.parametrize("name", ["bad name", ".hidden", "-dash", "a/b", "..", "x" * 129, "caf\u00e9", "a\tb",
                                  "a\nb", "*"])
def test_invalid_tenant(tmp_path, name) -> None:
    e = error(tmp_path, f"tenant: {json.dumps(name)}\n")
    assert e.key == "tenant"
    assert "not a valid folder name" in e.reason


def test_empty_tenant_is_refused(tmp_path) -> None:
    e = error(tmp_path, 'tenant: ""\n')
    assert e.key == "tenant"


def test_tenant_not_a_string(tmp_path) -> None:
    e = error(tmp_path, "tenant: [acme]\n")
    assert e.key == "tenant"
    assert "expected a string" in e.reason


def test_tenant_checked_against_custom_name_pattern(tmp_path) -> None:
    layout = "layout: {name_pattern: '[a-z]+'}\n"
    assert load(tmp_path, layout + "tenant: acme\n").tenant == "acme"
    e = error(tmp_path, layout + "tenant: Acme1\n")
    assert e.key == "tenant" and "Acme1" in e.reason


def test_tenant_from_environment_variable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("POLICY_TEST_TENANT", "acme")
    assert load(tmp_path, "tenant: ${POLICY_TEST_TENANT}\n").tenant == "acme"


# --------------------------------------------------------------------------- with_tenant


def test_with_tenant_returns_a_new_config(tmp_path) -> None:
    cfg = load(tmp_path)
    t = with_tenant(cfg, "acme")
    assert t.tenant == "acme"
    assert cfg.tenant is None  # frozen config, the original is unchanged
    assert dataclasses.replace(t, tenant=None) == cfg  # nothing else changes


def test_with_tenant_overrides_the_file(tmp_path) -> None:
    cfg = load(tmp_path, "tenant: acme\n")
    assert with_tenant(cfg, "other").tenant == "other"


@pytest.mark.parametrize("name", ["bad name", ".x", "", "a/b", "x" * 129])
def test_with_tenant_refuses_bad_names(tmp_path, name) -> None:
    cfg = load(tmp_path)
    with pytest.raises(ConfigError) as exc:
        with_tenant(cfg, name)
    assert exc.value.source == "--tenant"
    assert exc.value.key == "tenant"
    assert repr(name) in str(exc.value)


def test_with_tenant_uses_the_layout_name_pattern(tmp_path) -> None:
    cfg = load(tmp_path, "layout: {name_pattern: '[a-z]+'}\n")
    assert with_tenant(cfg, "acme").tenant == "acme"
    with pytest.raises(ConfigError):
        with_tenant(cfg, "acme1")
    with pytest.raises(ConfigError) as exc:
        with_tenant(cfg, "ACME", source="somewhere")
    assert exc.value.source == "somewhere"


# --------------------------------------------------------------------------- routing


ROUTED = """
routing_rules:
  - {match: {type: video, size_gt: 1MiB}, provider: s3}
  - {provider: local}
"""


def test_routing_size_gt_boundary(tmp_path) -> None:
    cfg = load(tmp_path, ROUTED)
    assert cfg.routing_rules == (RoutingRule("s3", "video", 1 * MiB, None), RoutingRule("local"))
    assert cfg.provider_for("video", 0) == "local"
    assert cfg.provider_for("video", 1 * MiB) == "local"  # strictly greater
    assert cfg.provider_for("video", 1 * MiB + 1) == "s3"
    assert cfg.provider_for("video", 10**12) == "s3"
    assert cfg.provider_for("image", 10**12) == "local"
    assert cfg.provider_for(None, 10**12) == "local"  # above the type level


def test_routing_size_lt_boundary(tmp_path) -> None:
    cfg = load(tmp_path, """
        routing_rules:
          - {match: {size_lt: 1KiB}, provider: local}
          - {provider: s3}
        """)
    assert cfg.provider_for("image", 0) == "local"
    assert cfg.provider_for("image", 1023) == "local"
    assert cfg.provider_for("image", 1024) == "s3"  # strictly less
    assert cfg.provider_for(None, 1024) == "s3"


def test_routing_size_window(tmp_path) -> None:
    cfg = load(tmp_path, "routing_rules: [{match: {type: model, size_gt: 10, size_lt: 20}, provider: s3}]\n")
    assert [cfg.provider_for("model", n) for n in (10, 11, 19, 20)] == ["local", "s3", "s3", "local"]
    # no rule matches: the default provider
    assert cfg.provider_for("video", 15) == "local"


def test_routing_tightest_window_and_empty_window(tmp_path) -> None:
    cfg = load(tmp_path, "routing_rules: [{match: {size_gt: 10, size_lt: 12}, provider: s3}]\n")
    assert [cfg.provider_for(None, n) for n in (10, 11, 12)] == ["local", "s3", "local"]
    e = error(tmp_path, "routing_rules: [{match: {size_gt: 10, size_lt: 11}, provider: s3}]\n")
    assert e.key == "routing_rules[0].match" and "no size" in e.reason
    e = error(tmp_path, "routing_rules: [{match: {size_gt: 2MiB, size_lt: 1MiB}, provider: s3}]\n")
    assert e.key == "routing_rules[0].match"


def test_routing_first_match_wins(tmp_path) -> None:
    cfg = load(tmp_path, """
        routing_rules:
          - {match: {type: video}, provider: local}
          - {match: {type: video, size_gt: 1MiB}, provider: s3}
          - {provider: s3}
        """)
    # the broader rule first shadows the narrower one
    assert cfg.provider_for("video", 100 * MiB) == "local"
    assert cfg.provider_for("image", 0) == "s3"
    cfg = load(tmp_path, """
        routing_rules:
          - {match: {type: video, size_gt: 1MiB}, provider: s3}
          - {match: {type: video}, provider: local}
          - {provider: s3}
        """)
    assert cfg.provider_for("video", 100 * MiB) == "s3"
    assert cfg.provider_for("video", 1 * MiB) == "local"
    assert cfg.provider_for("audio", 1) == "s3"


def test_no_rules_means_default_provider(tmp_path) -> None:
    cfg = load(tmp_path)
    assert cfg.routing_rules == ()
    assert cfg.provider_for("video", 10**12) == "local"
    cfg = load(tmp_path, "default_provider: s3\n", BASE.replace("default_provider: local\n", ""))
    assert cfg.provider_for("image", 1) == "s3"


@pytest.mark.parametrize("text, key, words", [
    ("routing_rules: [{match: {type: video}, provider: s3}, {provider: nowhere}]",
     "routing_rules[1].provider", ["unknown provider 'nowhere'", "local, s3"]),
    ("routing_rules: [{match: {type: pictures}, provider: s3}]", "routing_rules[0].match.type", ["unknown type"]),
    ("routing_rules: [{match: {size_gt: huge}, provider: s3}]", "routing_rules[0].match.size_gt", ["expected a size"]),
    ("routing_rules: [{match: {size_lt: -1}, provider: s3}]", "routing_rules[0].match.size_lt", ["expected a size"]),
    ("routing_rules: [{match: {colour: red}, provider: s3}]", "routing_rules[0].match.colour", ["unknown key"]),
    ("routing_rules: [{match: {type: video}}]", "routing_rules[0].provider", ["missing"]),
    ("routing_rules: {provider: s3}", "routing_rules", ["expected a list"]),
    ("routing_rules: [s3]", "routing_rules[0]", ["expected a mapping"]),
])
def test_routing_errors(tmp_path, text, key, words) -> None:
    e = error(tmp_path, text + "\n")
    assert e.key == key, str(e)
    for w in words:
        assert w in e.reason, str(e)


def test_routing_rule_matches_directly() -> None:
    r = RoutingRule("s3", "video", size_gt=100, size_lt=200)
    assert not r.matches("video", 100) and r.matches("video", 101) and r.matches("video", 199)
    assert not r.matches("video", 200) and not r.matches("image", 150) and not r.matches(None, 150)
    assert RoutingRule("local").matches(None, 0)
