"""Failed backup writes: a full disk, and an error at every stage.

Whatever fails while a backup is written, and wherever (TensorFlow's own
writer thread included), the previous backup stays committed and restorable,
nothing incomplete is ever committed, the error names the backup that failed
and says what to do, and the store works again once the cause is gone.
"""

import errno
import os
import shutil
import subprocess
import threading
from unittest import mock

import numpy as np
import tensorflow as tf
from absl import logging
from absl.testing import absltest
from absl.testing import parameterized

from backup_restore._src import atomicity
from backup_restore._src import errors
from backup_restore._src import faults
from backup_restore._src import manifest
from backup_restore._src import ownership
from backup_restore._src import store
from testing import dirs
from testing import test_case

_ENOSPC = "No space left on device"

# Stages before the backup is durable: an error there fails the backup.
_BEFORE_COMMIT_STAGES = (
    faults.BEFORE_DATA,
    faults.DATA_WRITE,
    faults.DATA_WRITTEN,
    faults.BEFORE_COMMIT,
    faults.MANIFEST_WRITE,
    faults.RENAME,
    # Published, not yet durable: a failure to make it durable retires it.
    faults.PUBLISHED,
    faults.FSYNC,
)
# Stages after the commit: the new backup stands, older ones are kept.
_AFTER_COMMIT_STAGES = (faults.COMMITTED, faults.DELETE_OLDER)
# sync: durable on return; async: a small state, published on return and
# made durable in background; async_in_background: a state larger than
# kill_safe_max_bytes, written in background too.
_MODES = ("sync", "async", "async_in_background")


class _Killed(Exception):
    """Stands for a kill: the store does not handle it."""


def _checkpoint(value, size=4):
    return tf.train.Checkpoint(
        v=tf.Variable(np.full([size], value, np.float32)),
        step=tf.Variable(7),
    )


def _raise_enospc_at(stage, also=None):
    def hook(reached, path):
        if reached == stage:
            if also is not None:
                also(path)
            raise OSError(errno.ENOSPC, _ENOSPC, path)

    return hook


def _like_a_full_disk(directory):
    """Leaves what TensorFlow leaves when a full disk fails its write."""
    for name in tf.io.gfile.listdir(directory):
        full = os.path.join(directory, name.rstrip("/"))
        if tf.io.gfile.isdir(full):
            tf.io.gfile.rmtree(full)
        else:
            tf.io.gfile.remove(full)
    tf.io.gfile.makedirs(os.path.join(directory, "ckpt_temp"))


def _damage_like_issue_13(backup_path):
    """A committed backup of only a manifest and an empty ckpt_temp/."""
    _like_a_full_disk(backup_path)
    body = manifest.build(
        backup_path, ["ckpt_temp"], {"value": [2.0]}, marks_durable=False
    )
    atomicity.write_file_durably(
        os.path.join(backup_path, atomicity.MANIFEST), body
    )


class _Base(test_case.TestCase):
    def setUp(self):
        super().setUp()
        self.addCleanup(faults.set_hook, None)

    def _dir(self, fs="local"):
        return dirs.backup_dir(self, fs)

    def _store(self, fs, mode):
        """A store and whether to write asynchronously, for one of _MODES."""
        background = mode == "async_in_background"
        return (
            store.BackupStore(
                self._dir(fs), kill_safe_max_bytes=0 if background else None
            ),
            mode != "sync",
        )

    def _write(self, s, value, asynchronous, size=4):
        """Writes a backup; returns (info, error)."""
        try:
            s.write_async(
                _checkpoint(value, size),
                {"value": value},
                asynchronous=asynchronous,
            )
            return s.wait(), None
        except errors.BackupWriteError as e:
            return None, e

    def _restored_value(self, s, size=4):
        target = _checkpoint(0.0, size)

        def prepare(info):
            return target

        info, _ = s.restore_latest(prepare)
        self.assertEqual(info.metadata["value"], float(target.v.numpy()[0]))
        return info.seq, info.metadata["value"]

    def _assert_failed_write(self, s, error, seq, previous, cause=_ENOSPC):
        """The checks after a write of backup `seq` failed for
        `cause` (a full disk: the error also says what to do)."""
        self.assertIsInstance(error, errors.BackupWriteError)
        text = str(error)
        self.assertIn(atomicity.committed_name(seq), text)
        self.assertIn(cause, text)
        if cause == _ENOSPC:
            self.assertRegex(text, "free space|another backup_dir")
        for other in range(seq + 1, seq + 3):
            self.assertNotIn(atomicity.committed_name(other), text)
        committed = [q for q, _ in s.committed()]
        if previous is None:
            self.assertEqual(committed, [])
            self.assertRegex(text, "no earlier backup|No earlier backup")
            self.assertIsNone(s.latest())
        else:
            self.assertEqual(committed, [previous])
            self.assertIn(atomicity.committed_name(previous), text)
            self.assertEqual(s.latest().seq, previous)  # full verification
        self.assertEqual(s.leftovers(), [], "the failed write is removed")


class InjectedFailureTest(_Base):
    @parameterized.named_parameters(
        (f"{fs}_{mode}_{stage}", fs, mode, stage)
        for fs in ("local", "ram")
        for mode in _MODES
        for stage in _BEFORE_COMMIT_STAGES
        if not (fs == "ram" and stage == faults.RENAME)
    )
    def test_failure_before_commit(self, fs, mode, stage):
        s, asynchronous = self._store(fs, mode)
        self.assertEqual(self._write(s, 1.0, asynchronous)[0].seq, 1)
        faults.set_hook(_raise_enospc_at(stage))
        info, error = self._write(s, 2.0, asynchronous)
        faults.set_hook(None)
        self.assertIsNone(info)
        self._assert_failed_write(s, error, seq=2, previous=1)
        self.assertEqual(self._restored_value(s), (1, 1.0))
        # The cause gone, the same store writes again.
        info, error = self._write(s, 3.0, asynchronous)
        self.assertIsNone(error)
        self.assertGreater(info.seq, 2)
        self.assertEqual([q for q, _ in s.committed()], [info.seq])
        self.assertEqual(self._restored_value(s), (info.seq, 3.0))
        s.close()

    @parameterized.named_parameters(
        (f"{fs}_{mode}", fs, mode) for fs in ("local", "ram") for mode in _MODES
    )
    def test_tensorflow_write_error_like_a_full_disk(self, fs, mode):
        # What TF leaves behind when its writer fails: no index,
        # no data, an empty ckpt_temp/; the error belongs to this backup.
        s, asynchronous = self._store(fs, mode)
        self._write(s, 1.0, asynchronous)
        faults.set_hook(
            _raise_enospc_at(faults.DATA_WRITE, also=_like_a_full_disk)
        )
        _, error = self._write(s, 2.0, asynchronous)
        faults.set_hook(None)
        self._assert_failed_write(s, error, seq=2, previous=1)
        info, error = self._write(s, 3.0, asynchronous)
        self.assertIsNone(error, "TF's error was reported at its own backup")
        self.assertEqual(self._restored_value(s), (info.seq, 3.0))

    @parameterized.named_parameters(
        ("missing_index", lambda d: os.remove(os.path.join(d, "ckpt.index"))),
        (
            "missing_shard",
            lambda d: os.remove(os.path.join(d, "ckpt.data-00000-of-00001")),
        ),
        ("temp_dir", lambda d: os.mkdir(os.path.join(d, "ckpt_temp"))),
        (
            "tempstate",
            lambda d: open(
                os.path.join(d, "ckpt.data-00000-of-00001.tempstate123"), "w"
            ).close(),
        ),
        (
            "index_not_readable",
            lambda d: open(os.path.join(d, "ckpt.index"), "wb").close(),
        ),
    )
    def test_an_incomplete_checkpoint_is_never_committed(self, damage):
        # Even when no error is raised at all (TF's error lost), the commit
        # checks that the checkpoint is complete.
        for asynchronous in (False, True):
            with self.subTest(asynchronous=asynchronous):
                s = store.BackupStore(self._dir())
                self._write(s, 1.0, asynchronous)

                def hook(reached, path):
                    if reached == faults.DATA_WRITTEN:
                        damage(path)

                faults.set_hook(hook)
                _, error = self._write(s, 2.0, asynchronous)
                faults.set_hook(None)
                self._assert_failed_write(
                    s, error, seq=2, previous=1, cause="incomplete"
                )
                self.assertEqual(self._restored_value(s), (1, 1.0))

    @parameterized.named_parameters(
        (f"{fs}_{mode}_{stage}", fs, mode, stage)
        for fs in ("local", "ram")
        for mode in _MODES
        for stage in _AFTER_COMMIT_STAGES
    )
    def test_failure_after_commit_keeps_both(self, fs, mode, stage):
        s, asynchronous = self._store(fs, mode)
        self._write(s, 1.0, asynchronous)
        faults.set_hook(_raise_enospc_at(stage))
        with self.assertLogs(level=logging.WARNING) as logs:
            info, error = self._write(s, 2.0, asynchronous)
        faults.set_hook(None)
        self.assertIsNone(error, "backup 2 is committed and complete")
        self.assertEqual(info.seq, 2)
        self.assertTrue(any(_ENOSPC in m for m in logs.output), logs.output)
        self.assertEqual([q for q, _ in s.committed()], [1, 2])
        self.assertEqual(self._restored_value(s), (2, 2.0))
        info, error = self._write(s, 3.0, asynchronous)
        self.assertIsNone(error)
        self.assertEqual([q for q, _ in s.committed()], [3])

    def test_parent_fsync_failure_uncommits(self):
        s = store.BackupStore(self._dir())
        self._write(s, 1.0, False)
        real = atomicity.fsync_path
        calls = []

        def fsync(path, follow=False):
            if path == s.directory:
                calls.append(path)
                raise OSError(errno.EIO, "Input/output error", path)
            return real(path, follow)

        with mock.patch.object(atomicity, "fsync_path", fsync):
            _, error = self._write(s, 2.0, False)
        self.assertTrue(calls)
        self._assert_failed_write(
            s, error, seq=2, previous=1, cause="Input/output error"
        )

    def test_error_surfaces_at_the_next_call(self):
        # As documented: an asynchronous failure is raised once, by the next
        # write_async / wait / close, and the store stays usable.
        for call in ("write_async", "wait", "close"):
            with self.subTest(call=call):
                # Written in background: the error is the next call's.
                s = store.BackupStore(self._dir(), kill_safe_max_bytes=0)
                self._write(s, 1.0, True)
                failed = threading.Event()
                faults.set_hook(
                    _raise_enospc_at(
                        faults.DATA_WRITE, lambda _, event=failed: event.set()
                    )
                )
                s.write_async(_checkpoint(2.0), {"value": 2.0})
                with self.assertRaisesRegex(
                    errors.BackupWriteError, "backup-00000002"
                ):
                    if call == "write_async":
                        self.assertTrue(failed.wait(timeout=60))
                        faults.set_hook(None)
                        s.write_async(_checkpoint(3.0), {"value": 3.0})
                    else:
                        getattr(s, call)()
                faults.set_hook(None)
                self.assertIsNone(s.wait())  # reported once
                info, error = self._write(s, 4.0, True)
                self.assertIsNone(error)
                self.assertEqual(self._restored_value(s), (info.seq, 4.0))
                s.close()


class InTheWayTest(_Base):
    """Something put at the name of the next backup while training runs
    (the store numbers its backups past every name there at its start)."""

    @parameterized.named_parameters(
        ("link", "symbolic link"),
        ("dangling_link", "symbolic link"),
        ("directory", "directory"),
        ("file", "file"),
    )
    def test_it_is_named_and_kept(self, kind):
        outside = self.create_tempdir().full_path
        target = os.path.join(outside, "precious")
        with open(target, "wb") as f:
            f.write(b"keep")
        s = store.BackupStore(self._dir())
        self.assertEqual(self._write(s, 1.0, False)[0].seq, 1)
        path = os.path.join(s.directory, atomicity.committed_name(2))
        if self._testMethodName.endswith("_dangling_link"):
            os.symlink(os.path.join(outside, "gone"), path)
        elif kind == "symbolic link":
            os.symlink(outside, path)
        elif kind == "directory":
            os.mkdir(path)
            with open(os.path.join(path, "x"), "wb") as f:
                f.write(b"x")
        else:
            with open(path, "wb") as f:
                f.write(b"x")
        before = sorted(os.listdir(s.directory))
        _, error = self._write(s, 2.0, False)
        self.assertIsInstance(error, errors.BackupWriteError)
        self.assertIn(
            f"A {kind} that no backup wrote is in the way at {path}: move it "
            f"out of {s.directory}",
            str(error),
        )
        self.assertEqual(sorted(os.listdir(s.directory)), before)
        self.assertEqual([q for q, _ in s.committed()], [1])
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"keep")
        self.assertEqual(os.listdir(outside), ["precious"])
        # Once it is moved out, the next backup takes the name.
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        info, error = self._write(s, 3.0, False)
        self.assertIsNone(error)
        self.assertEqual(self._restored_value(s), (info.seq, 3.0))
        s.close()


class DamagedBackupTest(_Base):
    """A committed backup whose checkpoint is incomplete, built by hand."""

    def test_load_and_latest_reject_it_and_fall_back(self):
        s = store.BackupStore(self._dir())
        self._write(s, 1.0, False)

        def kill(stage, path):
            if stage == faults.COMMITTED:
                raise _Killed(path)

        faults.set_hook(kill)
        with self.assertRaises(_Killed):  # a "kill" before deleting older
            self._write(s, 2.0, False)
        faults.set_hook(None)
        newest = s.committed()[-1][1]
        _damage_like_issue_13(newest)
        for full in (False, True):
            with self.assertRaisesRegex(
                errors.BackupCorruptError, "incomplete|ckpt.index"
            ):
                s.load(newest, full_verify=full)
        with self.assertLogs(level=logging.WARNING):
            self.assertEqual(s.latest(full_verify=False).seq, 1)
        self.assertEqual(self._restored_value(s), (1, 1.0))

    @parameterized.named_parameters(
        ("empty_index", "ckpt.index", 0),
        ("empty_data", "ckpt.data-00000-of-00001", 0),
        ("short_data", "ckpt.data-00000-of-00001", 2),
    )
    def test_restore_falls_back_from_empty_or_short_files(self, name, part):
        # Committed with files shorter than the index says, the manifest
        # agreeing: the quick check or the read refuses it.
        s = store.BackupStore(self._dir())
        self._write(s, 1.0, False, size=1000)
        newest = os.path.join(s.directory, "backup-00000002")
        shutil.copytree(s.committed()[0][1], newest)
        path = os.path.join(newest, name)
        os.truncate(path, os.path.getsize(path) // 2 if part else 0)
        names = [
            n
            for n in os.listdir(newest)
            if n not in (atomicity.MANIFEST, atomicity.DURABLE)
        ]
        atomicity.write_file_durably(
            os.path.join(newest, atomicity.MANIFEST),
            manifest.build(newest, names, {"value": 2.0}, marks_durable=False),
        )
        with self.assertRaises(errors.BackupCorruptError):
            s.load(newest, full_verify=True)
        # Made by hand, not by the store: seen from the next run's start.
        s.refresh()
        with self.assertLogs(level=logging.WARNING) as logs:
            self.assertEqual(self._restored_value(s, 1000), (1, 1.0))
        self.assertTrue(any("Falling back" in m for m in logs.output))


class FullDiskTest(_Base):
    """A real ENOSPC, on a small tmpfs (needs root / CAP_SYS_ADMIN)."""

    def _tmpfs(self, size):
        mount_point = self.tmp
        try:
            result = subprocess.run(
                [
                    "mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    f"size={size}",
                    "tmpfs",
                    mount_point,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError as e:
            self.skipTest(f"cannot run mount ({e}): needs root")
        if result.returncode != 0:
            self.skipTest(
                "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): "
                + result.stderr.strip()
            )
        self.addCleanup(
            subprocess.run, ["umount", "-l", mount_point], check=False
        )
        return mount_point

    # float32 values: about 1.1 MB.
    _SIZE = 280_000

    @parameterized.named_parameters(("sync", False), ("async", True))
    def test_the_first_fits_a_later_one_does_not(self, asynchronous):
        mount_point = self._tmpfs("3m")
        filler = os.path.join(mount_point, "someone_elses_file")
        with open(filler, "wb") as f:
            f.write(b"x" * 1_500_000)
        s = store.BackupStore(os.path.join(mount_point, "backups"))
        info, error = self._write(s, 1.0, asynchronous, self._SIZE)
        self.assertIsNone(error)
        self.assertEqual(info.seq, 1)
        info, error = self._write(s, 2.0, asynchronous, self._SIZE)
        self.assertIsNone(info)
        self._assert_failed_write(s, error, seq=2, previous=1)
        self.assertEqual(self._restored_value(s, self._SIZE), (1, 1.0))
        # And a restart would resume from it too.
        restarted = store.BackupStore(s.directory)
        restarted.cleanup()
        self.assertEqual(restarted.latest().seq, 1)
        # Space freed: the same store writes again.
        os.remove(filler)
        info, error = self._write(s, 3.0, asynchronous, self._SIZE)
        self.assertIsNone(error)
        self.assertEqual([q for q, _ in s.committed()], [info.seq])
        self.assertEqual(self._restored_value(s, self._SIZE), (info.seq, 3.0))
        s.close()

    def test_not_even_the_owners_record_fits(self):
        mount_point = self._tmpfs("200k")
        filler = os.path.join(mount_point, "someone_elses_file")
        with open(filler, "wb", buffering=0) as f:
            with self.assertRaises(OSError):
                while True:  # until the disk is full
                    f.write(b"x" * 4096)
        directory = os.path.join(mount_point, "backups")
        with self.assertRaisesRegex(
            errors.BackupWriteError, "No space left on device.*Free space"
        ):
            ownership.acquire(directory)
        self.assertEqual(os.listdir(directory), [])  # no lock file kept
        os.remove(filler)
        # Not held by this process either: it owns the directory now.
        ownership.acquire(directory).release()

    @parameterized.named_parameters(("sync", False), ("async", True))
    def test_not_even_the_first_fits(self, asynchronous):
        mount_point = self._tmpfs("1m")
        s = store.BackupStore(os.path.join(mount_point, "backups"))
        info, error = self._write(s, 1.0, asynchronous, self._SIZE)
        self.assertIsNone(info)
        self._assert_failed_write(s, error, seq=1, previous=None)
        # A smaller state fits.
        info, error = self._write(s, 2.0, asynchronous, 1000)
        self.assertIsNone(error)
        self.assertEqual(self._restored_value(s, 1000), (info.seq, 2.0))
        s.close()


if __name__ == "__main__":
    absltest.main()
