"""The private names of other packages that modules use: what an adapter's
contract test must cover (`*_adapter_test.py` checks its table against
it with `check_contract`), and the built-in callbacks' attributes an
adapter's tables name (`check_callback_tables`)."""

import ast
import inspect
import os
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


def check_contract(test, contract: dict, *modules, own=()) -> None:
    """Asserts that `contract` (private name -> the tests of it) names
    exactly the private names the code of `modules` uses (`own`: as in
    `private_names`), and that every test it names is a method of `test`.
    """
    test.assertEqual(
        private_names(*modules, own=own),
        set(contract),
        "add the new private name, and a test of it, to CONTRACT",
    )
    for name, tests in contract.items():
        for name_of_test in tests:
            test.assertTrue(hasattr(test, name_of_test), (name, name_of_test))


def check_callback_tables(test, callbacks, adapter, fit) -> None:
    """Asserts that the adapter's tables of built-in callbacks' state
    (BUILTIN_CALLBACK_STATE, BUILTIN_CALLBACK_TENSORS) name the callbacks
    `callbacks` (the flavour's `callbacks` module) offers, and that each
    attribute they name, and those of CSV_LOGGER that callback_states
    reads, exist once `fit(callback_list)` has trained with them.
    """
    tmp = test.create_tempdir().full_path
    arguments = {
        callbacks.EarlyStopping: dict(monitor="loss"),
        callbacks.ReduceLROnPlateau: dict(monitor="loss"),
        callbacks.ModelCheckpoint: dict(
            filepath=os.path.join(tmp, "best.weights.h5"),
            save_weights_only=True,
        ),
        callbacks.TensorBoard: dict(log_dir=os.path.join(tmp, "logs")),
    }
    test.assertEqual(set(arguments), set(adapter.BUILTIN_CALLBACK_STATE))
    test.assertLessEqual(set(adapter.BUILTIN_CALLBACK_TENSORS), set(arguments))
    made = [cls(**kwargs) for cls, kwargs in arguments.items()]
    csv_logger = adapter.CSV_LOGGER(os.path.join(tmp, "log.csv"))
    fit([*made, csv_logger])
    for callback in made:
        attrs = list(adapter.BUILTIN_CALLBACK_STATE[type(callback)])
        if type(callback) in adapter.BUILTIN_CALLBACK_TENSORS:
            attrs.append(adapter.BUILTIN_CALLBACK_TENSORS[type(callback)])
        for attr in attrs:
            test.assertTrue(hasattr(callback, attr), (callback, attr))
    for attr in ("csv_file", "append", "filename"):
        test.assertTrue(hasattr(csv_logger, attr), (csv_logger, attr))
