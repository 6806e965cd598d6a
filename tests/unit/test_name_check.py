"""The name check answers the same on its fast path (printable names) as on the character walk."""

from __future__ import annotations

from storefs.layout import _name_problem


def test_every_ascii_control_character_is_refused_wherever_it_stands() -> None:
    for code in [*range(1, 0x20), 0x7F]:  # NUL has its own answer, with '/'
        for name in (f"{chr(code)}a", f"a{chr(code)}b", f"ab{chr(code)}"):
            problem = _name_problem(name)
            assert problem is not None and f"U+{code:04X}" in problem, (name, problem)


def test_printable_names_and_other_non_printable_characters_pass() -> None:
    # printable: the fast path; NBSP, zero-width space, NEL and a line separator are not printable
    # to Python, yet storefs never refused them: they take the walk and pass as before
    for name in ("file0001.bin", "café.png", "日本.txt", "a b", "x\u00a0y", "\u200bz", "n\u0085", "l\u2028m"):
        assert _name_problem(name) is None, name
