"""Tampered backups: an edited manifest with its CRC-32 computed again.

The checksum passes; the schemas of the manifest (manifest.py), of a fit()
backup's metadata (backup_metadata.py) and of BackupManager's refuse the
backup as corrupt, naming the field: the store falls back to an older intact
backup, or raises BackupCorruptError. Never a TypeError / KeyError from
deep inside, never a resume at a position that does not exist.
"""

import os
import re
import shutil
import tempfile

import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

import backup_restore
from backup_restore import inspect_backups
from backup_restore._src import backup_metadata_checks
from backup_restore._src import errors
from backup_restore._src import schema_fields
from backup_restore._src import store
from testing import fit_test_case
from testing import keras_callbacks
from testing import tamper
from testing import test_case

EPOCHS = 2
SAMPLES = 32
BATCH = 8  # 4 batches per epoch
# Backed up after every batch, interrupted at the end of the 6th: the backup
# is at epoch 1, batch 2.
INTERRUPT_AT = 6
POSITION = (1, 2)

_DELETE = tamper.DELETE


def _fit(test, callbacks):
    """fit() of a fresh tiny model, with EarlyStopping's best weights: they
    make the backup hold callback tensors."""
    early_stopping = test.keras.callbacks.EarlyStopping(
        monitor="loss", patience=5, restore_best_weights=True
    )
    return test.fit_tiny(
        test.tiny_model(),
        [early_stopping, *callbacks],
        epochs=EPOCHS,
        samples=SAMPLES,
        batch=BATCH,
    )


class FitMetadataTest(fit_test_case.FitTestCase):
    """The callback's backups, in this class's Keras flavour."""

    # flavour -> a directory holding the one backup of an interrupted fit().
    _pristine = {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._tmp = tempfile.mkdtemp()
        cls.addClassCleanup(shutil.rmtree, cls._tmp, True)

    def _backups(self, older: bool) -> str:
        """Puts a backup of an interrupted fit() into self.dir; returns the
        path of the one to tamper with. With `older`, that is a newer copy
        of it, and the original is the intact older backup."""
        if self.FLAVOUR not in self._pristine:
            directory = os.path.join(self._tmp, self.FLAVOUR)
            callback = backup_restore.BackupAndRestore(
                directory, save_freq=1, async_backup=False
            )
            with self.assertRaises(keras_callbacks.Interrupted):
                _fit(
                    self, [callback, keras_callbacks.InterruptAt(INTERRUPT_AT)]
                )
            keras_callbacks.simulate_restart()
            self._pristine[self.FLAVOUR] = directory
        (pristine,) = tamper.committed(self._pristine[self.FLAVOUR])
        backup = os.path.join(self.dir, os.path.basename(pristine))
        os.makedirs(self.dir)
        shutil.copytree(pristine, backup)
        return tamper.copy_as_newer(self.dir) if older else backup

    def _resume(self):
        """fit() again on self.dir; returns the callback."""
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=1)
        _fit(self, [callback])
        return callback

    def _assert_refused(self, field):
        """The only backup is refused as corrupt, naming `field`."""
        with self.assertRaisesRegex(
            errors.BackupCorruptError,
            rf"invalid metadata: {re.escape(field)}\b",
        ):
            self._resume()
        self.assertLen(tamper.committed(self.dir), 1, "nothing is deleted")

    def _assert_falls_back(self, field):
        """The tampered newest backup is skipped, naming `field`; training
        resumes from the older one."""
        with self.assertLogs(level="WARNING") as logs:
            callback = self._resume()
        self.assertEqual(callback.resumed_from, POSITION)
        self.assertTrue(
            any(
                "Skipping corrupt backup" in line
                and f"invalid metadata: {field}" in line
                for line in logs.output
            ),
            logs.output,
        )

    # -- positions that do not exist -----------------------------------------

    @parameterized.product(
        tampered=[
            ("position.step", 10**30),
            ("position.step", -5),
            # 4 batches per epoch.
            ("position.step", 5),
            ("position.drawn", 10**30),
            ("position.drawn", -5),
            # 6 batches were trained up to epoch 1, batch 2.
            ("position.drawn", 7),
            ("position.iterators_done", 100),
            ("position.iterators_done", -1),
            ("position.epoch", 10**30),
            ("position.epoch", -1),
        ],
        older=[True, False],
    )
    def test_position_past_the_data_is_refused(self, tampered, older):
        field, value = tampered
        tamper.set_field(self._backups(older), field, value)
        if older:
            self._assert_falls_back(field)
        else:
            self._assert_refused(field)

    # -- wrong types and missing keys ----------------------------------------

    @parameterized.named_parameters(
        (f"{field.replace('.', '_')}_{name}", field, value)
        for field, values in [
            ("format", [5]),
            ("format_version", ["2"]),
            ("keras", [["keras3"]]),
            ("versions", ["x", {"tensorflow": 2}]),
            ("position", [[]]),
            ("position.epoch", ["1", 1.0]),
            ("position.step", [True, "2"]),
            ("position.drawn", [2.0]),
            ("position.iterators_done", [None]),
            ("position.stop_training", [0]),
            ("position.epoch_trained", ["no"]),
            ("position.counted_steps_per_epoch", [0, "4"]),
            ("fit_call", ["x"]),
            ("fit_call.initial_epoch", ["0"]),
            ("fit_call.arguments.shuffle", [1, [True]]),
            ("fit_call.arguments.sample_weight", ["no"]),
            ("fit_call.arguments.steps_per_epoch", ["4", -1]),
            ("fit_call.arguments.validation_freq", ["2", ["1"]]),
            ("data", ["x"]),
            ("data.steps_per_epoch", ["4"]),
            ("fingerprint", [5]),
            ("fingerprint.variables", [{}]),
            ("fingerprint.optimizer", [None]),
            ("build_config", ["x"]),
            ("history", [[]]),
            ("history.epoch", [["0"]]),
            ("history.history", [[]]),
            ("history.keys", [[1]]),
            ("metrics", [{}]),
            ("callbacks", [[]]),
            ("callback_tensors", ["x"]),
            ("written_at", ["x", 1e30]),
            ("scope", [5]),
        ]
        for name, value in [
            *((f"{type(v).__name__}{i}", v) for i, v in enumerate(values)),
            ("missing", _DELETE),
        ]
    )
    def test_wrong_type_or_missing_field_is_corrupt(self, field, value):
        tamper.set_field(self._backups(older=False), field, value)
        self._assert_refused(field)

    def test_fit_arguments_of_wrong_type_are_corrupt(self):
        tamper.set_field(self._backups(older=False), "fit_call.arguments", [])
        self._assert_refused("fit_call.arguments")

    def test_a_backup_without_fit_arguments_resumes(self):
        # Backups of earlier releases of this format do not record them.
        tamper.set_field(
            self._backups(older=False), "fit_call.arguments", _DELETE
        )
        self.assertEqual(self._resume().resumed_from, POSITION)

    def test_a_backup_of_another_format_version_is_refused_naming_it(self):
        # A release that changes the schema raises FORMAT_VERSION; a backup
        # of another version is not guessed at.
        tamper.set_field(self._backups(older=False), "format_version", 3)
        with self.assertRaisesRegex(
            errors.BackupMismatchError,
            r"format version 3, this version of backup_restore reads 2\b",
        ):
            self._resume()
        self.assertLen(tamper.committed(self.dir), 1, "nothing is deleted")

    def test_whole_metadata_of_wrong_type_is_corrupt(self):
        tamper.set_field(self._backups(older=False), "", ["not", "a", "dict"])
        with self.assertRaisesRegex(
            errors.BackupCorruptError, r"metadata is \['not'"
        ):
            self._resume()

    def test_callback_tensors_other_than_the_checkpoint_are_corrupt(self):
        backup = self._backups(older=True)

        def bigger(body):
            spec = body["metadata"]["callback_tensors"]
            self.assertTrue(spec, "the backup holds EarlyStopping's weights")
            arrays = next(iter(spec.values()))
            arrays[0][0] = [4096, 4096]

        tamper.edit(backup, bigger)
        self._assert_falls_back("callback_tensors")

    def test_inspect_reports_invalid_metadata_as_corrupt(self):
        backup = self._backups(older=False)
        tamper.set_field(backup, "position", _DELETE)
        entry = inspect_backups._describe(
            tf, errors, store.BackupStore(self.dir), backup, False
        )
        self.assertTrue(entry["corrupt"])
        self.assertIn(
            "invalid metadata: position is missing", entry["integrity"]
        )


FitMetadataTfKerasTest = test_case.tf_keras_variant(FitMetadataTest)


class ManagerMetadataTest(test_case.TestCase):
    """BackupManager's backups of a variable, backed up at step 3."""

    def _manager(self):
        self.variable = tf.Variable([1.0, 2.0, 3.0])
        return backup_restore.BackupManager(self.dir, weights=self.variable)

    def _backups(self, older: bool) -> str:
        manager = self._manager()
        manager.restore()
        self.variable.assign([4.0, 5.0, 6.0])
        manager.backup(3, wait=True)
        manager.finish(delete=False)
        (backup,) = tamper.committed(self.dir)
        return tamper.copy_as_newer(self.dir) if older else backup

    @parameterized.named_parameters(
        ("step_huge", "step", 10**30),
        ("step_negative", "step", -1),
        ("variables_shape", "variables", {"weights": [[-3], "float32"]}),
    )
    def test_tampered_newest_falls_back_to_the_older(self, field, value):
        tamper.set_field(self._backups(older=True), field, value)
        with self.assertLogs(level="WARNING") as logs:
            step = self._manager().restore()
        self.assertEqual(step, 3)
        self.assertTrue(
            any(f"invalid metadata: {field}" in line for line in logs.output),
            logs.output,
        )

    @parameterized.named_parameters(
        ("step_huge", "step", 10**30),
        ("step_negative", "step", -1),
        ("step_str", "step", "3"),
        ("step_bool", "step", True),
        ("step_missing", "step", _DELETE),
        ("variables_list", "variables", ["weights"]),
        ("variables_entry", "variables", {"weights": [[3], 5]}),
        ("variables_dims", "variables", {"weights": [["3"], "float32"]}),
        ("variables_missing", "variables", _DELETE),
        ("format_int", "format", 1),
        ("format_missing", "format", _DELETE),
        ("written_at_str", "written_at", "x"),
        ("scope_int", "scope", 5),
        ("scope_missing", "scope", _DELETE),
        ("metadata_list", "", ["not", "a", "dict"]),
    )
    def test_wrong_metadata_is_corrupt(self, field, value):
        tamper.set_field(self._backups(older=False), field, value)
        with self.assertRaisesRegex(
            errors.BackupCorruptError, rf"{re.escape(field or 'metadata')}\b"
        ):
            self._manager().restore()
        self.assertLen(tamper.committed(self.dir), 1, "nothing is deleted")


class ManifestSchemaTest(test_case.TestCase):
    """The manifest's own structure, through the store."""

    def _backup(self) -> str:
        s = store.BackupStore(self.dir)
        checkpoint = tf.train.Checkpoint(v=tf.Variable([1.0, 2.0]))
        return s.write(checkpoint, {"value": 1}).path

    @staticmethod
    def _index(body):
        return next(n for n in body["files"] if n.endswith(".index"))

    @parameterized.named_parameters(
        (
            "files_list",
            lambda body: {**body, "files": sorted(body["files"])},
            r"files is \[",
        ),
        (
            "entry_int",
            lambda body: {
                **body,
                "files": {n: e["size"] for n, e in body["files"].items()},
            },
            r"files\['ckpt\.[^']*'\] is \d+",
        ),
        (
            "entry_extra_key",
            lambda body: {
                **body,
                "files": {
                    n: {**e, "sha": "x"} for n, e in body["files"].items()
                },
            },
            r"files\['ckpt\.[^']*'\] is \{",
        ),
        (
            "sha256_not_hex",
            lambda body: {
                **body,
                "files": {
                    n: {**e, "sha256": "not hex"}
                    for n, e in body["files"].items()
                },
            },
            r"files\['ckpt\.[^']*'\]\.sha256 is 'not hex', not 64 lower-case "
            r"hex digits",
        ),
        (
            "sha256_upper_case",
            lambda body: {
                **body,
                "files": {
                    n: {**e, "sha256": "AB" * 32}
                    for n, e in body["files"].items()
                },
            },
            r"\.sha256 is 'ABAB.*, not 64 lower-case hex digits",
        ),
        (
            "size_float",
            lambda body: {
                **body,
                "files": {
                    n: {"size": float(e["size"])}
                    for n, e in body["files"].items()
                },
            },
            r"files\['ckpt\.[^']*'\]\.size is \d+\.0",
        ),
        (
            "size_str",
            lambda body: {
                **body,
                "files": {
                    n: {"size": str(e["size"])}
                    for n, e in body["files"].items()
                },
            },
            r"files\['ckpt\.[^']*'\]\.size is '\d+'",
        ),
        (
            "size_bool",
            lambda body: {
                **body,
                "files": {n: {"size": True} for n in body["files"]},
            },
            r"files\['ckpt\.[^']*'\]\.size is True",
        ),
        (
            "metadata_list",
            lambda body: {**body, "metadata": [1]},
            r"metadata is \[1\]",
        ),
        ("body_list", lambda body: [body], r"no JSON object"),
    )
    def test_wrong_structure_is_corrupt(self, change, message):
        backup = self._backup()
        tamper.edit(backup, change)
        s = store.BackupStore(self.dir)
        with self.assertRaisesRegex(errors.BackupCorruptError, message):
            s.latest()
        with self.assertRaisesRegex(errors.BackupCorruptError, message):
            s.restore_latest(lambda info: tf.train.Checkpoint())
        self.assertLen(tamper.committed(self.dir), 1, "nothing is deleted")

    def test_a_file_name_outside_the_backup_is_still_corrupt(self):
        # Kept from before the schema: a name with a path is no checkpoint
        # file (atomicity.checkpoint_problem).
        backup = self._backup()

        def escape(body):
            body["files"]["../outside"] = {"size": 1}

        tamper.edit(backup, escape)
        with self.assertRaisesRegex(errors.BackupCorruptError, "outside"):
            store.BackupStore(self.dir).latest()


class CallbackStateFieldsTest(absltest.TestCase):
    """The callbacks' states a backup records (callback_states.py)."""

    @staticmethod
    def _check(state):
        backup_metadata_checks._callbacks({"callbacks": {"CSVLogger:0": state}})

    def test_csv_columns_must_be_a_list_of_names(self):
        for keys, field in ((5, "csv_keys"), (["loss", 3], "csv_keys[1]")):
            state = {"csv_append": False, "csv_size": 0, "csv_keys": keys}
            with self.assertRaisesRegex(
                schema_fields.Invalid,
                re.escape(f"callbacks['CSVLogger:0'].{field} is"),
            ):
                self._check(state)

    def test_csv_columns_not_chosen_yet_or_not_recorded_are_valid(self):
        for keys in ([], ["loss", "val_loss"], None, _DELETE):
            state = {"csv_append": True, "csv_size": 12}
            if keys is not _DELETE:
                state["csv_keys"] = keys
            self._check(state)


if __name__ == "__main__":
    absltest.main()
