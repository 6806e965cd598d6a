"""Config loading: sizes, durations, the embedded default, every error path, overrides, routing."""

from __future__ import annotations

import os
import textwrap

import pytest

from storefs.config import (
    DEFAULT_MIN_FREE,
    CacheConfig,
    GiB,
    KiB,
    LayoutConfig,
    LocalProviderConfig,
    MiB,
    MinFree,
    RoutingRule,
    S3ProviderConfig,
    SizeLimits,
    load_config,
    parse_duration,
    parse_min_free,
    parse_size,
)
from storefs.errors import ConfigError

S3_FILE = """
default_provider: local
providers:
  local: {type: local, base_path: BASE}
  s3:
    type: s3
    bucket: artifacts
    endpoint_url: http://127.0.0.1:8333/
    region: us-east-1
    prefix: /media
    access_key_id: ${S3_KEY}
    secret_access_key: ${S3_SECRET:-fallback-secret}
routing_rules:
  - {match: {type: video, size_gt: 100MiB}, provider: s3}
  - {match: {type: model}, provider: s3}
  - {provider: local}
max_file_size: {default: 1GiB, video: 10GiB}
cache: {dir: CACHE, max_size: 20GiB, writeback_delay: 500ms, uploaders: 4}
fuse: {attr_timeout: 2s}
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for var in list(os.environ):
        if var.startswith("STOREFS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def write(tmp_path, text: str, name: str = "storefs.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).replace("BASE", str(tmp_path / "data"))
                    .replace("CACHE", str(tmp_path / "cache")))
    return str(path)


def error(tmp_path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.source == path
    assert str(exc.value).startswith(path + ": ")
    return exc.value


MINIMAL = "providers: {local: {type: local, base_path: BASE}}\n"


# ---- sizes and durations --------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (100, 100), ("100", 100), ("20GiB", 20 * GiB), ("100MiB", 100 * MiB), ("1.5GB", 1_500_000_000),
    ("512KiB", 512 * KiB), ("10k", 10 * KiB), ("10K", 10 * KiB), ("2M", 2 * MiB), ("1TiB", 1 << 40),
    ("3kb", 3000), ("1 GiB", GiB), ("7B", 7), (0, 0), (2.0, 2),
])
def test_parse_size(value, expected) -> None:
    assert parse_size(value, "f", "k") == expected


@pytest.mark.parametrize("value", ["", "abc", "-1", "10 XB", "1.2.3GiB", True, None, [1], -5, float("inf")])
def test_parse_size_rejects(value) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_size(value, "f.yaml", "cache.max_size")
    assert str(exc.value).startswith("f.yaml: cache.max_size: expected a size")


@pytest.mark.parametrize("value, expected", [
    (2, 2.0), (0.25, 0.25), ("2", 2.0), ("2s", 2.0), ("500ms", 0.5), ("1m", 60.0), ("1h", 3600.0),
    ("1d", 86400.0), ("1.5s", 1.5),
])
def test_parse_duration(value, expected) -> None:
    assert parse_duration(value, "f", "k") == pytest.approx(expected)


@pytest.mark.parametrize("value", ["soon", "2 weeks", "-1s", "1y", False, None, {}])
def test_parse_duration_rejects(value) -> None:
    with pytest.raises(ConfigError, match="k: expected a duration"):
        parse_duration(value, "f", "k")


# ---- embedded default and a full file -------------------------------------------------


def test_embedded_default_uses_xdg_folders(tmp_path) -> None:
    cfg = load_config(None)
    assert cfg.source == "<embedded default>"
    assert cfg.default_provider == "local"
    assert cfg.providers == {"local": LocalProviderConfig("local", str(tmp_path / "xdg-data/storefs/data"),
                                                          create=True, create_parents=True)}
    assert cfg.cache == CacheConfig(dir=str(tmp_path / "xdg-cache/storefs"))
    assert cfg.layout == LayoutConfig()
    assert cfg.max_file_size == SizeLimits()
    assert cfg.routing_rules == ()
    assert cfg.log_level == "INFO"
    assert cfg.provider_for("video", 10 * GiB) == "local"


def test_embedded_default_without_xdg_uses_home(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(None)
    assert cfg.providers["local"].base_path == str(tmp_path / "home/.local/share/storefs/data")
    assert cfg.cache.dir == str(tmp_path / "home/.cache/storefs")


def test_full_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("S3_KEY", "AKIA123")
    monkeypatch.delenv("S3_SECRET", raising=False)
    cfg = load_config(write(tmp_path, S3_FILE))
    s3 = cfg.providers["s3"]
    assert isinstance(s3, S3ProviderConfig)
    assert (s3.bucket, s3.endpoint_url, s3.region, s3.prefix) == (
        "artifacts", "http://127.0.0.1:8333", "us-east-1", "media/")
    assert (s3.access_key_id, s3.secret_access_key, s3.session_token) == ("AKIA123", "fallback-secret", None)
    assert (s3.multipart_threshold, s3.multipart_chunksize, s3.read_deadline) == (64 * MiB, 16 * MiB, 8.0)
    assert "AKIA123" not in repr(cfg) and "fallback-secret" not in repr(cfg)
    assert cfg.providers["local"] == LocalProviderConfig("local", str(tmp_path / "data"))
    assert cfg.max_file_size.limit_for("video") == 10 * GiB
    assert cfg.max_file_size.limit_for("image") == GiB
    assert cfg.max_file_size.limit_for(None) == GiB
    assert cfg.cache.writeback_delay == 0.5 and cfg.cache.max_size == 20 * GiB
    assert cfg.fuse.attr_timeout == 2.0 and cfg.fuse.entry_timeout == 1.0
    assert cfg.fuse.read_ahead == 4 * MiB


def test_routing_first_match_wins(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("S3_KEY", "k")
    cfg = load_config(write(tmp_path, S3_FILE))
    assert cfg.routing_rules[0] == RoutingRule("s3", "video", 100 * MiB, None)
    assert cfg.provider_for("video", 200 * MiB) == "s3"
    assert cfg.provider_for("video", 100 * MiB) == "local"  # size_gt is strict
    assert cfg.provider_for("model", 1) == "s3"
    assert cfg.provider_for("image", 200 * MiB) == "local"
    assert cfg.provider_for(None, 200 * MiB) == "local"


def test_routing_rule_matches() -> None:
    rule = RoutingRule("s3", size_gt=10, size_lt=20)
    assert [rule.matches(None, n) for n in (10, 11, 19, 20)] == [False, True, True, False]
    assert RoutingRule("s3").matches("image", 0)
    assert not RoutingRule("s3", type="video").matches(None, 0)


def test_single_provider_is_default_and_paths_are_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(write(tmp_path, """
        providers: {store: {type: local, base_path: ~/store}}
        cache: {dir: rel/cache}
        max_file_size: 5MiB
        """))
    assert cfg.default_provider == "store"
    assert cfg.providers["store"].base_path == str(tmp_path / "home/store")
    assert cfg.cache.dir == str(tmp_path / "rel/cache")
    assert cfg.max_file_size == SizeLimits(5 * MiB)


def test_cache_dir_defaults_to_xdg_in_a_file(tmp_path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).cache.dir == str(tmp_path / "xdg-cache/storefs")


def test_custom_layout(tmp_path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + """
        layout: {levels: [project, run], types: [], name_pattern: "[a-z]+"}
        """.replace("\n        ", "\n")))
    assert cfg.layout == LayoutConfig(("project", "run"), (), "[a-z]+")


def test_s3_prefix_normalised(tmp_path) -> None:
    for given, expected in (('""', ""), ("/", ""), ("a/b", "a/b/"), ("/a/", "a/")):
        cfg = load_config(write(tmp_path, f"providers: {{s: {{type: s3, bucket: abc, prefix: {given}}}}}\n"))
        assert cfg.providers["s"].prefix == expected


# ---- environment --------------------------------------------------------------------


def test_storefs_overrides(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("S3_KEY", "k")
    monkeypatch.setenv("STOREFS_DEFAULT_PROVIDER", "s3")
    monkeypatch.setenv("STOREFS_CACHE_DIR", str(tmp_path / "other"))
    monkeypatch.setenv("STOREFS_CACHE_MAX_SIZE", "1GiB")
    monkeypatch.setenv("STOREFS_CACHE_WRITEBACK_DELAY", "10s")
    monkeypatch.setenv("STOREFS_CACHE_UPLOADERS", "8")
    monkeypatch.setenv("STOREFS_CACHE_FSYNC", "upload")
    monkeypatch.setenv("STOREFS_LOG_LEVEL", "debug")
    cfg = load_config(write(tmp_path, S3_FILE))
    assert cfg.default_provider == "s3"
    assert cfg.cache == CacheConfig(str(tmp_path / "other"), GiB, 10.0, 8, "upload", 60.0)
    assert cfg.log_level == "DEBUG"


def test_storefs_overrides_apply_to_embedded_default(monkeypatch) -> None:
    monkeypatch.setenv("STOREFS_CACHE_UPLOADERS", "2")
    assert load_config(None).cache.uploaders == 2


@pytest.mark.parametrize("var, value", [
    ("STOREFS_CACHE_UPLOADERS", "many"), ("STOREFS_CACHE_FSYNC", "always"),
    ("STOREFS_CACHE_MAX_SIZE", "big"), ("STOREFS_LOG_LEVEL", "LOUD"), ("STOREFS_DEFAULT_PROVIDER", "nope"),
])
def test_bad_override_names_the_variable(monkeypatch, var, value) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as exc:
        load_config(None)
    assert (exc.value.source, exc.value.key) == ("environment", var)


def test_env_substitution_everywhere(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ROOT", str(tmp_path))
    monkeypatch.setenv("EMPTY", "")
    cfg = load_config(write(tmp_path, """
        providers:
          local: {type: local, base_path: "${ROOT}/d"}
        cache: {dir: "${ROOT}/c", uploaders: "${UPLOADERS_UNSET:-3}", fsync: "${EMPTY:-upload}"}
        layout: {types: ["${T1:-image}", video]}
        """))
    assert cfg.providers["local"].base_path == str(tmp_path / "d")
    assert (cfg.cache.dir, cfg.cache.uploaders, cfg.cache.fsync) == (str(tmp_path / "c"), 3, "upload")
    assert cfg.layout.types == ("image", "video")


# ---- errors -------------------------------------------------------------------------


def test_missing_file(tmp_path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="nope.yaml: no such file"):
        load_config(path)


def test_unreadable_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="can not read"):
        load_config(str(tmp_path))  # a folder


def test_bad_yaml_names_the_line(tmp_path) -> None:
    assert "invalid YAML at line 2" in str(error(tmp_path, "providers: {}\n  bad: [\n"))


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_not_a_mapping(tmp_path, text) -> None:
    assert "expected a mapping" in error(tmp_path, text).reason


@pytest.mark.parametrize("text, key", [
    (MINIMAL + "colour: blue\n", "colour"),
    (MINIMAL + "cache: {dir: /tmp/x, sise: 1GiB}\n", "cache.sise"),
    ("providers: {local: {type: local, base_path: /x, bucket: b}}\n", "providers.local.bucket"),
    ("providers: {s: {type: s3, bucket: abc, regoin: eu}}\n", "providers.s.regoin"),
    (MINIMAL + "routing_rules: [{match: {size: 1}, provider: local}]\n", "routing_rules[0].match.size"),
    (MINIMAL + "max_file_size: {default: 1GiB, videos: 2GiB}\n", "max_file_size.videos"),
    (MINIMAL + "fuse: {attr_timeout: 1, ttl: 2}\n", "fuse.ttl"),
    (MINIMAL + "layout: {level: [a]}\n", "layout.level"),
])
def test_unknown_key(tmp_path, text, key) -> None:
    err = error(tmp_path, text)
    assert err.key == key
    assert err.reason.startswith("unknown key (known: ")


@pytest.mark.parametrize("text, key, reason", [
    (MINIMAL + "cache: {uploaders: many}\n", "cache.uploaders", "expected a whole number"),
    ("providers: []\n", "providers", "expected a mapping"),
    ("providers: {}\n", "providers", "empty mapping"),
    ("cache: {dir: /x}\n", "providers", "expected a mapping"),
    (MINIMAL + "cache: [1]\n", "cache", "expected a mapping"),
    (MINIMAL + "cache: {max_size: huge}\n", "cache.max_size", "expected a size"),
    (MINIMAL + "cache: {writeback_delay: soon}\n", "cache.writeback_delay", "expected a duration"),
    (MINIMAL + "cache: {min_free: lots}\n", "cache.min_free", "expected a size such as 2GiB or 500MB, or a share"),
    (MINIMAL + "cache: {min_free: 150%}\n", "cache.min_free", "between 0% and 100%"),
    (MINIMAL + "cache: {min_free: '-5%'}\n", "cache.min_free", "between 0% and 100%"),
    (MINIMAL + "cache: {min_free: 'half%'}\n", "cache.min_free", "between 0% and 100%"),
    (MINIMAL + "cache: {fsync: always}\n", "cache.fsync", "expected one of local, upload"),
    (MINIMAL + "cache: {uploaders: 0}\n", "cache.uploaders", "must be between 1 and 64"),
    (MINIMAL + "fuse: {read_ahead: 2GiB}\n", "fuse.read_ahead", "must be between 0 and 1073741824"),
    (MINIMAL + "fuse: {read_ahead: 4s}\n", "fuse.read_ahead", "expected a size"),
    (MINIMAL + "routing_rules: {provider: local}\n", "routing_rules", "expected a list"),
    (MINIMAL + "routing_rules: [{provider: local}, {match: {size_gt: lots}, provider: local}]\n",
     "routing_rules[1].match.size_gt", "expected a size"),
    (MINIMAL + "routing_rules: [{match: {type: video}}]\n", "routing_rules[0].provider", "missing"),
    (MINIMAL + "routing_rules: [{match: {type: vidoe}, provider: local}]\n", "routing_rules[0].match.type",
     "unknown type 'vidoe'"),
    (MINIMAL + "routing_rules: [{match: {size_gt: 10, size_lt: 5}, provider: local}]\n",
     "routing_rules[0].match", "no size"),
    (MINIMAL + "log_level: loud\n", "log_level", "expected one of"),
    (MINIMAL + "layout: {levels: []}\n", "layout.levels", "1 to 8"),
    (MINIMAL + "layout: {levels: [a, b, c, d, e, f, g, h, i]}\n", "layout.levels", "1 to 8"),
    (MINIMAL + "layout: {levels: [a, b, a]}\n", "layout.levels[2]", "listed twice"),
    (MINIMAL + "layout: {levels: tenant}\n", "layout.levels", "expected a list"),
    (MINIMAL + "layout: {types: [image, 'bad type']}\n", "layout.types[1]", "bad name"),
    (MINIMAL + "layout: {name_pattern: '[a-'}\n", "layout.name_pattern", "not a valid regular expression"),
    (MINIMAL + "max_file_size: 0\n", "max_file_size", "at least 1"),
    ("providers: {local: {type: local}}\n", "providers.local.base_path", "missing"),
    ("providers: {local: {type: ftp, base_path: /x}}\n", "providers.local.type", "expected local or s3"),
    ("providers: {local: /x}\n", "providers.local", "expected a mapping"),
    ("providers: {s: {type: s3, bucket: ab}}\n", "providers.s.bucket", "bad bucket name"),
    ("providers: {s: {type: s3, bucket: " + "a" * 64 + "}}\n", "providers.s.bucket", "bad bucket name"),
    ("providers: {s: {type: s3, bucket: my/bucket}}\n", "providers.s.bucket", "bad bucket name"),
    ("providers: {s: {type: s3}}\n", "providers.s.bucket", "missing"),
    ("providers: {s: {type: s3, bucket: abc, endpoint_url: localhost:9000}}\n", "providers.s.endpoint_url",
     "expected an http"),
    ("providers: {s: {type: s3, bucket: abc, access_key_id: k}}\n", "providers.s", "together"),
    ("providers: {s: {type: s3, bucket: abc, multipart_chunksize: 1MiB}}\n", "providers.s.multipart_chunksize",
     "between"),
    ("providers: {s: {type: s3, bucket: abc, path_style: maybe}}\n", "providers.s.path_style", "true or false"),
])
def test_wrong_values(tmp_path, text, key, reason) -> None:
    err = error(tmp_path, text)
    assert err.key == key
    assert reason in err.reason


def test_default_provider_must_exist(tmp_path) -> None:
    err = error(tmp_path, "default_provider: s3\n" + MINIMAL)
    assert (err.key, err.reason) == ("default_provider", "unknown provider 's3' (providers: local)")


def test_default_provider_required_with_several(tmp_path) -> None:
    err = error(tmp_path, "providers: {a: {type: local, base_path: /a}, b: {type: local, base_path: /b}}\n")
    assert err.key == "default_provider" and "missing" in err.reason


def test_unknown_provider_in_routing(tmp_path) -> None:
    err = error(tmp_path, MINIMAL + "routing_rules: [{provider: local}, {provider: s3}]\n")
    assert (err.key, err.reason) == ("routing_rules[1].provider", "unknown provider 's3' (providers: local)")


def test_missing_variable_names_key_and_variable(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("S3_KEY", raising=False)
    err = error(tmp_path, S3_FILE)
    assert err.key == "providers.s3.access_key_id"
    assert "S3_KEY is not set" in err.reason


def test_secret_values_are_not_echoed(tmp_path) -> None:
    err = error(tmp_path, "providers: {s: {type: s3, bucket: abc, access_key_id: k, secret_access_key: [hunter2]}}\n")
    assert err.key == "providers.s.secret_access_key" and "hunter2" not in str(err)


# ---- fuse: the sharing options ---------------------------------------------------------------


def test_fuse_sharing_defaults(tmp_path) -> None:
    fuse = load_config(write(tmp_path, MINIMAL)).fuse
    assert (fuse.allow_other, fuse.allow_root, fuse.read_only) == (False, False, False)
    assert (fuse.uid, fuse.gid, fuse.umask, fuse.file_mode, fuse.dir_mode) == (None,) * 5
    assert fuse.atime == "relatime"
    assert (fuse.default_file_mode(), fuse.default_dir_mode()) == (0o644, 0o755)


def test_fuse_sharing_keys(tmp_path) -> None:
    import grp
    import pwd
    user, group = pwd.getpwuid(65534).pw_name, grp.getgrgid(0).gr_name
    fuse = load_config(write(tmp_path, MINIMAL + f"fuse: {{allow_other: true, read_only: yes, uid: {user}, "
                             f'gid: {group}, umask: "027", file_mode: 0640, dir_mode: "0o750", atime: noatime}}\n'
                       )).fuse
    assert (fuse.allow_other, fuse.allow_root, fuse.read_only) == (True, False, True)
    assert (fuse.uid, fuse.gid) == (65534, 0)
    assert (fuse.umask, fuse.file_mode, fuse.dir_mode) == (0o027, 0o640, 0o750)  # YAML reads 0640 as octal
    assert fuse.atime == "noatime"
    assert (fuse.default_file_mode(), fuse.default_dir_mode()) == (0o640, 0o750)


@pytest.mark.parametrize("umask, file_mode, dir_mode, files, folders", [
    ("022", None, None, 0o644, 0o755),   # rclone: 0666 and 0777 minus the umask
    ("077", None, None, 0o600, 0o700),
    ("002", None, None, 0o664, 0o775),
    ("022", "0666", "0777", 0o644, 0o755),
    (None, "0600", "0700", 0o600, 0o700),
])
def test_umask_applies_to_the_default_modes(tmp_path, umask, file_mode, dir_mode, files, folders) -> None:
    keys = {k: v for k, v in (("umask", umask), ("file_mode", file_mode), ("dir_mode", dir_mode)) if v}
    fuse = load_config(write(tmp_path, MINIMAL + "fuse: {" + ", ".join(f'{k}: "{v}"' for k, v in keys.items())
                             + "}\n")).fuse
    assert (fuse.default_file_mode(), fuse.default_dir_mode()) == (files, folders)


@pytest.mark.parametrize("text, key, reason", [
    ("fuse: {allow_other: sometimes}\n", "fuse.allow_other", "expected true or false"),
    ("fuse: {read_only: 2}\n", "fuse.read_only", "expected true or false"),
    ("fuse: {uid: nosuchuser-storefs}\n", "fuse.uid", "no user named 'nosuchuser-storefs'"),
    ("fuse: {gid: nosuchgroup-storefs}\n", "fuse.gid", "no group named 'nosuchgroup-storefs'"),
    ("fuse: {uid: -1}\n", "fuse.uid", "must be between 0 and 4294967294"),
    ("fuse: {uid: 4294967295}\n", "fuse.uid", "must be between 0 and 4294967294"),
    ("fuse: {gid: [1]}\n", "fuse.gid", "expected a group name or number"),
    ("fuse: {umask: '0999'}\n", "fuse.umask", "expected an octal mode"),
    ("fuse: {umask: 'u=rwx'}\n", "fuse.umask", "expected an octal mode"),
    ("fuse: {file_mode: '17777'}\n", "fuse.file_mode", "between 0 and 07777"),
    ("fuse: {dir_mode: -1}\n", "fuse.dir_mode", "between 0 and 07777"),
    ("fuse: {dir_mode: true}\n", "fuse.dir_mode", "expected an octal mode"),
    ("fuse: {atime: sometimes}\n", "fuse.atime", "expected one of relatime, strictatime, noatime"),
    ("fuse: {allow_other: true, allow_root: true}\n", "fuse", "allow_other and allow_root exclude each other"),
])
def test_wrong_fuse_values(tmp_path, text, key, reason) -> None:
    err = error(tmp_path, MINIMAL + text)
    assert err.key == key
    assert reason in err.reason


# ---- cache.min_free --------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("2G", MinFree(size=2 * GiB)),
    ("500MB", MinFree(size=500 * 1000**2)),
    (0, MinFree(size=0)),
    ("10%", MinFree(percent=10.0)),
    (" 2.5 % ", MinFree(percent=2.5)),
    ("0%", MinFree(percent=0.0)),
])
def test_min_free_values(value, expected) -> None:
    assert parse_min_free(value, "f.yaml", "cache.min_free") == expected


def test_min_free_from_the_file_and_its_default(tmp_path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).cache.min_free == DEFAULT_MIN_FREE
    cfg = load_config(write(tmp_path, MINIMAL + "cache: {min_free: 10%}\n"))
    assert cfg.cache.min_free == MinFree(percent=10.0)


@pytest.mark.parametrize("min_free, disk, expected", [
    (DEFAULT_MIN_FREE, 10 * GiB, 512 * MiB),   # 5 % of a small disk
    (DEFAULT_MIN_FREE, 100 * GiB, GiB),        # 1 GiB of a big one: whichever is less
    (MinFree(percent=10.0), 40 * MiB, 4 * MiB),
    (MinFree(size=2 * GiB), 10 * GiB, 2 * GiB),
    (MinFree(size=0), 10 * GiB, 0),
])
def test_min_free_in_bytes_of_a_disk(min_free, disk, expected) -> None:
    assert min_free.bytes_of(disk) == expected
@pytest.mark.parametrize(("text", "expected"), [("", "keep-both"), ("conflicts: keep-both\n", "keep-both"),
                                                ("conflicts: overwrite\n", "overwrite"),
                                                ("conflicts: Overwrite\n", "overwrite")])
def test_conflicts_keeps_both_unless_told_to_overwrite(tmp_path, text, expected) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"providers:\n  local: {{type: local, base_path: {tmp_path}}}\n{text}")
    assert load_config(str(path)).conflicts == expected


def test_conflicts_refuses_another_word(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"providers:\n  local: {{type: local, base_path: {tmp_path}}}\nconflicts: newest\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert (err.value.key, err.value.reason) == ("conflicts", "expected one of keep-both, overwrite, got 'newest'")
