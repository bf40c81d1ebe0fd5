"""Reading a module's imports from its source: shared by the purity and the layer tests."""

from __future__ import annotations

import ast


def imported_modules(source: str, package: str) -> set[str]:
    """Every module a source file imports: statements anywhere (functions too), and literal dynamic imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value))
        elif isinstance(node, ast.Name) and node.id == "open":
            names.add(f"<builtin {node.id}>")
    return names


def forbidden(names: set[str], banned: set[str]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in banned or n == "<builtin open>")
