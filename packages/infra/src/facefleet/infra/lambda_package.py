"""The Lambda zips (fallback dispatcher, cutover router), built from the workspace's own source.

The handler's module and everything it imports from `facefleet.*` (found by reading the import
statements, so a new import is packaged without editing a list here) go into the zip. boto3 comes
with the Lambda Python runtime; any other third-party import is an error, because the function
would fail at its first invocation instead of at deploy time.

The zip is byte-for-byte reproducible (fixed timestamps, sorted entries), so its SHA-256 names the
S3 key: an unchanged handler means an unchanged template and a no-op deploy.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from facefleet.control import lambda_dispatch, lambda_router

# Real imports (facefleet-control is a declared dependency), not module names in strings.
HANDLER_MODULE = lambda_dispatch.__name__
HANDLER = f"{HANDLER_MODULE}.{lambda_dispatch.handler.__name__}"
ROUTER_HANDLER_MODULE = lambda_router.__name__
ROUTER_HANDLER = f"{ROUTER_HANDLER_MODULE}.{lambda_router.handler.__name__}"
RUNTIME_PROVIDED = frozenset({"boto3", "botocore"})
_EPOCH = (1980, 1, 1, 0, 0, 0)


class LambdaPackageError(RuntimeError):
    """The handler or one of its imports cannot be packaged; the message names the module."""


@dataclass(frozen=True)
class LambdaPackage:
    data: bytes
    sha256: str
    modules: tuple[str, ...]
    function: str = "dispatch"

    @property
    def key(self) -> str:
        """S3 key: content-addressed, so the template changes exactly when the code does."""
        return f"lambda/facefleet-{self.function}-{self.sha256[:16]}.zip"


def _source(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise LambdaPackageError(f"cannot find the source of {module} to package")
    return Path(spec.origin)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except the bodies of `if TYPE_CHECKING:` (typing-only imports, e.g. the
    boto3-stubs client types, are never imported at run time)."""
    nodes: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # `from facefleet.control import observe` imports a module, not a name.
            for alias in node.names:
                found.add(f"{target}.{alias.name}")
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def closure(handler_module: str = HANDLER_MODULE) -> dict[str, Path]:
    """Every `facefleet.*` module the handler imports, transitively, with its package
    `__init__.py` files; module name -> source path."""
    todo = [handler_module]
    found: dict[str, Path] = {}
    while todo:
        module = todo.pop()
        if module in found:
            continue
        path = _source(module)
        found[module] = path
        parts = module.split(".")
        for depth in range(2, len(parts)):  # facefleet itself is a namespace package
            package = ".".join(parts[:depth])
            if package not in found:
                todo.append(package)
        for name in _imports(path, module):
            top = name.split(".")[0]
            if top == "facefleet":
                if _is_module(name):
                    todo.append(name)
            elif top == "__future__" or top in sys.stdlib_module_names:
                continue
            elif top not in RUNTIME_PROVIDED:
                raise LambdaPackageError(
                    f"{module} imports {name}, which the Lambda runtime does not provide"
                )
    return found


def _archive_name(module: str, path: Path) -> str:
    base = module.replace(".", "/")
    return f"{base}/__init__.py" if path.name == "__init__.py" else f"{base}.py"


def build(handler_module: str = HANDLER_MODULE, function: str = "dispatch") -> LambdaPackage:
    """The zip for `handler_module` (default: the fallback dispatcher)."""
    modules = closure(handler_module)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for module in sorted(modules):
            path = modules[module]
            info = zipfile.ZipInfo(_archive_name(module, path), date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    data = buffer.getvalue()
    return LambdaPackage(data, hashlib.sha256(data).hexdigest(), tuple(sorted(modules)), function)


def build_router() -> LambdaPackage:
    """The cutover router's zip (control.router + common: no Prefect, no ML stack)."""
    return build(ROUTER_HANDLER_MODULE, "router")
