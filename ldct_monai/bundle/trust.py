"""What a bundle's config may name before ldct-monai touches it.

MONAI's config parser resolves every ``"_target_"`` to an importable callable and passes every
``"$"``-prefixed string to ``eval()`` (MONAI's own warning: only run configs you trust). ldct-monai
therefore:

1. evaluates nothing of a bundle's ``inference.json`` except ``network_def``, which must be our
   ``ResNetGenerator`` with literal arguments (:func:`check_network_def`);
2. refuses the whole bundle when any part of its configs (``inference.json``, and ``metadata.json``,
   which MONAI merges in as ``_meta_``) names code outside ``ldct_monai``, ``monai``
   and ``torch`` (:func:`check_config`): a ``_target_`` of another package, an expression that uses a
   name other than those packages, config references and a few pure builtins, an ``import`` of another
   package, a private attribute (``__class__``, ``_C``), an entry point that fetches or loads foreign
   code (``torch.hub``, ``monai.bundle``, ``optional_import`` ...), an argument that unpickles files
   (``weights_only=False``, ``allow_pickle=True``), ``_mode_: debug``, or a ``%`` macro that pulls in
   another file.

The check evaluates nothing from the config: it parses expressions with :mod:`ast` and looks a bare
``_target_`` name up among MONAI's components without calling it. It is a filter on what a bundle
we accept may name, not a sandbox for ``python -m monai.bundle run``, which executes the workflow's
expressions as MONAI always does.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from ldct_monai.errors import InputError

ALLOWED_PACKAGES = ("ldct_monai", "monai", "torch")
NETWORK_TARGETS = ("ldct_monai.networks.ResNetGenerator",)  # what network_def may build when ldct-monai loads it
# Names whose only use in a config would be to fetch, import or load code that is not in the bundle's config.
FORBIDDEN_NAMES = frozenset({
    "hub", "cpp_extension", "package", "load_library", "optional_import", "instantiate", "locate",
    "load_submodules", "download_url", "download_and_extract", "extractall", "run_cmd",
})
FORBIDDEN_PREFIXES = ("monai.bundle", "monai.apps")  # downloads, bundle loading, nested config execution
# Arguments that make torch / numpy unpickle a file (run code from it) unless they keep their safe value.
UNSAFE_KWARGS = {"weights_only": True, "allow_pickle": False, "pickle_module": None}
SAFE_BUILTINS = frozenset({
    "True", "False", "None", "abs", "bool", "dict", "enumerate", "float", "int", "len", "list", "max", "min",
    "range", "round", "sorted", "str", "sum", "tuple", "zip",
})
REFS = "__local_refs"  # what MONAI rewrites "@id" into inside an expression
_REF = re.compile(r"@\w*(?:(?:::|#)\w*)*")  # MONAI's reference pattern (ReferenceResolver.id_matcher), "#" included
_MODES = ("default", "callable", "partial")  # "debug" would start pdb


def check_config(config: Any, source: str) -> None:
    """Refuse a config that names code outside ``ldct_monai``, ``monai`` and ``torch``.

    Args:
        config: the parsed JSON of a config file.
        source: the file, for the message.

    Raises:
        InputError: one line listing every refused entry (its config id and what it names).
    """
    problems: list[str] = []
    _walk(config, "", problems)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InputError(f"{source}: refused: it names code outside {', '.join(ALLOWED_PACKAGES)} ({shown}).")


def check_network_def(network_def: Any, source: str) -> dict[str, Any]:
    """Check ``network_def`` is a generator ldct-monai can load without evaluating anything; return its arguments.

    Raises:
        InputError: not a dict, another ``_target_``, or an argument that is not a literal (``$``, ``@``, ``%``).
    """
    if not isinstance(network_def, dict) or network_def.get("_target_") not in NETWORK_TARGETS:
        found = network_def.get("_target_") if isinstance(network_def, dict) else type(network_def).__name__
        raise InputError(f"{source}: network_def must be {{'_target_': {NETWORK_TARGETS[0]!r}, ...}}, found {found!r}.")
    kwargs = {k: v for k, v in network_def.items() if k != "_target_"}
    bad = [k for k, v in kwargs.items() if k.startswith("_") or not _is_literal(v)]
    if bad:
        raise InputError(f"{source}: network_def arguments must be plain values (no $ expressions, @ references "
                         f"or % macros), found {', '.join(sorted(bad))}.")
    return kwargs


def _is_literal(value: Any) -> bool:
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, (list, tuple)):
        return all(_is_literal(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and not k.startswith("_") and _is_literal(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float))


def _walk(node: Any, cid: str, problems: list[str]) -> None:
    where = cid or "<root>"
    if isinstance(node, dict):
        if "_target_" in node:
            reason = _target_problem(node["_target_"])
            if reason:
                problems.append(f"{where}: _target_ {node['_target_']!r} {reason}")
        if node.get("_mode_", "default") not in _MODES:
            problems.append(f"{where}: _mode_ {node['_mode_']!r} (allowed: {', '.join(_MODES)})")
        for key, safe in UNSAFE_KWARGS.items():
            if "_target_" in node and key in node and node[key] is not safe:
                problems.append(f"{where}: {key}={node[key]!r} (only {key}={safe} is accepted)")
        for key, value in node.items():
            if key != "_target_":
                _walk(value, f"{cid}::{key}" if cid else str(key), problems)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _walk(value, f"{cid}::{i}" if cid else str(i), problems)
    elif isinstance(node, str):
        if node.startswith("$"):
            reason = expression_problem(node[1:])
            if reason:
                problems.append(f"{where}: expression {node!r} {reason}")
        elif node.startswith("%") and _macro_file(node[1:]):
            problems.append(f"{where}: macro {node!r} reads another file")


def _macro_file(macro: str) -> bool:
    """A ``%`` macro reads another file when a path comes before its id (``%/x/other.json#net``)."""
    head = re.split(r"::|#", macro, maxsplit=1)[0]
    return bool(re.search(r"\.(json|ya?ml)$", head, re.IGNORECASE)) or "/" in head or "\\" in head


def _dotted_problem(dotted: str) -> str | None:
    parts = dotted.split(".")
    if parts[0] not in ALLOWED_PACKAGES:
        return f"is outside {', '.join(ALLOWED_PACKAGES)}"
    if any(p.startswith("_") for p in parts):
        return "uses a private name"
    if any(p in FORBIDDEN_NAMES for p in parts) or any(dotted == p or dotted.startswith(p + ".") for p in FORBIDDEN_PREFIXES):
        return "fetches, imports or loads code that is not in the config"
    return None


def _target_problem(target: Any) -> str | None:
    if not isinstance(target, str) or not target:
        return "is not a name"
    if "." in target:
        return _dotted_problem(target)
    # A bare name is a MONAI component (MONAI looks it up among the loaded monai.* modules): check it is one.
    from monai.bundle.config_item import ComponentLocator

    module = ComponentLocator().get_component_module_name(target)
    modules = [module] if isinstance(module, str) else list(module or [])
    if not modules:
        return "is not a MONAI component"
    if any(m != "monai" and not m.startswith("monai.") for m in modules):
        return f"resolves outside monai ({', '.join(modules)})"
    return _dotted_problem(f"{modules[0]}.{target}")


def expression_problem(expr: str) -> str | None:
    """Why a ``$`` expression (without the ``$``) is refused, or None.

    Allowed: config references (``@id``), the packages of :data:`ALLOWED_PACKAGES` (and ``import`` of
    them), :data:`SAFE_BUILTINS`, names bound inside the expression (lambda arguments, comprehension
    variables), public attributes.
    """
    code = _REF.sub(REFS, expr)
    try:
        tree = ast.parse(code, mode="exec")
    except SyntaxError as err:
        return f"is not Python ({err.msg})"
    bound = {REFS, *SAFE_BUILTINS, *ALLOWED_PACKAGES}
    for node in ast.walk(tree):
        if isinstance(node, ast.arguments):
            bound.update(a.arg for a in node.posonlyargs + node.args + node.kwonlyargs)
            bound.update(a.arg for a in (node.vararg, node.kwarg) if a is not None)
        elif isinstance(node, ast.comprehension):
            bound.update(n.id for n in ast.walk(node.target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.NamedExpr):
            return "assigns a name"
        elif isinstance(node, ast.keyword) and node.arg is None:
            return "unpacks keyword arguments (**), which hides what it passes"
        elif isinstance(node, ast.keyword) and node.arg in UNSAFE_KWARGS:
            if not (isinstance(node.value, ast.Constant) and node.value.value is UNSAFE_KWARGS[node.arg]):
                return f"sets {node.arg} (only {node.arg}={UNSAFE_KWARGS[node.arg]} is accepted)"
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [f"{node.module or ''}.{a.name}" for a in node.names])
            for name in names:
                reason = _dotted_problem(name)
                if reason:
                    return f"imports {name!r}, which {reason}"
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete, ast.Global, ast.Nonlocal,
                               ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.With, ast.For, ast.While,
                               ast.Try, ast.Raise)):
            return f"is a {type(node).__name__} statement, not an expression"
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in bound:
            return f"uses {node.id!r}"
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                return f"uses the private attribute {node.attr!r}"
            if node.attr in FORBIDDEN_NAMES:
                return f"uses {node.attr!r}, which fetches, imports or loads code that is not in the config"
            dotted = _dotted_name(node)
            if dotted and _dotted_problem(dotted):
                return f"uses {dotted!r}, which {_dotted_problem(dotted)}"
    return None


def _dotted_name(node: ast.AST) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in ALLOWED_PACKAGES:
        return ".".join([node.id, *reversed(parts)])
    return None
