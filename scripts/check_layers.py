#!/usr/bin/env python3
"""The import layers of the storefs package, checked on its syntax trees (not by grep).

  - only the FUSE edge (storefs/fs.py) imports mfusepy;
  - only the S3 provider (storefs/providers/s3*.py, or a storefs/providers/s3/ package)
    and the test support package (storefs/testing/: S3 servers read with boto3) import
    botocore, boto3 or s3transfer;
  - nothing outside storefs/testing/ imports storefs.testing (the daemon never runs test code);
  - the core (storefs/core/, storefs/view/, storefs/keys.py, storefs/cache/) imports no provider
    module but storefs.providers.base (and the package itself, which re-exports base); the
    wiring (storefs/daemon.py, cli.py, admin/, providers/factory.py) may import providers.

Every import counts: at the top, inside a function (a lazy import), under TYPE_CHECKING, and
importlib.import_module()/__import__() of a constant name. Relative imports are resolved.

    python scripts/check_layers.py [PACKAGE_DIR]    # default: storefs/ next to scripts/

Exits 1 naming file, line and import for each breach, 0 when there is none.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent

FUSE = ("mfusepy",)
BOTO = ("botocore", "boto3", "s3transfer")
CORE_MODULES = ("keys.py",)              # relative to the package folder ...
CORE_FOLDERS = ("cache", "core", "view")  # ... and everything below these
PROVIDERS = "storefs.providers"
PROVIDERS_ALLOWED_IN_CORE = (PROVIDERS, f"{PROVIDERS}.base")
TESTING = "storefs.testing"
TESTING_FOLDER = "testing"  # the support package, relative to the package folder


def _within(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def _is_core(rel: PurePosixPath) -> bool:
    return rel.as_posix() in CORE_MODULES or rel.parts[0] in CORE_FOLDERS


def _is_s3_provider(rel: PurePosixPath) -> bool:
    """storefs/providers/s3*.py, or anything in a storefs/providers/s3/ package."""
    return rel.parts[:1] == ("providers",) and (
        (len(rel.parts) == 2 and rel.name.startswith("s3") and rel.suffix == ".py") or rel.parts[1] == "s3")


def _is_testing(rel: PurePosixPath) -> bool:
    return rel.parts[0] == TESTING_FOLDER


def breach(rel: PurePosixPath, module: str) -> str | None:
    """Why the module at rel (relative to the package folder) may not import module, or None."""
    if _within(module, FUSE) and rel != PurePosixPath("fs.py"):
        return "only storefs/fs.py (the FUSE edge) imports mfusepy"
    if _within(module, BOTO) and not (_is_s3_provider(rel) or _is_testing(rel)):
        return "only the S3 provider (storefs/providers/s3*.py) imports botocore/boto3"
    if _within(module, (TESTING,)) and not _is_testing(rel):
        return "only storefs/testing/ (test support) imports storefs.testing"
    if _is_core(rel) and _within(module, (PROVIDERS,)) and module not in PROVIDERS_ALLOWED_IN_CORE:
        return "the core imports no provider module but storefs.providers.base"
    return None


def _module_name(package: Path, path: Path) -> tuple[str, bool]:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _resolve(name: str | None, level: int, here: str, is_package: bool) -> str:
    """The absolute module of `from <level dots><name> import ...` written in module here."""
    if level == 0:
        return name or ""
    base = here.split(".")
    base = base if is_package else base[:-1]
    if level > 1:
        base = base[:-(level - 1)]
    return ".".join(base + ([name] if name else []))


def _is_module(package: Path, dotted: str) -> bool:
    """Whether dotted names a module or package inside this package (not a name in one)."""
    parts = dotted.split(".")
    if parts[0] != package.name:
        return False
    p = package.parent.joinpath(*parts)
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports(package: Path, path: Path, tree: ast.AST) -> Iterator[tuple[int, str, str]]:
    """(line, absolute module, the import as written) for every import in tree."""
    here, is_package = _module_name(package, path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, here, is_package)
            written = f"from {'.' * node.level}{node.module or ''} import "
            yield node.lineno, base, written + ", ".join(a.name for a in node.names)
            for alias in node.names:  # `from ..providers import s3` imports the module storefs.providers.s3
                sub = f"{base}.{alias.name}"
                if alias.name != "*" and _is_module(package, sub):
                    yield node.lineno, sub, written + alias.name
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value, f"{name}({node.args[0].value!r})"


def check(package: Path) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        rel = PurePosixPath(path.relative_to(package).as_posix())
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as e:
            problems.append(f"{path}:{e.lineno}: cannot parse: {e.msg}")
            continue
        seen = set()
        for line, module, written in imports(package, path, tree):
            why = breach(rel, module)
            if why and (line, why) not in seen:
                seen.add((line, why))
                shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                problems.append(f"{shown}:{line}: {written}: {why}")
    return problems


def main(argv: list[str]) -> int:
    package = Path(argv[1]).resolve() if len(argv) > 1 else ROOT / "storefs"
    if not (package / "__init__.py").is_file():
        print(f"check_layers: {package} is not a package folder", file=sys.stderr)
        return 2
    problems = check(package)
    for p in problems:
        print(p)
    if problems:
        print(f"check_layers: {len(problems)} import(s) break the layers", file=sys.stderr)
        return 1
    print(f"check_layers: ok ({sum(1 for _ in package.rglob('*.py'))} modules)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
