"""Unit tests of the store: commit, find, verify, cleanup, fallback."""

import errno
import json
import os
import shutil
import subprocess
import threading
import time
from unittest import mock

import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from backup_restore._src import atomicity
from backup_restore._src import background
from backup_restore._src import errors
from backup_restore._src import faults
from backup_restore._src import manifest
from backup_restore._src import ownership
from backup_restore._src import paths
from backup_restore._src import store
from backup_restore._src import tf_checkpoint
from backup_restore._src import tf_checkpoint_read
from testing import dirs
from testing import tamper
from testing import test_case


class _Boom(Exception):
    pass


def _raise_at(stage, error=_Boom):
    """A faults hook that raises `error(path)` when a write reaches `stage`."""

    def hook(reached, path):
        if reached == stage:
            raise error(path)

    return hook


def _enospc(path):
    return OSError(errno.ENOSPC, "No space left on device", path)


def _checkpoint(value):
    return tf.train.Checkpoint(v=tf.Variable(value), step=tf.Variable(7))


def _watching_restore_v2():
    """Patches the read's RestoreV2 with a mock that calls through, to tell
    whether any read began."""
    return mock.patch.object(
        tf_checkpoint_read.io_ops,
        "restore_v2",
        wraps=tf_checkpoint_read.io_ops.restore_v2,
    )


def _files(directory):
    """The entries of `directory`, but the record that a store created it
    (atomicity.CREATED: the tests of created directories look at it)."""
    return sorted(
        n.rstrip("/")
        for n in tf.io.gfile.listdir(directory)
        if n.rstrip("/") != atomicity.CREATED
    )


class StoreTest(test_case.TestCase):
    def setUp(self):
        super().setUp()
        self.addCleanup(faults.set_hook, None)

    def _dir(self, fs):
        return dirs.backup_dir(self, fs)

    def _write(self, s, value, **metadata):
        return s.write(_checkpoint(value), {"value": value, **metadata})

    def _interrupted(self, stage, fs="local", size=1):
        """A store with a backup of [1.0] * size, after a write of
        [2.0] * size that raised at `stage` (as a kill would stop it)."""
        s = store.BackupStore(self._dir(fs))
        self._write(s, [1.0] * size)
        faults.set_hook(_raise_at(stage))
        with self.assertRaises(_Boom):
            self._write(s, [2.0] * size)
        faults.set_hook(None)
        return s

    @parameterized.named_parameters(("local", "local"), ("ram", "ram"))
    def test_write_then_latest_roundtrip(self, fs):
        s = store.BackupStore(self._dir(fs))
        self.assertIsNone(s.latest())
        info = self._write(s, [1.0, 2.0], epoch=3)
        self.assertEqual(info.seq, 1)
        latest = s.latest()
        self.assertEqual(latest.path, info.path)
        self.assertEqual(latest.metadata, {"value": [1.0, 2.0], "epoch": 3})
        target = _checkpoint([0.0, 0.0])
        target.read(latest.checkpoint_prefix).assert_consumed()
        self.assertEqual(target.v.numpy().tolist(), [1.0, 2.0])

    def test_a_fallback_to_tensorflows_writer_is_not_tried_again(self):
        # The single-shard writer gathers the whole state before it can
        # tell it needs TensorFlow's writer (another task's devices): once
        # it fell back, later writes of the store go to TensorFlow's at once.
        s = store.BackupStore(self._dir("local"))
        real = tf_checkpoint.write_single_shard
        answers = iter([True, False])
        tried = []

        def write_single_shard(checkpoint, prefix):
            tried.append(prefix)
            return next(answers) and real(checkpoint, prefix)

        with mock.patch.object(
            tf_checkpoint, "write_single_shard", write_single_shard
        ):
            for i in range(4):
                self._write(s, [float(i)])
        self.assertLen(tried, 2)
        target = _checkpoint([0.0])
        target.read(s.latest().checkpoint_prefix).assert_consumed()
        self.assertEqual(target.v.numpy().tolist(), [3.0])

    @parameterized.named_parameters(("local", "local"), ("ram", "ram"))
    def test_one_backup_at_rest(self, fs):
        s = store.BackupStore(self._dir(fs))
        for i in range(3):
            self._write(s, [float(i)])
        self.assertEqual(_files(s.directory), ["backup-00000003"])
        self.assertEqual(s.latest().metadata["value"], [2.0])

    def test_local_write_goes_through_a_temporary_then_rename(self):
        s = store.BackupStore(self._dir("local"))
        older = self._write(s, [0.0])
        seen = []
        faults.set_hook(lambda stage, path: seen.append((stage, path)))
        info = self._write(s, [1.0])
        after = (faults.PUBLISHED, faults.COMMITTED, faults.DELETE_OLDER)
        per_file = (faults.FSYNC, faults.MANIFEST_WRITE, faults.DELETE_OLDER)
        work_paths = {p for st, p in seen if st not in per_file + after}
        self.assertLen(work_paths, 1)
        (work,) = work_paths
        self.assertIsNotNone(
            atomicity.parse_temporary(os.path.basename(work)), work
        )
        for stage, path in seen:
            if stage == faults.MANIFEST_WRITE:
                self.assertEqual(os.path.dirname(path), work)
            elif stage == faults.FSYNC:  # published first, then fsync'd
                self.assertEqual(os.path.dirname(path), info.path)
            elif stage in (faults.PUBLISHED, faults.COMMITTED):
                self.assertEqual(path, info.path)
        stages = [st for st, _ in seen]
        in_order = [st for i, st in enumerate(stages) if stages[i - 1] != st]
        self.assertEqual(in_order, list(faults.STAGES), "stages in order")
        # Index, data and manifest.
        self.assertEqual(stages.count(faults.FSYNC), 3)
        self.assertEqual(seen[-2][1], info.path)
        self.assertEqual(seen[-1][1], older.path)

    @parameterized.named_parameters(
        (f"{fs}_{stage}", fs, stage)
        for fs in ("local", "ram")
        for stage in (
            faults.BEFORE_DATA,
            faults.DATA_WRITTEN,
            faults.BEFORE_COMMIT,
        )
    )
    def test_interrupted_write_keeps_previous_and_is_cleaned(self, fs, stage):
        s = self._interrupted(stage, fs)
        # The interrupted write is never mistaken for a backup ...
        self.assertEqual(s.latest().metadata["value"], [1.0])
        self.assertLen(s.leftovers(), 1)
        # ... and the next start removes it.
        removed = s.cleanup()
        self.assertLen(removed, 1)
        self.assertEqual(s.leftovers(), [])
        self.assertEqual(s.latest().metadata["value"], [1.0])
        self.assertGreater(self._write(s, [3.0]).seq, 1)
        self.assertEqual(s.latest().metadata["value"], [3.0])

    def test_new_write_never_reuses_a_leftover_sequence_number(self):
        s = self._interrupted(faults.DATA_WRITTEN)
        self.assertEqual(self._write(s, [3.0]).seq, 3)

    def test_kill_after_commit_before_delete_keeps_newest(self):
        s = self._interrupted(faults.COMMITTED)
        self.assertLen(s.committed(), 2)
        self.assertEqual(s.latest().metadata["value"], [2.0])

    def _corrupt(self, info, how):
        data = next(n for n in info.files if ".data-" in n)
        path = os.path.join(info.path, data)
        with tf.io.gfile.GFile(path, "rb") as f:
            raw = bytearray(f.read())
        if how == "truncate":
            raw = raw[: len(raw) // 2]
        else:
            raw[len(raw) // 2] ^= 0x01
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(bytes(raw))
        return path

    @parameterized.named_parameters(
        ("local_truncate", "local", "truncate"),
        ("local_bitflip", "local", "bitflip"),
        ("ram_truncate", "ram", "truncate"),
        ("ram_bitflip", "ram", "bitflip"),
    )
    def test_corrupt_only_backup_is_a_clear_error_and_kept(self, fs, how):
        s = store.BackupStore(self._dir(fs))
        info = self._write(s, [float(i) for i in range(1000)])
        path = self._corrupt(info, how)
        with self.assertRaisesRegex(
            errors.BackupCorruptError, "Nothing was deleted"
        ) as cm:
            s.latest()
        self.assertIn(os.path.basename(info.path), str(cm.exception))
        self.assertRegex(str(cm.exception), "truncated|checksum")
        s.cleanup()
        self.assertTrue(tf.io.gfile.exists(path), "a corrupt backup is kept")

    @parameterized.named_parameters(("local", "local"), ("ram", "ram"))
    def test_a_data_iterator_passes_the_full_verification(self, fs):
        # Its state is a variant tensor, which has no numpy value.
        iterator = iter(tf.data.Dataset.range(64).shuffle(64, seed=1))
        next(iterator)
        s = store.BackupStore(self._dir(fs))
        s.write(tf.train.Checkpoint(it=iterator), {})
        info = s.latest(full_verify=True)
        self._corrupt(info, "bitflip")  # on ram:// GFile appends instead
        with self.assertRaisesRegex(
            errors.BackupCorruptError, "checksum|truncated"
        ):
            s.load(info.path, full_verify=True)

    def test_corrupt_newest_falls_back_to_previous(self):
        s = self._interrupted(faults.COMMITTED, size=100)
        newest = s.load(s.committed()[-1][1])
        self._corrupt(newest, "bitflip")
        with self.assertLogs(level="WARNING") as logs:
            info = s.latest()
        self.assertEqual(info.metadata["value"], [1.0] * 100)
        self.assertTrue(any("Falling back" in m for m in logs.output))

    def test_corrupt_manifest_is_detected(self):
        s = store.BackupStore(self._dir("local"))
        info = self._write(s, [1.0])
        manifest_path = os.path.join(info.path, atomicity.MANIFEST)
        with open(manifest_path) as f:
            doc = json.load(f)
        doc["body"]["metadata"]["value"] = [9.0]  # keeps the stored crc32
        with open(manifest_path, "w") as f:
            json.dump(doc, f)
        with self.assertRaisesRegex(errors.BackupCorruptError, "checksum"):
            s.latest()

    def test_an_oversized_manifest_is_corrupt_and_not_read_whole(self):
        s = store.BackupStore(self._dir("local"))
        info = self._write(s, [1.0])
        manifest_path = os.path.join(info.path, atomicity.MANIFEST)
        os.truncate(manifest_path, 1 << 40)  # sparse: 1 TB, no disk used
        reads = []
        real_read = os.read

        def counted(fd, n):
            data = real_read(fd, n)
            reads.append(len(data))
            return data

        with mock.patch.object(paths.os, "read", counted):
            with self.assertRaisesRegex(
                errors.BackupCorruptError, "larger than any manifest"
            ):
                s.latest()
        self.assertLessEqual(sum(reads), manifest.MAX_BYTES + (1 << 20))
        self.assertTrue(os.path.exists(manifest_path), "nothing deleted")

    def test_a_manifest_over_the_limit_is_never_written(self):
        s = store.BackupStore(self._dir("local"))
        with mock.patch.object(manifest, "MAX_BYTES", 100):
            with self.assertRaisesRegex(ValueError, "more than a restore"):
                self._write(s, [1.0])
        self.assertEqual(s.committed(), [])

    @parameterized.named_parameters(
        ("checkpoint_files", ("ckpt.index", "ckpt.data-00000-of-00001")),
        ("manifest", (atomicity.MANIFEST,)),
    )
    def test_files_of_another_backup_are_refused(self, names):
        # Two backups of the same shapes: their files have the same sizes.
        d = self._dir("local")
        s = store.BackupStore(d, keep_previous=True)
        older = self._write(s, [1.0], step=1)
        newest = self._write(s, [2.0], step=2)
        for name in names:
            shutil.copyfile(
                os.path.join(older.path, name), os.path.join(newest.path, name)
            )
        target = _checkpoint([0.0])
        with self.assertLogs(level="WARNING") as logs:
            info, _ = store.BackupStore(d).restore_latest(lambda i: target)
        self.assertTrue(
            any("not the file its manifest recorded" in r for r in logs.output),
            logs.output,
        )
        self.assertEqual(info.path, older.path)
        self.assertEqual(target.v.numpy().tolist(), [1.0])
        self.assertTrue(os.path.isdir(newest.path), "kept")

    def test_missing_file_is_detected(self):
        s = store.BackupStore(self._dir("local"))
        info = self._write(s, [1.0])
        os.remove(info.checkpoint_prefix + ".index")
        with self.assertRaisesRegex(errors.BackupCorruptError, "missing"):
            s.latest()

    @parameterized.named_parameters(("local", "local"), ("ram", "ram"))
    def test_foreign_files_are_never_touched(self, fs):
        d = self._dir(fs)
        tf.io.gfile.makedirs(os.path.join(d, "backup-notes"))
        for name in ("README", "backup-1.txt", ".tmp-mine"):
            with tf.io.gfile.GFile(os.path.join(d, name), "w") as f:
                f.write("user data")
        s = store.BackupStore(d)
        self._write(s, [1.0])
        self._write(s, [2.0])
        s.cleanup()
        s.delete_all()
        self.assertEqual(
            _files(d), [".tmp-mine", "README", "backup-1.txt", "backup-notes"]
        )

    def test_delete_all_removes_a_directory_it_created(self):
        d = self._dir("local")
        s = store.BackupStore(d)
        self._write(s, [1.0])
        s.delete_all()
        self.assertFalse(os.path.exists(d))

    @parameterized.named_parameters(("local", "local"), ("ram", "ram"))
    def test_delete_all_keeps_a_preexisting_empty_directory(self, fs):
        d = self._dir(fs)
        tf.io.gfile.makedirs(d)
        s = store.BackupStore(d)
        self._write(s, [1.0])
        s.delete_all()
        self.assertEqual(tf.io.gfile.listdir(d), [])

    def test_delete_all_removes_a_ram_directory_it_created(self):
        d = self._dir("ram")
        s = store.BackupStore(d)
        self._write(s, [1.0])
        s.delete_all()
        self.assertFalse(tf.io.gfile.exists(d))

    def test_delete_all_removes_the_parents_it_created_and_no_others(self):
        parent = self._dir("local")
        os.makedirs(parent)
        s = store.BackupStore(os.path.join(parent, "a", "b"))
        self._write(s, [1.0])
        s.delete_all()
        self.assertEqual(os.listdir(parent), [])

    def test_delete_all_stops_at_a_created_parent_that_is_not_empty(self):
        parent = self._dir("local")
        s = store.BackupStore(os.path.join(parent, "a", "b"))
        with open(os.path.join(parent, "a", "notes"), "w") as f:
            f.write("someone else's")
        self._write(s, [1.0])
        s.delete_all()
        self.assertEqual(os.listdir(parent), ["a"])
        self.assertEqual(os.listdir(os.path.join(parent, "a")), ["notes"])

    def test_a_created_parent_keeps_a_file_named_like_the_record(self):
        # Only backup_dir carries the record: a file of that name in a parent
        # the store created is someone else's, and is left with its parent.
        parent = self._dir("local")
        s = store.BackupStore(os.path.join(parent, "a", "b"))
        planted = os.path.join(parent, "a", atomicity.CREATED)
        open(planted, "w").close()
        self._write(s, [1.0])
        s.delete_all()
        self.assertEqual(
            os.listdir(os.path.join(parent, "a")), [atomicity.CREATED]
        )

    def test_delete_all_removes_a_directory_left_with_a_dead_owners_file(self):
        # A job killed before its first backup leaves its lock file only
        # (and the record that it made the directory).
        d = self._dir("local")
        store.BackupStore(d)
        open(os.path.join(d, ownership.FILES[0]), "w").close()
        s = store.BackupStore(d)
        os.remove(os.path.join(d, ownership.FILES[0]))  # the owner's release
        s.delete_all()
        self.assertFalse(os.path.exists(d))

    def test_a_directory_the_user_made_is_kept_after_a_killed_run(self):
        # It held only a killed run's backup when the job resumed: still
        # the user's directory, kept (emptied of ours).
        d = self._dir("local")
        os.makedirs(d)
        self._write(store.BackupStore(d), [1.0])  # then killed
        s = store.BackupStore(d)
        self.assertEqual(s.latest().metadata["value"], [1.0])
        s.delete_all()
        self.assertEqual(os.listdir(d), [])

    def test_a_created_record_that_cannot_be_written_keeps_the_directory(self):
        # The record is best effort: without it (a full disk, say) the store
        # works, and the end of training leaves the directory in place.
        create_file = paths.create_file

        def full_disk_for_the_record(path, *args, **kwargs):
            if os.path.basename(path) == atomicity.CREATED:
                raise OSError(errno.ENOSPC, "No space left on device", path)
            return create_file(path, *args, **kwargs)

        d = self._dir("local")
        with mock.patch.object(paths, "create_file", full_disk_for_the_record):
            store.BackupStore(d)  # then killed
        s = store.BackupStore(d)
        self._write(s, [1.0])
        s.delete_all()
        self.assertEqual(os.listdir(d), [])

    def test_a_created_record_that_is_not_a_file_is_left_alone(self):
        # A link named like the record: not ours, never followed or
        # removed, and the directory it is in is the user's.
        d = self._dir("local")
        os.makedirs(d)
        target = os.path.join(self.tmp, "target")
        open(target, "w").close()
        os.symlink(target, os.path.join(d, atomicity.CREATED))
        s = store.BackupStore(d)
        self._write(s, [1.0])
        s.delete_all()
        self.assertEqual(os.listdir(d), [atomicity.CREATED])
        self.assertTrue(os.path.exists(target))

    def test_delete_all_removes_a_directory_left_by_an_earlier_run(self):
        # A directory that held only this library's entries (a resumed job)
        # is removed when training completes.
        d = self._dir("local")
        self._write(store.BackupStore(d), [1.0])
        s = store.BackupStore(d)
        s.delete_all()
        self.assertFalse(os.path.exists(d))

    def test_a_relative_directory_is_resolved_once(self):
        # A later chdir (a callback's, say) moves nothing.
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.tmp)
        s = store.BackupStore("relative_backups")
        self.assertEqual(
            s.directory, os.path.join(self.tmp, "relative_backups")
        )
        elsewhere = self.create_tempdir().full_path
        os.chdir(elsewhere)
        info = self._write(s, [1.0])
        self.assertEqual(os.path.dirname(info.path), s.directory)
        self.assertEqual(os.listdir(elsewhere), [])

    def test_a_created_directory_is_fsynced_into_its_parent(self):
        nested = os.path.join(self.tmp, "a", "b")
        synced = []
        real_fsync = paths.fsync

        def spy(path, follow=False):
            synced.append(path)
            real_fsync(path, follow)

        with mock.patch.object(paths, "fsync", spy):
            store.BackupStore(nested)
        self.assertIn(self.tmp, synced)  # holds the new "a"
        self.assertIn(os.path.join(self.tmp, "a"), synced)  # holds "b"

    # -- durability: an unfinished write is not corruption -------------------

    def _power_loss(self, backup):
        """What a power loss leaves of a backup renamed into place whose
        fsyncs had not run (ordered journal: the rename stays, the data
        does not): every file empty, no durability record."""
        marker = os.path.join(backup, atomicity.DURABLE)
        if os.path.exists(marker):
            os.remove(marker)
        for name in os.listdir(backup):
            os.truncate(os.path.join(backup, name), 0)

    def test_backup_records_that_it_is_durable(self):
        s = store.BackupStore(self._dir("local"))
        info = self._write(s, [1.0])
        self.assertTrue(
            os.path.isfile(os.path.join(info.path, atomicity.DURABLE))
        )
        self.assertEqual(s.latest().metadata["value"], [1.0])

    def test_a_first_backup_never_made_durable_is_skipped_not_corrupt(self):
        d = self._dir("local")
        info = self._write(store.BackupStore(d), [1.0])
        self._power_loss(info.path)
        s = store.BackupStore(d)
        with self.assertLogs(level="WARNING") as logs:
            self.assertIsNone(s.restore_latest(lambda info: _checkpoint(0.0)))
        self.assertTrue(any("unfinished write" in r for r in logs.output))
        self.assertFalse(any("Skipping corrupt" in r for r in logs.output))

    def test_an_unfinished_newest_falls_back_to_the_durable_older(self):
        d = self._dir("local")
        s = store.BackupStore(d)
        self._write(s, [1.0])
        # The older backup stays (its deletion fails), as after a power loss
        # that came before it.
        faults.set_hook(_raise_at(faults.DELETE_OLDER, _enospc))
        newest = self._write(s, [2.0])
        faults.set_hook(None)
        self._power_loss(newest.path)
        target = _checkpoint([0.0])
        with self.assertLogs(level="WARNING") as logs:
            info, _ = store.BackupStore(d).restore_latest(lambda i: target)
        self.assertTrue(any("unfinished write" in r for r in logs.output))
        self.assertFalse(any("Skipping corrupt" in r for r in logs.output))
        self.assertEqual(info.metadata["value"], [1.0])
        self.assertEqual(target.v.numpy().tolist(), [1.0])

    def test_a_durable_backup_that_fails_its_checks_is_corrupt(self):
        d = self._dir("local")
        info = self._write(store.BackupStore(d), [1.0])
        self._power_loss(info.path)
        with open(os.path.join(info.path, atomicity.DURABLE), "wb"):
            pass  # it had been made durable: the damage came later
        with self.assertRaisesRegex(errors.BackupCorruptError, "Nothing was"):
            store.BackupStore(d).restore_latest(lambda i: _checkpoint(0.0))

    def test_a_durable_backup_without_its_manifest_is_corrupt_and_kept(self):
        d = self._dir("local")
        info = self._write(store.BackupStore(d), [1.0])
        os.remove(os.path.join(info.path, atomicity.MANIFEST))
        s = store.BackupStore(d)
        self.assertEqual(s.leftovers(), [], "not an interrupted write")
        self.assertEqual(s.cleanup(), [])
        with self.assertRaisesRegex(
            errors.BackupCorruptError, "manifest.json is missing"
        ) as cm:
            s.restore_latest(lambda i: _checkpoint(0.0))
        self.assertIn("Nothing was deleted", str(cm.exception))
        self.assertCountEqual(
            os.listdir(info.path),
            [n for n in info.files] + [atomicity.DURABLE],
        )

    def test_a_newest_without_its_manifest_falls_back_to_the_older(self):
        d = self._dir("local")
        s = store.BackupStore(d, keep_previous=True)
        self._write(s, [1.0])
        newest = self._write(s, [2.0])
        os.remove(os.path.join(newest.path, atomicity.MANIFEST))
        target = _checkpoint([0.0])
        with self.assertLogs(level="WARNING") as logs:
            info, _ = store.BackupStore(d).restore_latest(lambda i: target)
        self.assertEqual(info.metadata["value"], [1.0])
        self.assertTrue(any("Skipping corrupt" in r for r in logs.output))
        self.assertTrue(os.path.isdir(newest.path))

    def test_a_torn_backup_without_its_manifest_is_removed_with_a_warning(
        self,
    ):
        d = self._dir("local")
        info = self._write(store.BackupStore(d), [1.0])
        for name in (atomicity.MANIFEST, atomicity.DURABLE):
            os.remove(os.path.join(info.path, name))
        s = store.BackupStore(d)
        self.assertEqual(s.leftovers(), [info.path])
        with self.assertLogs(level="WARNING") as logs:
            self.assertEqual(s.cleanup(), [info.path])
        self.assertTrue(any("cannot be restored" in r for r in logs.output))
        self.assertFalse(os.path.exists(info.path))

    def test_a_deletion_interrupted_midway_leaves_no_committed_name(self):
        d = self._dir("local")
        s = store.BackupStore(d)
        older = self._write(s, [1.0])
        removed = []

        def interrupted(path):
            removed.append(path)
            raise _Boom(path)

        with mock.patch.object(paths, "remove_tree", interrupted):
            with self.assertRaises(_Boom):
                self._write(s, [2.0])
        # The older backup was renamed out of the committed names whole,
        # before anything of it was removed.
        self.assertLen(removed, 1)
        self.assertNotEqual(removed[0], older.path)
        self.assertEqual(
            sorted(os.listdir(removed[0])),
            sorted(os.listdir(s.committed()[-1][1])),
        )
        self.assertFalse(os.path.exists(older.path))
        fresh = store.BackupStore(d)
        self.assertEqual(fresh.leftovers(), [removed[0]])
        self.assertEqual(fresh.latest().metadata["value"], [2.0])
        fresh.cleanup()
        self.assertFalse(os.path.exists(removed[0]))

    # -- reading ahead ------------------------------------------------------

    def test_a_read_ahead_restores_the_newest_backup(self):
        d = self._dir("local")
        self._write(store.BackupStore(d), [1.0])
        self._write(store.BackupStore(d), [2.0])
        target = _checkpoint([0.0])
        info, _ = store.BackupStore(d).restore_latest(
            lambda i: target, ahead=True
        )
        self.assertEqual(info.metadata["value"], [2.0])
        self.assertEqual(target.v.numpy().tolist(), [2.0])
        self.assertEqual(target.step.numpy().tolist(), 7)

    def test_a_read_ahead_the_checks_refuse_leaves_checkpoint_read(self):
        # The backup holds `step`, the checkpoint given has no object for
        # it: Checkpoint.read restores what there is.
        d = self._dir("local")
        self._write(store.BackupStore(d), [3.0])
        target = tf.Variable([0.0])
        _, status = store.BackupStore(d).restore_latest(
            lambda i: tf.train.Checkpoint(v=target), ahead=True
        )
        status.expect_partial()
        self.assertEqual(target.numpy().tolist(), [3.0])

    def test_a_refused_backup_waits_for_its_read_ahead_and_drops_it(self):
        d = self._dir("local")
        self._write(store.BackupStore(d), [1.0])
        closed = []
        real_close = tf_checkpoint_read.ReadAhead.close

        def close(ahead):
            real_close(ahead)
            closed.append(ahead._thread.is_alive())  # pylint: disable=protected-access

        def refuse(info):
            raise errors.BackupMismatchError("another model")

        with mock.patch.object(tf_checkpoint_read.ReadAhead, "close", close):
            with self.assertRaises(errors.BackupMismatchError):
                store.BackupStore(d).restore_latest(refuse, ahead=True)
        self.assertEqual(closed, [False])

    def _claiming(self, d, elements):
        """A committed backup in `d` whose index claims `elements` float32s
        for `v`, of which its data file holds one: TensorFlow's own SaveV2
        writes `v` as a slice of that shape, and the manifest's sizes are
        updated, as anyone with the files could."""
        info = self._write(store.BackupStore(d), [1.0])
        prefix = info.checkpoint_prefix
        reader = tf.compat.v1.train.NewCheckpointReader(prefix)
        keys = sorted(reader.get_variable_to_dtype_map())
        values = [reader.get_tensor(key) for key in keys]
        for name in info.files:
            os.remove(os.path.join(info.path, name))
        tf.raw_ops.SaveV2(
            prefix=prefix,
            tensor_names=keys,
            shape_and_slices=[
                f"{elements} 0,1" if key.startswith("v/") else ""
                for key in keys
            ],
            tensors=values,
        )

        tamper.rebind_files(info.path)
        shapes = tf.compat.v1.train.NewCheckpointReader(
            prefix
        ).get_variable_to_shape_map()
        self.assertEqual(shapes["v/.ATTRIBUTES/VARIABLE_VALUE"], [elements])
        return info

    @parameterized.named_parameters(("ahead", True), ("read_here", False))
    def test_an_index_claiming_more_than_its_data_allocates_nothing(
        self, ahead
    ):
        # RestoreV2 would make a 256 MB tensor before finding that the data
        # file holds 4 bytes of it.
        d = self._dir("local")
        self._claiming(d, 1 << 26)
        target = _checkpoint([0.0])
        with _watching_restore_v2() as restore_v2:
            with self.assertRaisesRegex(
                errors.BackupCorruptError,
                r"ckpt\.index claims 268435\d+ bytes of tensors, more than "
                r"its data files hold \(\d+ bytes\)",
            ):
                store.BackupStore(d).restore_latest(
                    lambda i: target, ahead=ahead
                )
        restore_v2.assert_not_called()
        self.assertEqual(target.v.numpy().tolist(), [0.0])
        self.assertLen(store.BackupStore(d).committed(), 1, "it was kept")

    @parameterized.named_parameters(("ahead", True), ("read_here", False))
    def test_an_unreadable_index_is_corrupt_and_nothing_is_read(self, ahead):
        d = self._dir("local")
        info = self._write(store.BackupStore(d), [1.0])
        index = info.checkpoint_prefix + ".index"
        size = os.path.getsize(index)
        with open(index, "wb") as f:
            f.write(b"\xff" * size)  # the manifest's size, not an index
        tamper.rebind_files(info.path)
        with _watching_restore_v2() as restore_v2:
            with self.assertRaisesRegex(
                errors.BackupCorruptError, "its checkpoint index cannot be read"
            ):
                store.BackupStore(d).restore_latest(
                    lambda i: _checkpoint([0.0]), ahead=ahead
                )
        restore_v2.assert_not_called()

    def test_a_full_verification_refuses_an_index_claiming_more(self):
        d = self._dir("local")
        info = self._claiming(d, 1 << 26)
        # Refused before any tensor is read (which would fail otherwise:
        # "cannot be read").
        with self.assertRaisesRegex(errors.BackupCorruptError, "claims"):
            store.BackupStore(d).load(info.path, full_verify=True)

    # -- asynchronous writes ------------------------------------------------

    def _blocking_hook(self, stage):
        reached, release = threading.Event(), threading.Event()

        def hook(at, path):
            if at == stage:
                reached.set()
                release.wait(timeout=60)

        faults.set_hook(hook)
        return reached, release

    @parameterized.named_parameters(("local", "local"), ("ram", "ram"))
    def test_async_snapshot_is_consistent_and_commits_in_background(self, fs):
        # A state larger than kill_safe_max_bytes: written in background.
        s = store.BackupStore(self._dir(fs), kill_safe_max_bytes=0)
        self._write(s, [1.0])
        reached, release = self._blocking_hook(faults.DATA_WRITTEN)
        variable = tf.Variable([2.0])
        s.write_async(tf.train.Checkpoint(v=variable), {"value": [2.0]})
        self.assertTrue(reached.wait(timeout=60))
        self.assertTrue(s.pending)
        variable.assign([99.0])  # training goes on changing the state
        self.assertEqual([seq for seq, _ in s.committed()], [1])
        release.set()
        info = s.wait()
        self.assertEqual(info.seq, 2)
        target = tf.train.Checkpoint(v=tf.Variable([0.0]))
        target.read(s.latest().checkpoint_prefix)
        self.assertEqual(target.v.numpy().tolist(), [2.0])

    @parameterized.named_parameters(("local", "local"), ("ram", "ram"))
    def test_small_async_backup_is_published_on_return(self, fs):
        # Kill-safe when write_async returns: committed into the page cache
        # (a killed process resumes from it); the previous stays until the
        # new one is fsync'd (a machine loss may tear the new one).
        s = store.BackupStore(self._dir(fs))
        self._write(s, [1.0])
        reached, release = self._blocking_hook(faults.PUBLISHED)
        variable = tf.Variable([2.0])
        s.write_async(tf.train.Checkpoint(v=variable), {"value": [2.0]})
        self.assertEqual(s.last_kill_safe_seconds, 0.0)
        # Not a wait for the background: it is held before its fsync.
        self.assertEqual([seq for seq, _ in s.committed()], [1, 2])
        variable.assign([99.0])
        fresh = store.BackupStore(s.directory)  # what a restart would see
        target = tf.train.Checkpoint(v=tf.Variable([0.0]))
        info = fresh.latest()
        target.read(info.checkpoint_prefix)
        self.assertEqual((info.seq, target.v.numpy().tolist()), (2, [2.0]))
        self.assertTrue(reached.wait(timeout=60))
        self.assertTrue(s.pending)
        release.set()
        self.assertEqual(s.wait().seq, 2)
        self.assertEqual([seq for seq, _ in s.committed()], [2])

    def test_large_async_backup_reports_when_it_was_published(self):
        s = store.BackupStore(self._dir("local"), kill_safe_max_bytes=0)
        s.write_async(_checkpoint([1.0]), {"value": [1.0]})
        s.wait()
        self.assertIsNotNone(s.last_kill_safe_seconds)
        self.assertGreater(s.last_kill_safe_seconds, 0.0)

    def test_a_late_backup_makes_the_next_step_wait_until_kill_safe(self):
        # Held 1 s before publishing (a low-priority writer starved by
        # training); past the deadline the next step waits for it.
        s = store.BackupStore(self._dir("local"), kill_safe_max_bytes=0)
        s.kill_safe_deadline_seconds = 0.2

        def hold(at, path):
            del path
            if at == faults.DATA_WRITTEN:
                time.sleep(1.0)

        faults.set_hook(hold)
        s.write_async(_checkpoint([1.0]), {"value": [1.0]})
        self.assertEqual(s.enforce_kill_safe_deadline(), 0.0)  # not late
        self.assertEqual(s.committed(), [])
        time.sleep(0.3)
        self.assertGreater(s.enforce_kill_safe_deadline(), 0.3)
        self.assertEqual([seq for seq, _ in s.committed()], [1])
        self.assertEqual(s.enforce_kill_safe_deadline(), 0.0)  # published
        self.assertEqual(s.wait().seq, 1)

    def test_fsync_failure_after_publishing_retires_it(self):
        s = store.BackupStore(self._dir("local"))
        self._write(s, [1.0])

        def hook(at, path):
            if at == faults.FSYNC:
                raise OSError(5, "Input/output error", path)

        faults.set_hook(hook)
        s.write_async(_checkpoint([2.0]), {"value": [2.0]})
        with self.assertRaisesRegex(
            errors.BackupWriteError, "Input/output error.*previous backup"
        ):
            s.wait()
        faults.set_hook(None)
        self.assertEqual([seq for seq, _ in s.committed()], [1])
        self.assertEqual(s.latest().metadata["value"], [1.0])

    def test_async_backup_of_a_data_iterator_leaves_its_data_unchanged(self):
        # TensorFlow's async checkpointing alone perturbs a tf.data iterator
        # (the elements it yields afterwards change); the store must not.
        def dataset():
            return (
                tf.data.Dataset.range(64)
                .shuffle(64, seed=1, reshuffle_each_iteration=True)
                .batch(4)
                .repeat()
            )

        reference = iter(dataset())
        want = [next(reference).numpy().tolist() for _ in range(40)]
        iterator = iter(dataset())
        s = store.BackupStore(self._dir("local"))
        got = []
        for i in range(40):
            got.append(next(iterator).numpy().tolist())
            if i % 7 == 6:
                s.write_async(tf.train.Checkpoint(it=iterator), {"i": i})
        s.wait()
        self.assertEqual(got, want)

    def test_async_failure_surfaces_at_wait_and_keeps_previous(self):
        s = store.BackupStore(self._dir("local"), kill_safe_max_bytes=0)
        self._write(s, [1.0])
        faults.set_hook(_raise_at(faults.BEFORE_COMMIT, _enospc))
        s.write_async(_checkpoint([2.0]), {"value": [2.0]})
        with self.assertRaisesRegex(
            errors.BackupWriteError, "No space left.*previous backup"
        ):
            s.wait()
        faults.set_hook(None)
        self.assertEqual(s.latest().metadata["value"], [1.0])
        s.wait()  # the error was reported once

    def test_a_second_store_waits_for_a_write_in_flight(self):
        d = self._dir("local")
        # Larger than kill_safe_max_bytes: committed on the background thread.
        first = store.BackupStore(d, kill_safe_max_bytes=0)
        reached, release = self._blocking_hook(faults.BEFORE_COMMIT)
        first.write_async(_checkpoint([5.0]), {"value": [5.0]})
        self.assertTrue(reached.wait(timeout=60))
        threading.Timer(0.3, release.set).start()
        second = store.BackupStore(d)  # e.g. fit() called again after Ctrl-C
        self.assertEqual(second.cleanup(), [])  # did not remove first's write
        self.assertEqual(second.latest().metadata["value"], [5.0])

    @parameterized.named_parameters(
        ("far_apart", 1e6, True),
        ("close", 1e-6, False),
        ("unknown", None, False),
    )
    def test_background_priority_follows_the_expected_interval(
        self, interval, lowered
    ):
        s = store.BackupStore(self._dir("local"), kill_safe_max_bytes=0)
        base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        before = {t.native_id for t in threading.enumerate()}
        seen = {}

        def record(stage, path):
            # DATA_WRITE runs on TensorFlow's async-checkpoint writer,
            # PUBLISHED on the store's persist thread.
            if stage in (faults.DATA_WRITE, faults.PUBLISHED):
                seen[(stage, threading.get_native_id())] = os.getpriority(
                    os.PRIO_PROCESS, threading.get_native_id()
                )

        faults.set_hook(record)
        s.write_async(
            tf.train.Checkpoint(v=tf.Variable([2.0])),
            {"value": [2.0]},
            expected_interval=interval,
        )
        s.wait()
        self.assertLen(seen, 2, seen)
        self.assertNotIn(threading.get_native_id(), {t for _, t in seen})
        want = base
        if lowered:
            want = min(19, base + background.BACKGROUND_NICE_INCREMENT)
        self.assertEqual(set(seen.values()), {want}, seen)
        self.assertEqual(s.latest().metadata["value"], [2.0])
        s.close()  # the background thread ends
        persist_threads = [
            t
            for t in threading.enumerate()
            if t.native_id not in before and "backup_restore" in t.name
        ]
        self.assertEqual(persist_threads, [])

    def test_stores_never_closed_leave_no_thread_behind(self):
        # As after fit() calls that raised: their stores are never closed.
        for value in range(3):
            s = store.BackupStore(self._dir("local"), kill_safe_max_bytes=0)
            s.write_async(_checkpoint([float(value)]), {"value": value})
            s.wait()
        persist_threads = [
            t for t in threading.enumerate() if "backup_restore" in t.name
        ]
        self.assertEqual(persist_threads, [])

    def test_low_priority_snapshot_failure_is_raised_to_the_caller(self):
        s = store.BackupStore(self._dir("local"), kill_safe_max_bytes=0)
        self._write(s, [1.0])
        faults.set_hook(_raise_at(faults.BEFORE_DATA, _enospc))
        with self.assertRaisesRegex(
            errors.BackupWriteError, "No space left.*previous backup"
        ):
            s.write_async(
                _checkpoint([2.0]), {"value": [2.0]}, expected_interval=1e6
            )
        faults.set_hook(None)
        self.assertEqual(s.latest().metadata["value"], [1.0])
        s.write_async(_checkpoint([3.0]), {"value": [3.0]})
        self.assertEqual(s.wait().metadata["value"], [3.0])

    def test_invalid_directories(self):
        regular = os.path.join(self.tmp, "a_file")
        open(regular, "w").close()
        dangling = os.path.join(self.tmp, "dangling")
        os.symlink(os.path.join(self.tmp, "gone"), dangling)
        loop = os.path.join(self.tmp, "loop")
        os.symlink(os.path.join(self.tmp, "loop_back"), loop)
        os.symlink(loop, os.path.join(self.tmp, "loop_back"))
        for bad, exc, msg in [
            (None, ValueError, "Empty `backup_dir` argument passed: .*None"),
            ("", ValueError, "Empty `backup_dir` argument passed"),
            ("   ", ValueError, "Empty `backup_dir` argument passed"),
            (42, TypeError, "str or os.PathLike"),
            (b"/tmp/x", TypeError, "str or os.PathLike"),
            (regular, ValueError, "existing file"),
            (
                dangling,
                ValueError,
                r"'.*/dangling' is a symbolic link to .*gone.*not exist\. "
                "Create the directory it points to",
            ),
            (
                os.path.join(dangling, "sub"),
                ValueError,
                r"'.*/dangling/sub' is under '.*/dangling', a symbolic link "
                r"to .*gone.*not exist\.",
            ),
            (
                loop,
                ValueError,
                r"'.*/loop' is a symbolic link in a loop of symbolic links\. "
                "Replace the link with a directory",
            ),
            (
                os.path.join(loop, "sub"),
                ValueError,
                r"'.*/loop/sub' is under '.*/loop', a symbolic link in a loop",
            ),
        ]:
            with self.subTest(bad=bad):
                with self.assertRaisesRegex(exc, msg):
                    store.BackupStore(bad)
        self.assertTrue(os.path.isfile(regular), "nothing deleted")
        self.assertFalse(os.path.lexists(os.path.join(self.tmp, "gone")))

    def test_unwritable_directory(self):
        # Checked for real at construction, not at the first backup.
        if os.geteuid() == 0:
            # Permission bits do not stop root; /proc does.
            with self.assertRaisesRegex(ValueError, "not writable"):
                store.BackupStore("/proc/nope")
            self.assertFalse(os.path.exists("/proc/nope"))
        else:
            d = self.tmp
            os.chmod(d, 0o500)
            with self.assertRaisesRegex(ValueError, "not writable"):
                store.BackupStore(os.path.join(d, "sub"))
            with self.assertRaisesRegex(ValueError, "not writable"):
                store.BackupStore(d)

    def test_read_only_filesystem(self):
        mount_point = self.tmp
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", mount_point],
            capture_output=True,
            text=True,
            check=False,
        )
        if mounted.returncode != 0:
            self.skipTest(
                "cannot mount a read-only tmpfs (needs root with "
                f"CAP_SYS_ADMIN): {mounted.stderr.strip()}"
            )
        self.addCleanup(
            subprocess.run, ["umount", "-l", mount_point], check=False
        )
        for d in (mount_point, os.path.join(mount_point, "sub")):
            with self.assertRaisesRegex(ValueError, "not writable.*Read-only"):
                store.BackupStore(d)

    def test_missing_directory_is_created_and_probed_cleanly(self):
        d = os.path.join(self.tmp, "a", "b")
        s = store.BackupStore(d)
        self.assertTrue(os.path.isdir(d))
        # The probe file is removed; the record that it made d stays.
        self.assertEqual(os.listdir(d), [atomicity.CREATED])
        # One left by a crash during the probe is this store's to remove.
        left = os.path.join(d, atomicity.probe_name())
        open(left, "w").close()
        self.assertTrue(atomicity.is_ours(os.path.basename(left)))
        self.assertEqual(s.leftovers(), [left])
        self.assertEqual(s.cleanup(), [left])
        self._write(s, [1.0])
        self.assertEqual(s.latest().seq, 1)
        open(left, "w").close()
        s.delete_all()
        self.assertFalse(os.path.exists(d))

    def test_directory_removed_while_a_job_starts_is_made_again(self):
        # Its owner, ending, removes the empty directory it made while
        # another job starts (to be refused by the owner, or to follow it).
        d = os.path.join(self.tmp, "a", "b")
        real_makedirs = os.makedirs
        removed = []

        def makedirs_finding_it_gone(path, *args, **kwargs):
            if not removed:
                removed.append(path)  # it was there, then no more
                raise FileExistsError(17, "File exists", path)
            return real_makedirs(path, *args, **kwargs)

        with mock.patch.object(os, "makedirs", makedirs_finding_it_gone):
            store.BackupStore(d)
        self.assertEqual(removed, [d])
        self.assertTrue(os.path.isdir(d))

        real_create_file = paths.create_file

        def create_file_after_the_removal(path, *args, **kwargs):
            if atomicity.is_probe(os.path.basename(path)) and os.path.isdir(d):
                if not removed[1:]:
                    removed.append(path)
                    shutil.rmtree(d)
            return real_create_file(path, *args, **kwargs)

        with mock.patch.object(
            paths, "create_file", create_file_after_the_removal
        ):
            store.BackupStore(d)
        self.assertLen(removed, 2)
        self.assertTrue(os.path.isdir(d))

        # A planted file is still refused.
        planted = os.path.join(self.tmp, "planted")
        open(planted, "w").close()
        with self.assertRaisesRegex(ValueError, "planted"):
            store.BackupStore(os.path.join(planted, "sub"))

    def test_probe_removed_by_its_job_during_the_cleanup(self):
        s = store.BackupStore(self.dir)
        probe = os.path.join(self.dir, atomicity.probe_name())
        open(probe, "w").close()  # another job checking it can write here
        real_remove_file = paths.remove_file

        def remove_file_after_its_job(path):
            if path == probe:
                os.unlink(probe)  # that job was quicker
            return real_remove_file(path)

        with mock.patch.object(paths, "remove_file", remove_file_after_its_job):
            self.assertEqual(s.cleanup(), [probe])
            open(probe, "w").close()
            s.delete_all()
        self.assertFalse(os.path.exists(probe))

    def test_in_memory_directory_warns(self):
        with self.assertLogs(level="WARNING") as logs:
            store.BackupStore(self._dir("ram"))
        self.assertTrue(
            any("lost when this process exits" in m for m in logs.output),
            logs.output,
        )
        with self.assertNoLogs(level="WARNING"):
            store.BackupStore(self._dir("local"))

    def test_pathlike_is_accepted(self):
        import pathlib

        d = pathlib.Path(self.dir)
        s = store.BackupStore(d)
        self.assertEqual(s.directory, self.dir)


class CommitStrategyTest(test_case.TestCase):
    """One commit strategy per backup_dir, from its filesystem."""

    def test_chosen_by_filesystem(self):
        local = atomicity.for_directory(self.tmp)
        self.assertIsInstance(local, atomicity.AtomicRename)
        self.assertTrue(local.marks_durable)
        self.assertTrue(
            atomicity.parse_temporary(
                os.path.basename(local.work_dir(self.tmp, 3))
            )
        )
        for directory in ("ram://x/backups", "gs://bucket/backups"):
            marker = atomicity.for_directory(directory)
            self.assertIsInstance(marker, atomicity.CommitMarker)
            self.assertFalse(marker.marks_durable)
            self.assertEqual(
                marker.work_dir(directory, 3), f"{directory}/backup-00000003"
            )

    def test_a_store_commits_by_its_directory_strategy(self):
        for fs, kind in (
            ("local", atomicity.AtomicRename),
            ("ram", atomicity.CommitMarker),
        ):
            s = store.BackupStore(dirs.backup_dir(self, fs))
            self.assertIsInstance(s.commit, kind)
            s.write(tf.train.Checkpoint(v=tf.Variable(1.0)), {"n": 1})
            self.assertEqual([seq for seq, _ in s.committed()], [1])
            s.delete_all()


class WritebackStarterTest(test_case.TestCase):
    def test_starts_writeback_while_files_grow_then_stops(self):
        d = self.tmp
        path = os.path.join(d, "sub", "data")
        os.makedirs(os.path.dirname(path))
        with mock.patch.object(
            atomicity.os, "posix_fadvise", wraps=os.posix_fadvise
        ) as fadvise:
            with atomicity.WritebackStarter(d, interval=0.001) as starter:
                thread = starter._thread
                with open(path, "wb") as f:
                    for _ in range(32):
                        f.write(b"x" * (1 << 16))
                        f.flush()
                        time.sleep(0.002)
                os.rename(path, path + ".moved")  # files may vanish meanwhile
                time.sleep(0.01)
                self.assertTrue(thread.is_alive())
            self.assertFalse(thread.is_alive())
        self.assertTrue(fadvise.called)
        self.assertEqual(
            {c.args[1:] for c in fadvise.call_args_list},
            {(0, 0, os.POSIX_FADV_DONTNEED)},
        )
        self.assertEqual(os.path.getsize(path + ".moved"), 32 << 16)

    def test_no_thread_off_the_local_filesystem(self):
        with atomicity.WritebackStarter("ram://somewhere/else") as starter:
            self.assertIsNone(starter._thread)


if __name__ == "__main__":
    absltest.main()
