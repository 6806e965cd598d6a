"""mount.storefs: what mount(8) runs for a `fuse.storefs` file system, so /etc/fstab works.

    /etc/fstab:  /etc/storefs/config.yaml  /mnt/store  fuse.storefs  defaults,_netdev,allow_other,tenant=acme  0 0
    shell:       mount -t fuse.storefs /etc/storefs/config.yaml /mnt/store -o ro,uid=www-data,log_level=debug

mount(8) looks for /sbin/mount.fuse.storefs and runs it as `SOURCE MOUNTPOINT [-sfnv]
[-N NS] [-o OPTIONS] [-t TYPE]`. SOURCE is the config file (`storefs` or `none`: the
config `storefs mount` finds without -c, as README's "Which config file" says). tenant,
log_level and log_file become `storefs mount` flags; the mount options (allow_other, ro,
uid=, umask=, noatime ...) go to `storefs mount -o` unchanged; the generic options
(defaults, _netdev, nofail, x-systemd.* ...) are mount(8)'s and systemd's business. `rw`
is ignored too: mount(8) gives it to every helper that is not asked for `ro`, so it must
not undo `read_only: true` in the config.
"""

from __future__ import annotations

import os
import shlex
import sys

from .config import parse_mount_options
from .errors import ConfigError, UsageError

HELPER_NAMES = ("mount.fuse.storefs", "mount.storefs")
#: where mount(8) looks for mount.TYPE helpers
HELPER_DIR = "/sbin"
#: storefs options -> `storefs mount` flags
FLAGS = {"tenant": "--tenant", "log_level": "--log-level", "log_file": "--log-file"}
#: options of mount(8), systemd and fuse that mean nothing to storefs (the kernel's FUSE mounts
#: are nosuid and nodev whatever fstab says)
GENERIC = frozenset("""defaults _netdev auto noauto nofail rw user users nouser owner group exec noexec suid
    nosuid dev nodev atime norelatime nostrictatime diratime nodiratime lazytime nolazytime async sync dirsync
    silent loud""".split())
GENERIC_PREFIXES = ("x-", "comment=", "user=", "helper=")

#: python's "safe path" flag (3.11): `-m` does not put the current folder first on sys.path
SAFE_PATH_FLAG = "-P"
EXIT_USAGE = 1   # mount(8): incorrect invocation
EXIT_FAILED = 32  # mount(8): mount failure


def _is_mount_option(opt: str) -> bool:
    """Whether `storefs mount -o` takes opt (the value is checked too: a bad uid= fails here, before mounting)."""
    try:
        parse_mount_options([opt])
    except ConfigError as e:
        if e.reason.startswith("unknown option"):
            return False
        raise UsageError(f"option {opt}: {e.reason}") from None
    return True


def mount_args(argv: list[str]) -> tuple[list[str], bool]:
    """`storefs mount` arguments for a mount(8) helper call, and whether it is a fake (-f) mount."""
    positional: list[str] = []
    options: list[str] = []
    sloppy = fake = False
    it = iter(argv)
    for arg in it:
        if arg == "-o":
            options += next(it, "").split(",")
        elif arg.startswith("-o"):
            options += arg[2:].split(",")
        elif arg in ("-t", "-N"):
            if arg == "-N":
                raise UsageError("-N (mount namespaces) is not supported")
            next(it, None)  # the type: fuse.storefs, whatever mount(8) was given
        elif arg.startswith("-") and len(arg) > 1:
            sloppy |= "s" in arg
            fake |= "f" in arg  # -n (no mtab) and -v (verbose) change nothing here
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise UsageError("usage: mount.storefs CONFIG MOUNTPOINT [-o allow_other,ro,uid=U,tenant=T,log_level=L,...]")
    source, mountpoint = positional
    args = ["mount"]
    if source not in ("storefs", "none"):
        args += ["-c", source]
    passed: list[str] = []
    for opt in filter(None, (o.strip() for o in options)):
        name, eq, value = opt.partition("=")
        if name in FLAGS and eq and value:
            args += [FLAGS[name], value]
        elif opt in GENERIC or opt.startswith(GENERIC_PREFIXES):
            continue
        elif _is_mount_option(opt):
            passed.append(opt)
        elif sloppy:
            print(f"mount.storefs: ignoring unknown option {opt} (-s)", file=sys.stderr)
        else:
            known = ", ".join(f"{k}=..." for k in FLAGS)
            raise UsageError(f"unknown option {opt!r} (storefs takes {known}, the options of `storefs mount -o` "
                             "such as allow_other, ro, uid=, gid=, umask=, file_mode=, dir_mode=, noatime; "
                             "generic mount options are ignored)")
    if passed:
        args += ["-o", ",".join(passed)]
    return args + [mountpoint], fake


def main(argv: list[str] | None = None) -> int:
    """Entry point of mount.storefs / /sbin/mount.fuse.storefs: mount, return once usable."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, fake = mount_args(argv)
    except UsageError as e:
        print(f"mount.storefs: {e}", file=sys.stderr)
        return EXIT_USAGE
    if fake:
        return 0
    from .cli import main as storefs_main
    return EXIT_FAILED if storefs_main(args) else 0


def install(directory: str = HELPER_DIR, remove: bool = False) -> list[str]:
    """Put mount.fuse.storefs (and mount.storefs) where mount(8) finds them; what was done, in words.

    The helper is a two-line script that runs this Python, not a link to a console script:
    at boot there is no virtualenv or pyenv shim on PATH to find it through. `-P` keeps the
    current folder off the import path: mount(8) runs the helper (as root) in whatever folder
    the caller stands in, and a `storefs/` folder there must not stand in for the package.
    """
    done = []
    for name in HELPER_NAMES:
        path = os.path.join(directory, name)
        if os.path.lexists(path):
            os.unlink(path)
            if remove:
                done.append(f"removed {path}")
    if remove:
        return done or [f"no helper in {directory}"]
    main_path = os.path.join(directory, HELPER_NAMES[0])
    with open(main_path, "w") as f:
        f.write("#!/bin/sh\n# written by `storefs install-helper`: mount(8) runs this for fuse.storefs mounts\n"
                f"exec {shlex.quote(sys.executable)} {SAFE_PATH_FLAG} -m storefs.mount_helper \"$@\"\n")
    os.chmod(main_path, 0o755)
    os.symlink(HELPER_NAMES[0], os.path.join(directory, HELPER_NAMES[1]))
    return [f"installed {main_path} (runs {sys.executable} {SAFE_PATH_FLAG} -m storefs.mount_helper)",
            f"linked {os.path.join(directory, HELPER_NAMES[1])} -> {HELPER_NAMES[0]}"]


if __name__ == "__main__":
    sys.exit(main())
