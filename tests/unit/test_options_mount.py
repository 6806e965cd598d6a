"""Mount options: `storefs mount -o`, the mount(8) helper's mapping, and the fuse.conf check for allow_other."""

from __future__ import annotations

import grp
import os
import pwd
import re

import pytest

from storefs import cli
from storefs.config import FuseConfig, load_config, mount_options, parse_mount_options, with_mount_options
from storefs.errors import ConfigError, UsageError
from storefs.mount_helper import mount_args

NOBODY = pwd.getpwuid(65534).pw_name
ROOT_GROUP = grp.getgrgid(0).gr_name


@pytest.fixture
def cfg_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:
    for var in list(os.environ):
        if var.startswith("STOREFS_"):
            monkeypatch.delenv(var)
    path = tmp_path / "storefs.yaml"
    path.write_text(f"providers: {{local: {{type: local, base_path: {tmp_path / 'data'}}}}}\n"
                    f"cache: {{dir: {tmp_path / 'cache'}}}\n"
                    "fuse: {read_only: true, uid: 33, attr_timeout: 5s}\n")
    return str(path)


# ---- -o parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize("opts, expected", [
    (["allow_other"], {"allow_other": True}),
    (["allow_root"], {"allow_root": True}),
    (["ro"], {"read_only": True}),
    (["rw"], {"read_only": False}),
    (["ro,rw"], {"read_only": False}),  # the last one wins, as in mount(8)
    (["rw", "ro"], {"read_only": True}),
    (["uid=33"], {"uid": 33}),
    ([f"uid={NOBODY}"], {"uid": 65534}),
    (["gid=0"], {"gid": 0}),
    ([f"gid={ROOT_GROUP}"], {"gid": 0}),
    (["umask=022"], {"umask": 0o022}),
    (["umask=0"], {"umask": 0}),
    (["file_mode=0640"], {"file_mode": 0o640}),
    (["file_mode=640"], {"file_mode": 0o640}),  # always octal on the command line
    (["dir_mode=0o2775"], {"dir_mode": 0o2775}),
    (["relatime"], {"atime": "relatime"}),
    (["strictatime"], {"atime": "strictatime"}),
    (["noatime"], {"atime": "noatime"}),
    (["atime=noatime"], {"atime": "noatime"}),
    (["default_permissions"], {}),  # always on: accepted, changes nothing
    (["attr_timeout=1s"], {"attr_timeout": 1.0}),
    (["entry_timeout=250ms,negative_timeout=0"], {"entry_timeout": 0.25, "negative_timeout": 0.0}),
    (["dir_cache_ttl=1m"], {"dir_cache_ttl": 60.0}),
    (["read_ahead=1MiB"], {"read_ahead": 1 << 20}),
    (["read_only=true"], {"read_only": True}),
    ([" allow_other , ro ,,"], {"allow_other": True, "read_only": True}),
    (["allow_other,ro,uid=33,gid=0,umask=022,file_mode=0640,noatime"],
     {"allow_other": True, "read_only": True, "uid": 33, "gid": 0, "umask": 0o22, "file_mode": 0o640,
      "atime": "noatime"}),
])
def test_every_option(opts, expected) -> None:
    assert parse_mount_options(opts) == expected


@pytest.mark.parametrize("opt, key, reason", [
    ("colour=blue", "colour=blue", "unknown option"),
    ("suid", "suid", "unknown option"),
    ("ro=1", "ro=1", "unknown option"),
    ("uid", "uid", "unknown option"),  # a value option without its value
    ("uid=nosuchuser-storefs", "uid", "no user named 'nosuchuser-storefs'"),
    ("gid=nosuchgroup-storefs", "gid", "no group named"),
    ("uid=-5", "uid", "no user named '-5'"),
    ("uid=4294967295", "uid", "between 0 and 4294967294"),
    ("umask=8", "umask", "expected an octal mode"),
    ("umask=", "umask", "expected an octal mode"),
    ("file_mode=rw-r--r--", "file_mode", "expected an octal mode"),
    ("dir_mode=17777", "dir_mode", "between 0 and 07777"),
    ("atime=sometimes", "atime", "expected one of relatime, strictatime, noatime"),
    ("attr_timeout=soon", "attr_timeout", "expected a duration"),
    ("read_ahead=lots", "read_ahead", "expected a size"),
])
def test_bad_options_name_the_option_and_the_reason(opt, key, reason) -> None:
    with pytest.raises(ConfigError) as e:
        parse_mount_options([opt])
    assert (e.value.source, e.value.key) == ("-o", key)
    assert reason in e.value.reason


def test_unknown_option_lists_what_storefs_takes() -> None:
    with pytest.raises(ConfigError, match=r"unknown option \(storefs takes allow_other, allow_root, ro, rw.*uid=, "
                                          r"gid=, umask=, file_mode=, dir_mode="):
        parse_mount_options(["colour=blue"])


def test_options_override_the_config_file(cfg_file) -> None:
    cfg = load_config(cfg_file)
    assert (cfg.fuse.read_only, cfg.fuse.uid, cfg.fuse.attr_timeout) == (True, 33, 5.0)
    over = with_mount_options(cfg, ["rw,uid=65534", "attr_timeout=1s,allow_other"])
    assert (over.fuse.read_only, over.fuse.uid, over.fuse.attr_timeout, over.fuse.allow_other) == \
        (False, 65534, 1.0, True)
    assert with_mount_options(cfg, []) is cfg


def test_allow_other_and_allow_root_together_are_refused(cfg_file) -> None:
    cfg = load_config(cfg_file)
    with pytest.raises(ConfigError, match="allow_other and allow_root exclude each other"):
        with_mount_options(cfg, ["allow_other,allow_root"])
    with pytest.raises(ConfigError, match="exclude each other"):  # one from the file, one from -o
        with_mount_options(with_mount_options(cfg, ["allow_root"]), ["allow_other"])


def test_status_shows_the_options_in_effect() -> None:
    assert mount_options(FuseConfig()) == ["rw", "relatime"]
    fuse = FuseConfig(allow_other=True, read_only=True, uid=33, gid=0, umask=0o22, file_mode=0o640, atime="noatime")
    assert mount_options(fuse) == ["allow_other", "ro", "uid=33", "gid=0", "umask=0022", "file_mode=0640",
                                   "noatime"]
    assert parse_mount_options([",".join(mount_options(fuse))]) == {
        "allow_other": True, "read_only": True, "uid": 33, "gid": 0, "umask": 0o22, "file_mode": 0o640,
        "atime": "noatime"}


# ---- the command line refuses before mounting --------------------------------------------------


@pytest.mark.parametrize("opts, says", [
    (["-o", "colour=blue"], "bad mount option: -o: colour=blue: unknown option"),
    (["-o", "ro", "-o", "uid=nosuchuser-storefs"], "bad mount option: -o: uid: no user named"),
    (["-o", "allow_other,allow_root"], "allow_other and allow_root exclude each other"),
])
def test_mount_refuses_bad_options_before_touching_anything(cfg_file, tmp_path, capsys, opts, says) -> None:
    mnt = tmp_path / "no-such-mountpoint"  # the option is refused before the mountpoint is even looked at
    assert cli.main(["mount", "-c", cfg_file, *opts, str(mnt)]) == 1
    err = capsys.readouterr().err
    assert says in err, err
    assert not (tmp_path / "cache").exists(), "nothing is created for a refused mount"


def test_mount_parser_takes_repeated_o() -> None:
    args = cli.build_parser().parse_args(["mount", "-o", "ro", "-o", "uid=1,gid=2", "/m"])
    assert args.options == ["ro", "uid=1,gid=2"]


# ---- /etc/fuse.conf and allow_other ------------------------------------------------------------


@pytest.mark.parametrize("text, allowed", [
    ("user_allow_other\n", True),
    ("  user_allow_other   \n", True),
    ("mount_max = 1000\nuser_allow_other # for the web server\n", True),
    ("#user_allow_other\n", False),
    ("# user_allow_other - Using the allow_other mount option works fine as root\n", False),
    ("user_allow_others\n", False),
    ("", False),
])
def test_fuse_conf_is_read_as_fusermount3_reads_it(tmp_path, text, allowed) -> None:
    conf = tmp_path / "fuse.conf"
    conf.write_text(text)
    assert cli.fuse_conf_allows_other(str(conf)) is allowed


@pytest.mark.parametrize("option", ["allow_other", "allow_root"])
def test_a_non_root_user_needs_user_allow_other(tmp_path, option) -> None:
    conf = tmp_path / "fuse.conf"
    conf.write_text("#user_allow_other\n")
    fuse = FuseConfig(**{option: True})
    with pytest.raises(cli.CliError) as e:
        cli.check_allow_other(fuse, euid=1000, conf=str(conf))
    msg = str(e.value)
    assert msg.startswith(f"{option} needs the line `user_allow_other` in {conf}")
    assert f"echo user_allow_other >> {conf}" in msg
    with pytest.raises(cli.CliError, match="user_allow_other"):  # no file at all: the same answer
        cli.check_allow_other(fuse, euid=1000, conf=str(tmp_path / "missing.conf"))
    conf.write_text("user_allow_other\n")
    cli.check_allow_other(fuse, euid=1000, conf=str(conf))  # allowed now
    cli.check_allow_other(fuse, euid=0, conf=str(tmp_path / "missing.conf"))  # root needs no line
    cli.check_allow_other(FuseConfig(), euid=1000, conf=str(tmp_path / "missing.conf"))  # nor a private mount


def test_an_unreadable_fuse_conf_is_named(tmp_path) -> None:
    conf = tmp_path / "fuse.conf"
    conf.mkdir()  # reading it fails with EISDIR
    with pytest.raises(cli.CliError, match=re.escape(f"allow_other: cannot read {conf}")):
        cli.check_allow_other(FuseConfig(allow_other=True), euid=1000, conf=str(conf))


# ---- the mount(8) helper -------------------------------------------------------------------------


def test_helper_passes_mount_options_through() -> None:
    args, fake = mount_args(["/etc/storefs/c.yaml", "/mnt/s", "-o",
                             "rw,defaults,_netdev,nofail,nosuid,nodev,x-systemd.automount,allow_other,ro,"
                             f"uid={NOBODY},gid=0,umask=022,file_mode=0640,dir_mode=0750,noatime,"
                             "default_permissions,attr_timeout=2s,tenant=acme", "-t", "fuse.storefs"])
    assert args == ["mount", "-c", "/etc/storefs/c.yaml", "--tenant", "acme", "-o",
                    f"allow_other,ro,uid={NOBODY},gid=0,umask=022,file_mode=0640,dir_mode=0750,noatime,"
                    "default_permissions,attr_timeout=2s", "/mnt/s"]
    assert not fake


@pytest.mark.parametrize("given, passed", [
    ("ro", ["-o", "ro"]),
    ("rw", []),  # mount(8) adds rw to every mount not asked to be ro: it must not undo read_only in the config
    ("defaults", []),
    ("relatime", ["-o", "relatime"]),
    ("strictatime", ["-o", "strictatime"]),
    ("noatime", ["-o", "noatime"]),
    ("atime,diratime,nodiratime,norelatime,nostrictatime,lazytime", []),
    ("exec,noexec,suid,nosuid,dev,nodev,async,sync,dirsync,auto,noauto,user,users,nouser,owner,group", []),
    ("_netdev,nofail,x-systemd.requires=network-online.target,x-mount.mkdir,comment=x,user=alice,helper=x", []),
    ("allow_root", ["-o", "allow_root"]),
])
def test_helper_maps_what_mount8_passes(given, passed) -> None:
    args, _ = mount_args(["c.yaml", "/m", "-o", given])
    assert args == ["mount", "-c", "c.yaml", *passed, "/m"]


@pytest.mark.parametrize("argv, says", [
    (["c.yaml", "/m", "-o", "colour=blue"], "unknown option 'colour=blue'"),
    (["c.yaml", "/m", "-o", "uid=nosuchuser-storefs"], "option uid=nosuchuser-storefs: no user named"),
    (["c.yaml", "/m", "-s", "-o", "umask=9"], "option umask=9: expected an octal mode"),  # known but wrong: even -s
])
def test_helper_refuses_before_mounting(argv, says) -> None:
    with pytest.raises(UsageError, match=re.escape(says)):
        mount_args(argv)


def test_helper_sloppy_ignores_only_unknown_options(capsys) -> None:
    args, _ = mount_args(["c.yaml", "/m", "-s", "-o", "colour=blue,ro"])
    assert args == ["mount", "-c", "c.yaml", "-o", "ro", "/m"]
    assert "ignoring unknown option colour=blue" in capsys.readouterr().err
