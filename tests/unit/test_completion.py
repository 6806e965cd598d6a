"""`storefs completion bash|zsh`: scripts made from the parser, checked by the shells themselves."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

from storefs.cli import build_parser
from storefs.completion import bash_script, specs, zsh_script

SHELL_TIMEOUT = 30


def _storefs_completion(shell: str) -> str:
    res = subprocess.run([sys.executable, "-m", "storefs", "completion", shell], capture_output=True, text=True,
                         timeout=SHELL_TIMEOUT, check=True)
    return res.stdout


def _bash_complete(script: str, line: str) -> set[str]:
    """What bash offers for TAB at the end of line, through the script's completion function."""
    driver = (script + '\nread -ra COMP_WORDS <<< "$1"\n[[ "$1" == *" " ]] && COMP_WORDS+=("")\n'
              'COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n_storefs\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    res = subprocess.run(["bash", "-c", driver, "bash", line], capture_output=True, text=True,
                         timeout=SHELL_TIMEOUT, check=True)
    return {w for w in res.stdout.split("\n") if w}


def test_the_bash_script_is_valid_bash(tmp_path):
    path = tmp_path / "storefs.bash"
    path.write_text(_storefs_completion("bash"))
    res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=SHELL_TIMEOUT)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(("line", "expected"), [
    ("storefs st", {"stats", "status"}),
    ("storefs mount --", {"--help", "--config", "--foreground", "--log-level", "--log-file", "--tenant"}),
    ("storefs completion ", {"bash", "zsh"}),
    ("storefs migrate --st", {"--state"}),
    ("storefs --version un", {"unmount"}),
    ("storefs mount -c c.yaml --f", {"--foreground"}),  # -c's value is skipped, not taken for a command
    ("storefs mount -c ", set()),                         # a file name: bash's default completion
    ("storefs status /mnt/x --", {"--help", "--json"}),
])
def test_bash_completes_commands_options_and_choices(line, expected):
    assert _bash_complete(_storefs_completion("bash"), line) == expected


def test_every_command_and_option_of_the_parser_is_in_the_scripts():
    parser = build_parser()
    bash, zsh = bash_script(parser), zsh_script(parser)
    top = specs(parser)[0]
    assert {"mount", "unmount", "status", "flush", "url", "completion", "migrate"} <= set(top.subs)
    for spec in specs(parser):
        for word in [*spec.subs, *spec.options]:
            assert word in bash and word in zsh, (spec.path, word)


def test_an_option_added_later_is_completed_without_touching_the_generator():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    later = sub.add_parser("later", help="a command added after the generator was written")
    check = later.add_subparsers(dest="later_command").add_parser("check", help="a nested one")
    check.add_argument("--format", choices=["text", "json"])
    script = bash_script(parser)
    assert _bash_complete(script, "storefs later ") == {"check"}
    assert _bash_complete(script, "storefs later check --f") == {"--format"}
    assert _bash_complete(script, "storefs later check --format j") == {"json"}


def test_the_config_check_command_is_completed():
    script = bash_script(build_parser())
    assert _bash_complete(script, "storefs config ") == {"check"}
    assert "-c" in _bash_complete(script, "storefs config check -")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_the_zsh_script_is_valid_zsh_and_walks_to_the_command(tmp_path):
    path = tmp_path / "_storefs"
    path.write_text(_storefs_completion("zsh"))
    res = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True, timeout=SHELL_TIMEOUT)
    assert res.returncode == 0, res.stderr
    # zsh's completion functions stubbed to print what they are given
    driver = ("compdef() { : }\n_describe() { print -rl -- \"${(@P)4}\" }\n"
              "compadd() { print -rl -- \"${(@P)2}\" }\n_files() { print -r -- '<files>' }\n"
              f"source {path}\n"
              "words=(storefs completion ''); CURRENT=3; PREFIX=''; _storefs; print -- ---\n"
              "words=(storefs mount -c c.yaml --); CURRENT=5; PREFIX='--'; _storefs; print -- ---\n"
              "words=(storefs mount -c ''); CURRENT=4; PREFIX=''; _storefs\n")
    res = subprocess.run(["zsh", "-f", "-c", driver], capture_output=True, text=True, timeout=SHELL_TIMEOUT)
    assert res.returncode == 0, res.stderr
    shells, mount_opts, config_value = res.stdout.split("---\n")
    assert shells.split() == ["bash", "zsh"]
    assert "--foreground:stay in the foreground" in mount_opts.splitlines()
    assert config_value.strip() == "<files>"
