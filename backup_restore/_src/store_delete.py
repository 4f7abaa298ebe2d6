"""Deleting from a store's directory: leftovers, older backups, all of them.

What the store removes and what it keeps: the leftovers of interrupted
writes, deletions and writability checks; the committed backups a newer one
replaces (all of them, or all but the previous intact one with
`keep_previous`); and at the end of training every backup of the run's scope.
Only entries the catalog names as the store's own are touched, and a
deletion is recorded in the catalog so the directory is not listed again.

The functions run on the caller's thread; the store waits for its backup in
flight before it calls them.
"""

import os

import tensorflow as tf
from absl import logging

from backup_restore._src import atomicity
from backup_restore._src import catalog as catalog_lib
from backup_restore._src import faults
from backup_restore._src import paths


def leftovers(catalog: catalog_lib.Catalog) -> list[str]:
    """What interrupted writes, deletions or writability checks left."""
    listing = catalog.list_now()
    return listing.temporaries + catalog.unfinished() + listing.probes


def remove_leftovers(catalog: catalog_lib.Catalog, commit) -> list[str]:
    """Removes what interrupted writes left behind; returns the paths.

    `commit`: the directory's CommitStrategy. Where a backup is published
    by renaming it complete (atomicity.AtomicRename), a `backup-<seq>`
    among them is a published backup a machine loss tore before it was
    durable, or damage: its removal is a warning, for the progress it
    held is lost. Elsewhere it is the routine leftover of a killed write.
    """
    removed = leftovers(catalog)
    for path in removed:
        name = os.path.basename(path)
        if commit.marks_durable and atomicity.parse_committed(name) is not None:
            logging.warning(
                "Removing %s: a backup directory with no manifest and no "
                "record of being made durable (a write a machine stop "
                "interrupted, or damage). It cannot be checked, so it "
                "cannot be restored.",
                path,
            )
        else:
            logging.info("Removing an interrupted backup write: %s", path)
        remove_leftover(catalog, path)
    return removed


def remove_leftover(catalog: catalog_lib.Catalog, path: str) -> None:
    """Deletes one of the store's leftovers (a directory, or a probe file)."""
    if atomicity.is_probe(os.path.basename(path)):
        # Another process's check that it can write here (a job that is
        # starting, to be refused): it removes it itself, maybe first.
        try:
            paths.remove_file(path)
        except (FileNotFoundError, tf.errors.NotFoundError):
            pass
    else:
        paths.remove_tree(path)
    catalog.removed(path)


def retire(commit, catalog: catalog_lib.Catalog, path: str) -> None:
    """Deletes a committed backup (CommitStrategy.retire).

    One that is gone already counts as deleted; one a failure left half
    deleted makes the catalog list the directory again.
    """
    try:
        commit.retire(path)
    except (tf.errors.OpError, OSError):
        if paths.kind(path) is not None:
            catalog.refresh()
            raise
    catalog.removed(path)


def previous_kept(
    catalog: catalog_lib.Catalog, seq: int, in_scope, failed_checks
) -> str | None:
    """The backup `keep_previous` keeps beside backup `seq`: the newest
    older one of the scope (`in_scope(path)`) not known to fail its checks
    (`failed_checks`), for a restore to fall back to should `seq` fail its
    checks later; None if there is none."""
    previous = [
        path
        for s, path in catalog.committed()
        if s < seq and in_scope(path) and path not in failed_checks
    ]
    return previous[-1] if previous else None  # oldest first


def delete_older_than(
    commit, catalog: catalog_lib.Catalog, seq: int, in_scope, kept
) -> None:
    """Deletes the committed backups of the scope older than `seq`, except
    `kept` (a path, or None)."""
    for s, path in catalog.named():
        if s < seq and path != kept and in_scope(path):
            faults.point(faults.DELETE_OLDER, path)
            retire(commit, catalog, path)


def delete_all(commit, catalog: catalog_lib.Catalog, in_scope) -> None:
    """Deletes every backup of the scope and every leftover, nothing else."""
    listing = catalog.list_now()
    for path in listing.temporaries + listing.probes:
        remove_leftover(catalog, path)
    # Newest last: a kill midway leaves it, and a restart resumes there.
    for _, path in listing.named:
        if in_scope(path):
            retire(commit, catalog, path)
