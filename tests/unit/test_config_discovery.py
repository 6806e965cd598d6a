"""Which config a command uses, every mistake of a file at once, secrets others can read, and the keys
issue 21 adds (profile, sse, kms_key_id, storage_class, metrics_address)."""

from __future__ import annotations

import os
import textwrap

import pytest

from storefs import config
from storefs.config import ConfigErrors, find_config, load_config
from storefs.errors import ConfigError

S3 = """
providers:
  s3:
    type: s3
    bucket: artifacts
    region: us-east-1
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for var in list(os.environ):
        if var.startswith(("STOREFS_", "AWS_")):
            monkeypatch.delenv(var)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(config, "SYSTEM_CONFIG", str(tmp_path / "etc/storefs/storefs.yaml"))


def write(path, text: str, mode: int = 0o600) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return str(path)


MINIMAL = "providers: {local: {type: local, base_path: /srv/x}}\n"


# ---- discovery ------------------------------------------------------------------------


def test_each_rule_in_order(tmp_path, monkeypatch) -> None:
    """-c, else $STOREFS_CONFIG, else the user's ~/.config/storefs/config.yaml, else /etc, else embedded."""
    system = write(tmp_path / "etc/storefs/storefs.yaml", MINIMAL)
    user = write(tmp_path / "home/.config/storefs/config.yaml", MINIMAL)
    named = write(tmp_path / "named.yaml", MINIMAL)
    given = write(tmp_path / "given.yaml", MINIMAL)
    monkeypatch.setenv("STOREFS_CONFIG", named)
    assert find_config(given) == config.ConfigFile(given, "-c")
    assert find_config(None) == config.ConfigFile(named, "$STOREFS_CONFIG")
    monkeypatch.delenv("STOREFS_CONFIG")
    assert find_config(None) == config.ConfigFile(user, "~/.config/storefs/config.yaml")
    os.unlink(user)
    found = find_config(None)
    assert found.path == system and found.rule.startswith("the system config")
    os.unlink(system)
    found = find_config(None)
    assert found.path is None and system in found.rule and "$STOREFS_CONFIG" in found.rule
    assert load_config(found.path).source == "<embedded default>"


def test_xdg_config_home_is_followed_and_a_relative_one_ignored(tmp_path, monkeypatch) -> None:
    xdg = write(tmp_path / "xdg-config/storefs/config.yaml", MINIMAL)
    home = write(tmp_path / "home/.config/storefs/config.yaml", MINIMAL)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    assert find_config(None) == config.ConfigFile(xdg, "$XDG_CONFIG_HOME/storefs/config.yaml")
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative")  # the XDG spec: ignored, not resolved
    assert find_config(None).path == home


def test_a_named_file_that_is_missing_is_an_error_not_a_fallback(tmp_path, monkeypatch) -> None:
    write(tmp_path / "etc/storefs/storefs.yaml", MINIMAL)
    monkeypatch.setenv("STOREFS_CONFIG", str(tmp_path / "typo.yaml"))
    found = find_config(None)
    assert found.path == str(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="typo.yaml: no such file"):
        load_config(found.path)


# ---- every mistake at once ----------------------------------------------------------------


def test_every_mistake_is_reported_with_its_key(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("S3_SECRET", raising=False)
    path = write(tmp_path / "bad.yaml", """
        providers:
          local: {type: local, base_path: /srv/x, colour: blue}
          s3: {type: s3, bucket: artifacts, access_key_id: AK, secret_access_key: "${S3_SECRET}", sse: AES512}
        routing_rules:
          - {match: {size_gt: lots}, provider: s3}
          - {provider: nowhere}
        cache: {max_size: 20 gigs, uploaders: 0}
        fuse: {umask: "999"}
        metrics_address: localhost:9000
        log_level: chatty
        """)
    with pytest.raises(ConfigErrors) as exc:
        load_config(path)
    keys = [(e.source, e.key) for e in exc.value.errors]
    assert keys == [(path, k) for k in (
        "providers.s3.secret_access_key", "providers.local.colour", "providers.s3.sse", "default_provider",
        "routing_rules[0].match.size_gt", "routing_rules[1].provider", "cache.max_size", "cache.uploaders",
        "fuse.umask", "log_level", "metrics_address")]
    text = str(exc.value)
    assert text.startswith("11 errors:\n  ") and text.count("\n") == 11
    assert "S3_SECRET is not set" in text and "AES512" in text
    # the unset variable's own mistake is not echoed as a second one (no "give both keys together")
    assert "together" not in text


def test_one_mistake_is_still_a_plain_config_error(tmp_path) -> None:
    path = write(tmp_path / "bad.yaml", MINIMAL + "log_level: chatty\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert not isinstance(exc.value, ConfigErrors)
    assert str(exc.value).startswith(f"{path}: log_level: expected one of")


def test_environment_mistakes_join_the_file_mistakes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STOREFS_CACHE_UPLOADERS", "many")
    path = write(tmp_path / "bad.yaml", MINIMAL + "log_level: chatty\n")
    with pytest.raises(ConfigErrors) as exc:
        load_config(path)
    assert [(e.source, e.key) for e in exc.value.errors] == [(path, "log_level"),
                                                             ("environment", "STOREFS_CACHE_UPLOADERS")]


# ---- secrets other users can read ---------------------------------------------------------


@pytest.mark.parametrize("secret, mode, warned", [
    ("plain-secret", 0o644, True), ("plain-secret", 0o640, True), ("plain-secret", 0o600, False),
    ("${S3_SECRET}", 0o644, False), ("pre-${S3_SECRET}", 0o644, True),
])
def test_literal_secrets_others_can_read_are_warned_about(tmp_path, monkeypatch, secret, mode, warned) -> None:
    monkeypatch.setenv("S3_SECRET", "from-env")
    path = write(tmp_path / "s3.yaml", S3 + f'    access_key_id: AK\n    secret_access_key: "{secret}"\n', mode)
    cfg = load_config(path)
    if not warned:
        assert cfg.warnings == ()
        return
    (warning,) = cfg.warnings
    assert path in warning and "providers.s3.secret_access_key" in warning and f"{mode:04o}" in warning
    assert f"chmod 600 {path}" in warning and ".env" in warning
    assert "plain-secret" not in warning


def test_an_embedded_default_has_no_warning() -> None:
    assert load_config(None).warnings == ()


# ---- the keys issue 21 adds -------------------------------------------------------------


def test_upload_options_are_read_and_normalised(tmp_path) -> None:
    path = write(tmp_path / "s3.yaml", S3 + "    sse: aws:KMS\n    kms_key_id: alias/media\n"
                                            "    storage_class: standard_ia\n")
    s3 = load_config(path).providers["s3"]
    assert (s3.sse, s3.kms_key_id, s3.storage_class) == ("aws:kms", "alias/media", "STANDARD_IA")
    plain = load_config(write(tmp_path / "plain.yaml", S3)).providers["s3"]
    assert (plain.sse, plain.kms_key_id, plain.storage_class, plain.profile) == (None, None, None, None)


@pytest.mark.parametrize("lines, key, reason", [
    ("    sse: aws:kms:dsse\n", "providers.s3.sse", "expected AES256 or aws:kms"),
    ("    sse: AES256\n    kms_key_id: k1\n", "providers.s3.kms_key_id", "sse: aws:kms only"),
    ("    kms_key_id: k1\n", "providers.s3.kms_key_id", "sse: aws:kms only"),
    ("    storage_class: STANDARD-IA\n", "providers.s3.storage_class", "expected one of STANDARD,"),
    ("    storage_class: GLACIER\n", "providers.s3.storage_class", "must be restored before"),
    ("    storage_class: deep_archive\n", "providers.s3.storage_class", "must be restored before"),
])
def test_upload_option_mistakes(tmp_path, lines, key, reason) -> None:
    path = write(tmp_path / "s3.yaml", S3 + lines)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.key == key and reason in exc.value.reason


def test_a_profile_must_exist_before_mounting(tmp_path, monkeypatch) -> None:
    aws = tmp_path / "aws"
    write(aws / "config", "[default]\nregion = eu-west-1\n[profile media]\nregion = eu-west-3\n[sso-session x]\n")
    write(aws / "credentials", "[backup]\naws_access_key_id = A\naws_secret_access_key = B\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws / "credentials"))
    assert config.aws_profiles() == {"default", "media", "backup"}
    for name in ("media", "backup", "default"):
        assert load_config(write(tmp_path / "p.yaml", S3 + f"    profile: {name}\n")).providers["s3"].profile == name
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path / "p.yaml", S3 + "    profile: meda\n"))
    assert exc.value.key == "providers.s3.profile"
    assert "no AWS profile 'meda'" in exc.value.reason and "backup, default, media" in exc.value.reason
    with pytest.raises(ConfigError, match="either profile or access_key_id"):
        load_config(write(tmp_path / "p.yaml", S3 + "    profile: media\n    access_key_id: A\n"
                                                    "    secret_access_key: B\n"))


def test_a_profile_in_the_default_aws_files_of_home(tmp_path) -> None:
    write(tmp_path / "home/.aws/credentials", "[media]\naws_access_key_id = A\naws_secret_access_key = B\n")
    assert load_config(write(tmp_path / "p.yaml", S3 + "    profile: media\n")).providers["s3"].profile == "media"


@pytest.mark.parametrize("value, expected", [
    (None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0"), ("::1", "::1"), ("[::]", "::"), ("10.1.2.3", "10.1.2.3"),
])
def test_metrics_address(tmp_path, value, expected) -> None:
    text = MINIMAL + (f'metrics_address: "{value}"\n' if value else "")
    assert load_config(write(tmp_path / "m.yaml", text)).metrics_address == expected


@pytest.mark.parametrize("value", ["localhost", "127.0.0.1:9100", "256.1.1.1", "", "[::1"])
def test_metrics_address_must_be_an_ip_address(tmp_path, value) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path / "m.yaml", MINIMAL + f'metrics_address: "{value}"\n'))
    assert exc.value.key == "metrics_address" and "expected an IP address" in exc.value.reason


# ---- storefs config check, and the commands that take -c ---------------------------------


FULL = """
default_provider: s3
providers:
  local: {type: local, base_path: /srv/x}
  s3:
    type: s3
    bucket: artifacts
    region: eu-west-1
    access_key_id: AKIAEXAMPLE
    secret_access_key: SECRETliteral
    session_token: ${S3_TOKEN}
    sse: aws:kms
    kms_key_id: alias/media
    storage_class: INTELLIGENT_TIERING
    read_timeout: 1m
routing_rules:
  - {match: {type: video, size_gt: 100MiB}, provider: s3}
  - {provider: local}
max_file_size: {default: 1GiB, video: 10GiB}
cache: {dir: /var/cache/x, min_free: 2GiB}
fuse: {umask: "022", allow_other: true}
metrics_address: 0.0.0.0
"""


def check(capsys, *argv: str) -> tuple[int, str, str]:
    from storefs.cli import main
    code = main(["config", "check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_config_check_prints_the_resolved_config_with_secrets_hidden(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("S3_TOKEN", "TOKENfromenv")
    monkeypatch.setenv("STOREFS_CACHE_MAX_SIZE", "3GiB")
    path = write(tmp_path / "full.yaml", FULL)
    code, out, err = check(capsys, "-c", path)
    assert code == 0 and err == ""
    assert f"# storefs config check: {path} is valid\n# found by: -c\n" in out
    shown = __import__("yaml").safe_load(out)
    s3 = shown["providers"]["s3"]
    assert (s3["secret_access_key"], s3["session_token"], s3["access_key_id"]) == ("***", "***", "AKIAEXAMPLE")
    assert (s3["sse"], s3["kms_key_id"], s3["storage_class"], s3["read_timeout"]) == (
        "aws:kms", "alias/media", "INTELLIGENT_TIERING", 60.0)
    assert (s3["connect_timeout"], s3["max_attempts"], s3["profile"]) == (5.0, 5, None)  # the defaults, filled in
    assert shown["cache"]["max_size"] == 3 << 30  # the environment wins over the file
    assert shown["fuse"]["umask"] == "0022" and shown["metrics_address"] == "0.0.0.0"
    assert shown["routing_rules"] == [{"match": {"type": "video", "size_gt": 100 << 20}, "provider": "s3"},
                                      {"provider": "local"}]
    assert "SECRETliteral" not in out and "TOKENfromenv" not in out


def test_the_resolved_config_reads_back_as_the_same_config(tmp_path, monkeypatch, capsys) -> None:
    """What config check prints is a config file itself (secrets aside): loaded again, the same settings."""
    text = FULL.replace("    secret_access_key: SECRETliteral\n    session_token: ${S3_TOKEN}\n", "") \
               .replace("    access_key_id: AKIAEXAMPLE\n", "")
    path = write(tmp_path / "full.yaml", text)
    code, out, _ = check(capsys, "-c", path)
    assert code == 0
    again = write(tmp_path / "again.yaml", out)
    first, second = load_config(path), load_config(again)
    assert config.dataclasses.replace(second, source=first.source) == first


def test_config_check_reports_every_mistake_and_exits_1(tmp_path, capsys) -> None:
    path = write(tmp_path / "bad.yaml", """
        providers:
          local: {type: local, base_path: /srv/x, colour: blue}
          s3: {type: s3, sse: AES512, storage_class: GLACIER}
        default_provider: s3
        cache: {max_size: 20 gigs}
        """)
    code, out, err = check(capsys, "-c", path)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == f"storefs: config {path} (found by -c): 5 mistakes"
    assert [line.split(": ")[1] for line in lines[1:]] == [
        "providers.local.colour", "providers.s3.bucket", "providers.s3.sse", "providers.s3.storage_class",
        "cache.max_size"]
    assert all(line.startswith(f"  {path}: ") for line in lines[1:])


def test_config_check_says_which_rule_found_the_file(tmp_path, monkeypatch, capsys) -> None:
    named = write(tmp_path / "named.yaml", MINIMAL)
    monkeypatch.setenv("STOREFS_CONFIG", named)
    code, out, _ = check(capsys)
    assert code == 0 and f"# storefs config check: {named} is valid\n# found by: $STOREFS_CONFIG\n" in out
    monkeypatch.delenv("STOREFS_CONFIG")
    code, out, _ = check(capsys)
    assert code == 0 and "<embedded default> is valid\n# found by: no config file (no -c" in out


def test_config_check_and_mount_warn_about_readable_secrets(tmp_path, monkeypatch, capsys) -> None:
    from storefs.cli import _mount_config, build_parser
    monkeypatch.setenv("S3_TOKEN", "t")
    path = write(tmp_path / "full.yaml", FULL, 0o644)
    code, _, err = check(capsys, "-c", path)
    assert code == 0 and err.startswith(f"storefs: WARNING: {path} holds secrets (providers.s3.secret_access_key)")
    _mount_config(build_parser().parse_args(["mount", "-c", path, str(tmp_path / "mnt")]))
    assert capsys.readouterr().err.startswith(f"storefs: WARNING: {path} holds secrets")
    os.chmod(path, 0o600)
    _mount_config(build_parser().parse_args(["mount", "-c", path, str(tmp_path / "mnt")]))
    assert capsys.readouterr().err == ""


def test_mount_and_the_admin_commands_find_the_config_without_c(tmp_path, monkeypatch) -> None:
    from storefs.admin.common import Store
    from storefs.cli import _mount_config, build_parser
    user = write(tmp_path / "home/.config/storefs/config.yaml",
                 f"providers: {{here: {{type: local, base_path: {tmp_path / 'data'}}}}}\n")
    (tmp_path / "data").mkdir()
    assert _mount_config(build_parser().parse_args(["mount", str(tmp_path / "mnt")])).source == user
    with Store.open(None) as store:
        assert store.cfg.source == user and list(store.providers) == ["here"]
