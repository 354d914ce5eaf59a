"""Static import closure of the pipeline's stage commands, and the code deps dvc.yaml should list for them.

Everything here reads source with ``ast``; nothing under ``pipeline/`` is imported, so a broken or slow-to-import
module cannot hide a dependency, and a copy of the package in a temporary folder can be checked the same way.

A stage's code is what ``python -m pipeline <command>`` can execute beyond the shared wiring (``pipeline/cli.py``,
``pipeline/__main__.py``):

* the ``pipeline.*`` modules imported inside the command function (anywhere in its body);
* the ``pipeline.*`` names of cli.py's module scope that the command uses (``paths``, ``get_task``, ``load_params``,
  ``DEFAULT_PARAMS_PATH``...), through the cli.py helpers it calls (``_stage``, ``_user_errors``...) and the module
  constants it reads (``USER_ERRORS``, ``TeacherOption``...), with the imports inside those helpers;
* then, transitively, every ``pipeline.*`` module those modules import, at module level or inside a function.

``from pipeline.x import y`` counts as module ``pipeline.x.y`` when that is a module, else as ``pipeline.x``; an
import also runs its parent packages' ``__init__.py``, which count when they are not empty. Relative imports and
literal ``importlib.import_module("pipeline.x")`` count too; imports under ``if TYPE_CHECKING:`` do not (they never
run). cli.py's module-level imports that a command does not use are not its code, like cli.py itself.

``python -m tests.import_closure`` prints each stage's drift; ``--write`` rewrites dvc.yaml's code deps to match.
"""

from __future__ import annotations

import ast
import functools
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "pipeline"
WIRING = {"pipeline/cli.py", "pipeline/__main__.py"}  # shared by every stage, not listed as any stage's dep
CLI_MODULE = f"{PACKAGE}.cli"


def module_file(root: Path, module: str) -> Path | None:
    """The source file of ``module`` (dotted) under ``root``: ``a/b.py`` or the package's ``a/b/__init__.py``."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _in_package(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _resolve_from(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` names, relative levels resolved against ``current``."""
    if node.level == 0:
        return node.module or ""
    parts = current.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _import_bindings(
    node: ast.Import | ast.ImportFrom, root: Path, current: str, is_package: bool
) -> Iterator[tuple[str, str]]:
    """``(bound name, module it makes available)`` for every alias of an import statement (any package)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            # ``import a.b.c`` binds ``a`` but loads a, a.b and a.b.c; ``import a.b.c as x`` binds x to a.b.c.
            yield (alias.asname or alias.name.split(".")[0]), alias.name
        return
    source = _resolve_from(node, current, is_package)
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        is_submodule = alias.name != "*" and module_file(root, submodule) is not None
        yield (alias.asname or alias.name), (submodule if is_submodule else source)


def _with_parents(module: str) -> Iterator[str]:
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        yield ".".join(parts[:end])


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_walk(tree: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` minus the bodies of ``if TYPE_CHECKING:`` blocks, which never run (their ``else`` does)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if _is_type_checking(node):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def _dynamic_import(node: ast.AST) -> str | None:
    """The target of a literal ``__import__("x")`` / ``importlib.import_module("x")`` call."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return None
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    target = node.args[0].value
    return target if name in {"__import__", "import_module"} and isinstance(target, str) else None


def imported_modules(tree: ast.AST, root: Path, current: str, is_package: bool = False) -> set[str]:
    """Every ``pipeline.*`` module an AST imports, wherever the import statement is (module level or nested), except
    in ``if TYPE_CHECKING:`` blocks (annotations only: the code they name never runs)."""
    found: set[str] = set()
    for node in _runtime_walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.update(module for _, module in _import_bindings(node, root, current, is_package))
        elif (target := _dynamic_import(node)) is not None:
            found.add(target)
    return {parent for module in found if _in_package(module) for parent in _with_parents(module)}


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _file_imports(root: Path, module: str, path: Path) -> set[str]:
    """``imported_modules`` of a module's file, parsed once per version of the file."""
    stat = path.stat()
    return _cached_file_imports(str(root), module, str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)
def _cached_file_imports(root: str, module: str, path: str, mtime_ns: int, size: int) -> frozenset[str]:
    del mtime_ns, size  # only the cache key: a changed file is parsed again
    return frozenset(imported_modules(_parse(Path(path)), Path(root), module, Path(path).name == "__init__.py"))


def module_closure(root: Path, modules: Iterable[str]) -> set[str]:
    """``modules`` and every ``pipeline.*`` module they import, transitively (modules without a file are dropped)."""
    seen: set[str] = set()
    todo = [parent for module in modules for parent in _with_parents(module)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = module_file(root, module)
        if path is None:
            continue
        seen.add(module)
        todo.extend(_file_imports(root, module, path) - seen)
    return seen


def import_chain(root: Path, modules: Iterable[str], target: str) -> list[str]:
    """A shortest chain of imports from one of ``modules`` to ``target`` (dotted), e.g. to say why a file is a dep."""
    previous: dict[str, str | None] = {module: None for module in modules}
    queue = list(previous)
    while queue:
        module = queue.pop(0)
        if module == target:
            chain = [module]
            while (parent := previous[chain[-1]]) is not None:
                chain.append(parent)
            return chain[::-1]
        path = module_file(root, module)
        if path is None:
            continue
        for imported in sorted(_file_imports(root, module, path)):
            if imported not in previous:
                previous[imported] = module
                queue.append(imported)
    return []


def _counts(path: Path) -> bool:
    """A package ``__init__.py`` with nothing in it runs no code: it is not a dependency."""
    return path.name != "__init__.py" or bool(path.read_text().strip())


def closure_files(root: Path, modules: Iterable[str]) -> set[str]:
    """The files (relative to ``root``, POSIX) of ``module_closure``, without empty ``__init__.py`` files."""
    files = set()
    for module in module_closure(root, modules):
        path = module_file(root, module)
        if path is not None and _counts(path):
            files.add(path.relative_to(root).as_posix())
    return files


# --- cli.py: which function a stage command runs, and what it uses -------------------------------------------------


@dataclass
class CliModule:
    """cli.py's module scope: its commands (``"shards verify"`` -> function), functions, constants, imported names."""

    commands: dict[str, ast.FunctionDef] = field(default_factory=dict)
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)
    constants: dict[str, ast.AST] = field(default_factory=dict)
    imported: dict[str, str] = field(default_factory=dict)


def _typer_apps(tree: ast.Module) -> dict[str, str]:
    """Typer app variable -> command prefix: ``app`` -> ``""``, ``shards_app`` -> ``"shards"`` (via add_typer)."""
    prefixes = {"app": ""}
    for node in ast.walk(tree):
        call = node if isinstance(node, ast.Call) else None
        if call is None or not isinstance(call.func, ast.Attribute) or call.func.attr != "add_typer":
            continue
        if not (isinstance(call.func.value, ast.Name) and call.args and isinstance(call.args[0], ast.Name)):
            continue
        names = [kw.value.value for kw in call.keywords if kw.arg == "name" and isinstance(kw.value, ast.Constant)]
        if not names:
            continue
        name = names[0]
        parent = prefixes.get(call.func.value.id, "")
        prefixes[call.args[0].id] = f"{parent} {name}".strip()
    return prefixes


def _command_name(decorator: ast.expr, function: ast.FunctionDef, prefixes: dict[str, str]) -> str | None:
    """``@app.command("mt-teacher")`` -> ``"mt-teacher"``; ``@shards_app.command()`` on ``shards_verify`` ... ."""
    call = decorator if isinstance(decorator, ast.Call) else None
    func = call.func if call else decorator
    if not (isinstance(func, ast.Attribute) and func.attr == "command" and isinstance(func.value, ast.Name)):
        return None
    if func.value.id not in prefixes:
        return None
    explicit = call.args[0].value if call and call.args and isinstance(call.args[0], ast.Constant) else None
    name = explicit or function.name.replace("_", "-")  # Typer's default name for a command function
    return f"{prefixes[func.value.id]} {name}".strip()


def read_cli(root: Path) -> CliModule:
    path = module_file(root, CLI_MODULE)
    assert path is not None, f"no {CLI_MODULE} under {root}"
    tree = _parse(path)
    prefixes = _typer_apps(tree)
    cli = CliModule()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            cli.imported.update(_import_bindings(node, root, CLI_MODULE, False))
        elif isinstance(node, ast.FunctionDef):
            cli.functions[node.name] = node
            for decorator in node.decorator_list:
                name = _command_name(decorator, node, prefixes)
                if name is not None:
                    cli.commands[name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and node.value is not None:
                    cli.constants[target.id] = node.value
    return cli


def _free_names(node: ast.AST) -> set[str]:
    """Names an AST reads that it does not bind itself, i.e. cli.py globals. A command's ``teacher`` or ``student``
    option is its own argument, not the ``teacher``/``student`` command function of the same name."""
    local: set[str] = set()
    if isinstance(node, ast.FunctionDef):
        arguments = node.args
        every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, arguments.vararg, arguments.kwarg]
        local |= {arg.arg for arg in every if arg is not None}
    for inner in ast.walk(node):
        if isinstance(inner, ast.Name) and not isinstance(inner.ctx, ast.Load):
            local.add(inner.id)
        elif isinstance(inner, ast.Import | ast.ImportFrom):
            local |= {alias.asname or alias.name.split(".")[0] for alias in inner.names}
        elif isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and inner is not node:
            local.add(inner.name)
    read = {inner.id for inner in ast.walk(node) if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Load)}
    return read - local


def command_roots(root: Path, cli: CliModule, command: str) -> set[str]:
    """The ``pipeline.*`` modules a cli command uses directly: imports in its body and in the cli.py helpers it calls,
    plus the module-level imported names it (or they, or the constants they read) refer to."""
    modules: set[str] = set()
    seen: set[str] = set()
    todo: list[ast.AST] = [cli.commands[command]]
    while todo:
        node = todo.pop()
        modules |= imported_modules(node, root, CLI_MODULE)
        for name in _free_names(node) - seen:
            seen.add(name)
            if name in cli.imported:
                modules.add(cli.imported[name])
            elif name in cli.functions:
                todo.append(cli.functions[name])
            elif name in cli.constants:
                todo.append(cli.constants[name])
    return {module for module in modules if _in_package(module) and module != CLI_MODULE}


def command_files(root: Path, command: str, cli: CliModule | None = None) -> set[str]:
    """The code files a cli command runs, minus the shared wiring: what its stage should list as code deps."""
    cli = cli or read_cli(root)
    return closure_files(root, command_roots(root, cli, command)) - WIRING


# --- dvc.yaml ------------------------------------------------------------------------------------------------------


def stage_command(cmd: str, commands: Iterable[str]) -> str:
    """The cli command of a stage's ``cmd`` (``python -m pipeline shards verify --task x`` -> ``"shards verify"``)."""
    argv = shlex.split(cmd)
    assert argv[:3] == ["python", "-m", PACKAGE], f"not a `python -m {PACKAGE}` command: {cmd!r}"
    words = []
    for word in argv[3:]:
        if word.startswith("-"):
            break
        words.append(word)
    known = set(commands)
    for end in range(len(words), 0, -1):  # the longest prefix that names a command: sub-apps take positional args
        if " ".join(words[:end]) in known:
            return " ".join(words[:end])
    raise AssertionError(f"{cmd!r}: no such command in {CLI_MODULE} (known: {sorted(known)})")


def is_code_dep(dep: str) -> bool:
    return dep == PACKAGE or dep.startswith(PACKAGE + "/")


def listed_code_files(root: Path, deps: Iterable[str]) -> set[str]:
    """The pipeline ``.py`` files a stage's deps cover: listed files, and the ``.py`` files under listed folders."""
    files: set[str] = set()
    for dep in filter(is_code_dep, deps):
        path = root / dep
        if path.is_dir():
            files |= {p.relative_to(root).as_posix() for p in path.rglob("*.py") if "__pycache__" not in p.parts}
        else:
            files.add(dep)
    return files


@dataclass
class StageReport:
    stage: str
    command: str
    expected: set[str]
    listed: set[str]
    deps: list[str]
    foreach: bool = False
    why: dict[str, list[str]] = field(default_factory=dict)  # missing file -> import chain that needs it
    absent: set[str] = field(default_factory=set)  # listed code deps that do not exist

    @property
    def missing(self) -> set[str]:
        return self.expected - self.listed

    @property
    def superfluous(self) -> set[str]:
        return self.listed - self.expected

    @property
    def code_deps(self) -> list[str]:
        return [dep for dep in self.deps if is_code_dep(dep)]

    @property
    def folders(self) -> list[str]:
        return [dep for dep in self.deps if is_code_dep(dep) and not dep.endswith(".py")]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.superfluous or self.folders or self.unsorted)

    @property
    def unsorted(self) -> bool:
        return self.code_deps != sorted(self.code_deps)

    def message(self) -> str:
        data_deps = [dep for dep in self.deps if not is_code_dep(dep)]
        lines = [f"stage {self.stage!r} (python -m {PACKAGE} {self.command}):"]
        if self.missing:
            lines.append(f"  missing from its deps (DVC would skip a needed rerun): {sorted(self.missing)}")
            lines += [f"    {file}: {' -> '.join(self.why[file])}" for file in sorted(self.missing) if file in self.why]
        if self.superfluous:
            lines.append(f"  superfluous in its deps (reruns for code it does not use): {sorted(self.superfluous)}")
            if self.superfluous & self.absent:
                lines.append(f"    of which no such file: {sorted(self.superfluous & self.absent)}")
        if self.folders:
            lines.append(f"  list files, not folders: {self.folders}")
        if self.unsorted and not (self.missing or self.superfluous or self.folders):
            lines.append("  code deps out of order: list them sorted")
        indent = " " * (8 if self.foreach else 6)
        lines.append(f"  deps to paste (in dvc.yaml, {'under do: ' if self.foreach else ''}replacing deps:):")
        lines.append(f"{indent[:-2]}deps:")
        lines += [f"{indent}- {dep}" for dep in [*data_deps, *sorted(self.expected)]]
        return "\n".join(lines)


def check_stages(root: Path, dvc_yaml: dict) -> list[StageReport]:
    """One report per stage of a parsed dvc.yaml (a foreach stage checked through its ``do`` template)."""
    cli = read_cli(root)
    reports = []
    for stage, definition in dvc_yaml["stages"].items():
        body = definition.get("do", definition)
        command = stage_command(body["cmd"], cli.commands)
        deps = [next(iter(dep)) if isinstance(dep, dict) else dep for dep in body.get("deps", [])]
        expected = command_files(root, command, cli)
        listed = listed_code_files(root, deps)
        roots = command_roots(root, cli, command)
        why = {file: import_chain(root, roots, _file_module(file)) for file in expected - listed}
        absent = {file for file in listed if not (root / file).exists()}
        reports.append(StageReport(stage, command, expected, listed, deps, "foreach" in definition, why, absent))
    return reports


def _file_module(file: str) -> str:
    """``pipeline/data/glue.py`` -> ``pipeline.data.glue``; ``pipeline/x/__init__.py`` -> ``pipeline.x``."""
    parts = file.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# --- rewriting dvc.yaml ----------------------------------------------------------------------------------------------


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rewrite_code_deps(text: str, expected: dict[str, set[str]]) -> str:
    """dvc.yaml ``text`` with each stage's code deps replaced by ``expected[stage]``, sorted, after its other deps;
    comments, order and every other line as they were."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage = None
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        indent = _indent(line)
        if indent == 2 and stripped.endswith(":") and not stripped.startswith("#"):
            stage = stripped[:-1]
        out.append(line)
        index += 1
        if stripped != "deps:" or stage not in expected:
            continue
        items: list[str] = []  # the deps block: its items and comments, up to a blank or less indented line
        while index < len(lines) and lines[index].strip() and _indent(lines[index]) > indent:
            items.append(lines[index])
            index += 1
        item_indent = next(" " * _indent(item) for item in items if item.lstrip().startswith("- "))
        kept = [item for item in items if not is_code_dep(item.strip().removeprefix("- ").strip())]
        out += kept + [f"{item_indent}- {file}\n" for file in sorted(expected[stage])]
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.import_closure [--write]``: report each stage's code deps; --write fixes dvc.yaml."""
    import argparse

    import yaml

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps to the import closures")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    dvc_path = args.root / "dvc.yaml"
    reports = check_stages(args.root, yaml.safe_load(dvc_path.read_text()))
    for report in reports:
        status = "ok" if report.ok else "DRIFT"
        print(f"{report.stage}: {len(report.expected)} code files, {status}")
        if not report.ok and not args.write:
            print(report.message())
    if args.write:
        dvc_path.write_text(rewrite_code_deps(dvc_path.read_text(), {r.stage: r.expected for r in reports}))
    return 0 if args.write or all(report.ok for report in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
