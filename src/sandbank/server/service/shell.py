"""How a shell-string command becomes an argv.

``bash -c`` costs about 1.5 ms of bash start-up per command. A string that is
plainly ``program arg arg`` — no quoting, expansion, redirection, globbing,
assignment or builtin-only word — means the same run directly, so it skips
the shell. Anything else goes through ``/bin/bash -c`` unchanged.
"""

from __future__ import annotations

import re

SHELL = "/bin/bash"

# Only characters that no shell treats specially (no quotes, $, *, ?, [, ~, ;, &,
# |, <, >, (, ), {, }, #, !, backslash or newline) and single spaces between words.
_PLAIN = re.compile(r"[A-Za-z0-9_./:,+@%-]+(?: [A-Za-z0-9_./=:,+@%-]+)*")

# Words that only exist inside the shell, or that change the shell itself;
# a program of the same name (if any) would not do what the user meant.
_SHELL_ONLY = frozenset(
    {
        "alias",
        "bg",
        "bind",
        "break",
        "builtin",
        "caller",
        "cd",
        "command",
        "compgen",
        "complete",
        "compopt",
        "continue",
        "declare",
        "dirs",
        "disown",
        "enable",
        "eval",
        "exec",
        "exit",
        "export",
        "fc",
        "fg",
        "getopts",
        "hash",
        "help",
        "history",
        "jobs",
        "let",
        "local",
        "logout",
        "mapfile",
        "popd",
        "pushd",
        "read",
        "readarray",
        "readonly",
        "return",
        "set",
        "shift",
        "shopt",
        "source",
        "suspend",
        "times",
        "trap",
        "type",
        "typeset",
        "ulimit",
        "umask",
        "unalias",
        "unset",
        "wait",
        "case",
        "do",
        "done",
        "elif",
        "else",
        "esac",
        "fi",
        "for",
        "function",
        "if",
        "in",
        "select",
        "then",
        "time",
        "until",
        "while",
    }
)


def command_argv(command: str) -> list[str]:
    if _PLAIN.fullmatch(command):
        words = command.split(" ")
        if words[0] not in _SHELL_ONLY and not words[0].startswith("-"):
            return words
    return [SHELL, "-c", command]
