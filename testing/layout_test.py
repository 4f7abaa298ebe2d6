"""Fails when the Layout table of docs/architecture.md misses a file of the
tree, or names one that is gone.

Run by //:layout_test with docs/architecture.md and every Python file of
`backup_restore/` and `testing/` as arguments. A row's first cell names
paths in backticks: a path with a `/` sets the directory for the bare names
after it (`backup_restore/_src/store.py`, `atomicity.py`); a path ending in
`/` covers everything below it; test files (`*_test.py`) need no row.
"""

import os
import re
import sys


def named_in_layout(doc: str) -> tuple[set, set]:
    """(files, directories) the Layout table's first column names."""
    table = doc[doc.index("## Layout") :]
    files, directories = set(), set()
    for cell in re.findall(r"^\| (.*?) \|", table, re.M):
        base = None
        for token in re.findall(r"`([^`]+)`", cell):
            if token.endswith("/"):
                directories.add(token.rstrip("/"))
            elif "/" in token:
                base = os.path.dirname(token)
                files.add(token)
            elif base is not None:
                files.add(os.path.join(base, token))
    return files, directories


def main(argv):
    doc_path, *paths = argv[1:]
    with open(doc_path) as f:
        files, directories = named_in_layout(f.read())
    tree = {p for p in paths if p.startswith(("backup_restore/", "testing/"))}
    if not tree:
        print("layout_test: no files given", file=sys.stderr)
        return 2
    missing = sorted(
        p
        for p in tree
        if not p.endswith("_test.py")
        and p not in files
        and not any(p.startswith(d + "/") for d in directories)
    )
    gone = sorted(
        p
        for p in files
        if p.startswith(("backup_restore/", "testing/"))
        and "*" not in p
        and p not in tree
    )
    for p in missing:
        print(f"layout_test: {doc_path}'s Layout table does not name {p}")
    for p in gone:
        print(
            f"layout_test: {doc_path}'s Layout table names {p}, not in the tree"
        )
    print(
        f"layout_test: {len(tree)} files, {len(missing) + len(gone)} problems"
    )
    return 1 if missing or gone else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
