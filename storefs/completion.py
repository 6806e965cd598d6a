"""`storefs completion bash|zsh`: shell completion scripts, generated from the command line parser itself.

The scripts are written from `build_parser()` each time they are asked for, so every command,
sub-command (at any depth), option and choice the parser has is completed, including ones
added after this module was written. An option's value completes from its choices when it has
some, else as a file name; a positional argument likewise.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

SHELLS = ("bash", "zsh")
PROG = "storefs"


@dataclass
class Spec:
    """One command path (`""`, `"mount"`, `"config check"`): what may follow it on the command line."""

    path: str
    subs: dict[str, str] = field(default_factory=dict)         # sub-command -> help
    options: dict[str, str] = field(default_factory=dict)      # option string -> help
    valued: list[str] = field(default_factory=list)            # option strings that take a value
    choices: dict[str, list[str]] = field(default_factory=dict)  # option string ("" = positional) -> choices


def _help(action: argparse.Action) -> str:
    """An action's help on one line, without argparse's %(default)s-style placeholders."""
    text = " ".join((action.help or "").split())
    if text == argparse.SUPPRESS:
        return ""
    try:
        return text % {**vars(action), "prog": PROG}
    except (KeyError, TypeError, ValueError):
        return text


def specs(parser: argparse.ArgumentParser, path: str = "") -> list[Spec]:
    """The command paths of parser, depth first, each with its sub-commands, options and choices."""
    spec = Spec(path)
    found = [spec]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: _help(a) for a in action._choices_actions}
            for name, sub in action.choices.items():
                spec.subs[name] = helps.get(name, "")
                found += specs(sub, f"{path} {name}".strip())
        elif action.option_strings:
            if action.help == argparse.SUPPRESS:
                continue
            for opt in action.option_strings:
                spec.options[opt] = _help(action)
                if action.nargs != 0:
                    spec.valued.append(opt)
                    if action.choices:
                        spec.choices[opt] = [str(c) for c in action.choices]
        elif action.choices and "" not in spec.choices:
            spec.choices[""] = [str(c) for c in action.choices]
    return found


def _sh_quote(text: str) -> str:
    """A single-quoted shell word."""
    return "'" + text.replace("'", "'\\''") + "'"


def bash_script(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for parser (source it, or put it in bash-completion's completions folder)."""
    spec_cases, choice_cases = [], []
    for s in specs(parser):
        spec_cases.append(f"        {_sh_quote(s.path)}) subs={_sh_quote(' '.join(s.subs))}; "
                          f"opts={_sh_quote(' '.join(s.options))}; valued={_sh_quote(' '.join(s.valued))} ;;")
        for opt, values in s.choices.items():
            choice_cases.append(f"        {_sh_quote(s.path + '|' + opt)}) echo {_sh_quote(' '.join(values))} ;;")
    return BASH_TEMPLATE.format(prog=PROG, fn=f"_{PROG}", spec_cases="\n".join(spec_cases),
                                choice_cases="\n".join(choice_cases) or "        *) ;;")


BASH_TEMPLATE = """\
# {prog} completion for bash, generated from {prog}'s own parser by `{prog} completion bash`
{fn}_spec() {{  # $1: a command path ("", "mount", ...) -> subs, opts, valued
    case "$1" in
{spec_cases}
        *) subs=''; opts=''; valued='' ;;
    esac
}}

{fn}_choices() {{  # $1: "PATH|OPTION" ("PATH|" for a positional) -> the values it takes
    case "$1" in
{choice_cases}
    esac
}}

{fn}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local path="" subs opts valued word i skip=0 choices
    {fn}_spec ""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        if ((skip)); then skip=0; continue; fi
        if [[ $word == -* ]]; then
            [[ $word != *=* && " $valued " == *" $word "* ]] && skip=1
            continue
        fi
        if [[ -n $subs && " $subs " == *" $word "* ]]; then
            path="${{path:+$path }}$word"
            {fn}_spec "$path"
        fi
    done
    COMPREPLY=()
    if ((skip)); then  # the value of an option: its choices, else file names (complete -o default)
        choices="$({fn}_choices "$path|$prev")"
        [[ -n $choices ]] && COMPREPLY=($(compgen -W "$choices" -- "$cur"))
        return 0
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ -n $subs ]]; then
        COMPREPLY=($(compgen -W "$subs" -- "$cur"))
    else
        choices="$({fn}_choices "$path|")"
        [[ -n $choices ]] && COMPREPLY=($(compgen -W "$choices" -- "$cur"))
    fi
    return 0
}}
complete -o default -F {fn} {prog}
"""


def _zsh_item(name: str, text: str) -> str:
    """One `name:description` word of a _describe array (colons in the name escaped)."""
    return _sh_quote(name.replace(":", "\\:") + (":" + text if text else ""))


def zsh_script(parser: argparse.ArgumentParser) -> str:
    """A zsh completion script for parser (put it on $fpath as _storefs, or source it after compinit)."""
    spec_cases, choice_cases = [], []
    for s in specs(parser):
        subs = " ".join(_zsh_item(n, t) for n, t in s.subs.items())
        opts = " ".join(_zsh_item(n, t) for n, t in s.options.items())
        spec_cases.append(f"        {_sh_quote(s.path)}) subs=({subs}); opts=({opts}); "
                          f"valued=({' '.join(_sh_quote(v) for v in s.valued)}) ;;")
        for opt, values in s.choices.items():
            choice_cases.append(f"        {_sh_quote(s.path + '|' + opt)}) choices=("
                                f"{' '.join(_sh_quote(v) for v in values)}) ;;")
    return ZSH_TEMPLATE.format(prog=PROG, fn=f"_{PROG}", spec_cases="\n".join(spec_cases),
                               choice_cases="\n".join(choice_cases) or "        *) ;;")


ZSH_TEMPLATE = """\
#compdef {prog}
# {prog} completion for zsh, generated from {prog}'s own parser by `{prog} completion zsh`

{fn}_spec() {{  # $1: a command path ("", "mount", ...) -> subs, opts (name:help), valued
    case "$1" in
{spec_cases}
        *) subs=(); opts=(); valued=() ;;
    esac
}}

{fn}_choices() {{  # $1: "PATH|OPTION" ("PATH|" for a positional) -> choices
    choices=()
    case "$1" in
{choice_cases}
    esac
}}

{fn}() {{
    local cmdpath="" word skip=0 i
    local -a subs opts valued choices names
    {fn}_spec ""
    for ((i = 2; i < CURRENT; i++)); do
        word="${{words[i]}}"
        if ((skip)); then skip=0; continue; fi
        if [[ $word == -* ]]; then
            [[ $word != *=* && ${{valued[(Ie)$word]}} -gt 0 ]] && skip=1
            continue
        fi
        names=(${{subs%%:*}})
        if (( ${{#subs}} && ${{names[(Ie)$word]}} )); then
            cmdpath="${{cmdpath:+$cmdpath }}$word"
            {fn}_spec "$cmdpath"
        fi
    done
    if ((skip)); then  # the value of an option: its choices, else file names
        {fn}_choices "$cmdpath|${{words[CURRENT-1]}}"
        if (( ${{#choices}} )); then compadd -a choices; else _files; fi
        return
    fi
    if [[ $PREFIX == -* ]]; then
        _describe -t options option opts
    elif (( ${{#subs}} )); then
        _describe -t commands command subs
    else
        {fn}_choices "$cmdpath|"
        if (( ${{#choices}} )); then compadd -a choices; else _files; fi
    fi
}}

if [[ ${{zsh_eval_context[-1]}} == loadautofunc ]]; then
    {fn} "$@"
else
    compdef {fn} {prog}
fi
"""


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script of parser for shell (one of SHELLS)."""
    return bash_script(parser) if shell == "bash" else zsh_script(parser)
