"""Operator commands that work on a config's providers directly, mounted or not: stats, ls, cleanup, migrate."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ..errors import StorefsError, UsageError
from .common import AdminError
from .escape import printable_lines

log = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace], int]


def _guarded(fn: Command) -> Command:
    """One line 'storefs: ...' and exit 2 (bad argument) or 1 (anything else), never a traceback."""

    def run(args: argparse.Namespace) -> int:
        logging.basicConfig(level=logging.WARNING, format="storefs: %(levelname)s %(name)s: %(message)s")
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            return fn(args)
        except (AdminError, UsageError) as e:
            print(printable_lines(f"storefs: {e}"), file=sys.stderr)
            return e.exit_code
        except StorefsError as e:
            print(printable_lines(f"storefs: {args.command}: {e}"), file=sys.stderr)
            return 1

    return run


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register stats, ls, cleanup and migrate on the storefs command line."""
    from .cleanup import cmd_cleanup
    from .inventory import cmd_ls, cmd_stats
    from .migrate import DEFAULT_JOBS, cmd_migrate

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", help="YAML config file (default: the one `storefs mount` finds without -c)")

    s = sub.add_parser("stats", help="artifacts, files and bytes per level, across providers")
    config_option(s)
    s.add_argument("--by", metavar="LEVEL", help="one row per tenant, type or board (a layout level)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("prefix", nargs="?", default="", help="only below this key prefix (default: everything)")
    s.set_defaults(func=_guarded(cmd_stats))

    ls = sub.add_parser("ls", help="artifacts below a prefix: size, files, newest mtime, provider, content types")
    config_option(ls)
    ls.add_argument("--since", metavar="DATE", help="only artifacts modified at or after DATE (ISO date or date-time)")
    ls.add_argument("--until", metavar="DATE", help="only artifacts modified before DATE (a bare date: up to its end)")
    ls.add_argument("--type", metavar="T",
                    help="a layout type (image, video...) or a content type (image/png, video/*)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("prefix", help="e.g. t1/image or t1/image/board1")
    ls.set_defaults(func=_guarded(cmd_ls))

    c = sub.add_parser("cleanup", help="delete artifacts older than an age, keeping the newest N per board")
    config_option(c)
    c.add_argument("--older-than", required=True, metavar="AGE", help="30d, 12h, 90m, 45s, 2w")
    c.add_argument("--keep-count", type=int, default=0, metavar="N",
                   help="always keep the newest N artifacts of every board (default 0)")
    c.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    c.add_argument("prefix", help="e.g. t1 or t1/image/board1")
    c.set_defaults(func=_guarded(cmd_cleanup))

    m = sub.add_parser("migrate", help="copy every key from one provider to another, verified and resumable",
                       description="Copy every key from one provider to another, verified and resumable. "
                                   "To a local provider, setuid and setgid bits in object metadata are dropped "
                                   "(never a setuid file from a bucket), and the files belong to the user who "
                                   "runs the migration; root keeps the objects' uid/gid with --keep-owner.")
    config_option(m)
    m.add_argument("--from", dest="source", required=True, metavar="P", help="source provider name")
    m.add_argument("--to", dest="dest", required=True, metavar="Q", help="destination provider name")
    m.add_argument("--delete-source", action="store_true", help="delete each source key once its copy is verified")
    m.add_argument("--state", metavar="FILE",
                   help="resume state (default: a file named by P and Q in $XDG_STATE_HOME/storefs, "
                        "~/.local/state/storefs or, for root, /var/lib/storefs)")
    m.add_argument("--keep-owner", action="store_true",
                   help="to a local provider: give files the uid/gid of their object metadata (root only; "
                        "without it they belong to you). Setuid/setgid bits are dropped either way")
    m.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help=f"parallel copies (default {DEFAULT_JOBS})")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    m.add_argument("prefix", nargs="?", default="", help="only keys below this prefix (default: everything)")
    m.set_defaults(func=_guarded(cmd_migrate))
