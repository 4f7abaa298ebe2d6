"""The private names of other packages that modules use: what an adapter's
contract test must cover (`*_adapter_test.py` checks its table against
it)."""

import ast
import inspect
import re


def private_names(*modules, own=()) -> set:
    """Private names the code (not the docstrings) of `modules` uses:

    - attributes `obj._name` (not on `self`, not `sys._getframe`, not the
      modules' own classes and functions, nor names in `own`),
    - strings `"_name"` (given to getattr / setattr / patching),
    - private members a class of theirs defines for another package to read
      (`_supports_tf_logs = True`, `def _implements_train_batch_hooks`),
    - the `keras.src...` / `tf_keras.src...` modules they import from.
    """
    found = set()
    for module in modules:
        tree = ast.parse(inspect.getsource(module))
        defined = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.ClassDef, ast.FunctionDef))
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                found.update(_private_members(node))
            if isinstance(node, ast.Attribute):
                base = node.value
                if (
                    re.fullmatch(r"_[A-Za-z]\w*", node.attr)
                    and not node.attr.endswith("__")
                    and not (
                        isinstance(base, ast.Name)
                        and base.id in ("self", "sys")
                    )
                    and node.attr not in defined
                    and node.attr not in own
                ):
                    found.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if re.fullmatch(r"_[a-z]\w*", node.value):
                    found.add(node.value)
            elif isinstance(node, ast.ImportFrom) and node.module:
                if re.match(r"(tf_)?keras\.src\b", node.module):
                    found.add(node.module)
    return found


def _private_members(cls: ast.ClassDef) -> set:
    names = set()
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if re.fullmatch(r"_[a-z]\w*", n)}
