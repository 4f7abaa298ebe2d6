"""model_fingerprint.diff: what makes a restore refuse a backup, robust to
how the same value is represented (a float and its float32, key order,
objects at other addresses), and what is recorded of an optimizer whose
configuration Keras cannot give."""

import copy
import json

import keras
import tensorflow as tf
from absl.testing import absltest

from backup_restore._src import keras3_adapter
from backup_restore._src import model_fingerprint
from testing import test_case


def _fingerprint(config):
    return {
        "model_class": "Sequential",
        "variables": [
            {"name": "dense/kernel", "shape": [4, 2], "dtype": "float32"}
        ],
        "optimizer": {"class": "Adam", "config": config},
        "random_generators": 0,
    }


# A legacy optimizer's config gives the Python float it was given before
# its first step, the float32 its variable holds after.
_BEFORE = {"name": "Adam", "learning_rate": 0.001, "beta_1": 0.9, "decay": 0.0}
_AFTER = {
    "name": "Adam",
    "learning_rate": 0.0010000000474974513,
    "beta_1": 0.8999999761581421,
    "decay": 0.0,
}


class DiffTest(test_case.TestCase):
    def test_a_float_and_its_float32_are_the_same(self):
        self.assertEqual(
            model_fingerprint.diff(_fingerprint(_BEFORE), _fingerprint(_AFTER)),
            [],
        )

    def test_key_order_does_not_matter(self):
        reordered = dict(reversed(list(_BEFORE.items())))
        reordered["nested"] = {"b": 1, "a": [0.5, {"y": 2, "x": 3}]}
        config = dict(_BEFORE, nested={"a": [0.5, {"x": 3, "y": 2}], "b": 1})
        # As a backup's metadata reads it back: through JSON.
        backup = json.loads(json.dumps(_fingerprint(config)))
        self.assertEqual(
            model_fingerprint.diff(backup, _fingerprint(reordered)), []
        )

    def test_another_value_is_named_with_both(self):
        changed = dict(_BEFORE, learning_rate=0.01)
        self.assertEqual(
            model_fingerprint.diff(
                _fingerprint(_BEFORE), _fingerprint(changed)
            ),
            ["optimizer config 'learning_rate': backup 0.001, model 0.01"],
        )

    def test_a_missing_key_is_a_difference(self):
        missing = {k: v for k, v in _BEFORE.items() if k != "decay"}
        self.assertEqual(
            model_fingerprint.diff(
                _fingerprint(_BEFORE), _fingerprint(missing)
            ),
            ["optimizer config 'decay': backup 0.0, model None"],
        )

    def test_a_weight_of_another_shape_is_named(self):
        other = copy.deepcopy(_fingerprint(_BEFORE))
        other["variables"][0]["shape"] = [4, 3]
        self.assertEqual(
            model_fingerprint.diff(_fingerprint(_BEFORE), other),
            [
                "weight #0: backup dense/kernel float32[4, 2], model "
                "dense/kernel float32[4, 3]"
            ],
        )


class _Model:
    def __init__(self, loss):
        self.loss = loss


def _loss_fn(y_true, y_pred):
    return y_true - y_pred


class _ConfiguredLoss:
    """A Loss-like object: its configuration holds a function and a name."""

    def __init__(self, scale, name):
        self.scale, self.name = scale, name

    def get_config(self):
        return {"name": self.name, "scale": self.scale, "fn": _loss_fn}


class _BrokenConfig:
    def get_config(self):
        raise NotImplementedError


class LossTest(test_case.TestCase):
    def _loss(self, loss):
        value = model_fingerprint.loss_fingerprint(_Model(loss))
        self.assertEqual(json.loads(json.dumps(value)), value)  # JSON
        return value

    def test_forms_of_a_loss(self):
        self.assertEqual(self._loss("mse"), "mse")
        self.assertIsNone(self._loss(None))
        self.assertEqual(self._loss({}), {})
        self.assertEqual(self._loss(_loss_fn), f"{__name__}._loss_fn")
        self.assertEqual(
            self._loss(_ConfiguredLoss(2.0, "a")),
            {
                "class": f"{__name__}._ConfiguredLoss",
                "config": {"scale": 2.0, "fn": f"{__name__}._loss_fn"},
            },
        )
        self.assertEqual(
            self._loss(_BrokenConfig()),
            {"class": f"{__name__}._BrokenConfig", "config": None},
        )
        self.assertEqual(
            self._loss({"out": ["mae", _loss_fn]}),
            {"out": ["mae", f"{__name__}._loss_fn"]},
        )

    def test_no_repr_with_an_address(self):
        # An object with neither a configuration nor a name is its class.
        value = self._loss({"a": object(), "b": [lambda y, p: p]})
        lambda_name = (
            f"{__name__}.LossTest.{self._testMethodName}.<locals>.<lambda>"
        )
        self.assertEqual(value, {"a": "builtins.object", "b": [lambda_name]})
        self.assertNotIn("0x", json.dumps(value))

    def test_a_changed_loss_is_named_and_its_name_ignored(self):
        backup = dict(
            _fingerprint(_BEFORE), loss=self._loss(_ConfiguredLoss(2.0, "a"))
        )
        renamed = dict(
            _fingerprint(_BEFORE), loss=self._loss(_ConfiguredLoss(2.0, "b"))
        )
        self.assertEqual(model_fingerprint.diff(backup, renamed), [])
        rescaled = dict(
            _fingerprint(_BEFORE), loss=self._loss(_ConfiguredLoss(3.0, "a"))
        )
        (problem,) = model_fingerprint.diff(backup, rescaled)
        self.assertRegex(
            problem, r"^loss: backup .*'scale': 2\.0.*'scale': 3\.0"
        )
        self.assertEqual(
            model_fingerprint.diff(
                dict(_fingerprint(_BEFORE), loss="mse"),
                dict(_fingerprint(_BEFORE), loss="mae"),
            ),
            ["loss: backup 'mse', model 'mae'"],
        )

    def test_a_backup_that_records_no_loss_is_not_compared(self):
        self.assertEqual(
            model_fingerprint.diff(
                _fingerprint(_BEFORE), dict(_fingerprint(_BEFORE), loss="mae")
            ),
            [],
        )


class _Plain:
    """Neither a configuration nor a name: Keras cannot serialize it."""


class _ScheduleHoldingAnObject(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self):
        self.helper = _Plain()

    def __call__(self, step):
        return 0.01

    def get_config(self):
        return {"helper": self.helper}


class _AdamHoldingObjects(keras.optimizers.Adam):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.helper = _Plain()

    def get_config(self):
        return dict(
            super().get_config(),
            fn=_loss_fn,
            helper=self.helper,
            dtype=tf.float32,
        )


class OptimizerTest(test_case.TestCase):
    def _optimizer(self, optimizer):
        value = model_fingerprint.optimizer_fingerprint(
            optimizer, keras3_adapter
        )
        self.assertEqual(json.loads(json.dumps(value)), value)  # JSON
        return value

    def test_a_configuration_keras_cannot_give_is_taken_beside_its_schedule(
        self,
    ):
        # Keras raises TypeError for the object the schedule's config holds;
        # training does not need the configuration.
        schedule = _ScheduleHoldingAnObject()
        with self.assertRaises(TypeError):
            keras.optimizers.Adam(schedule).get_config()
        optimizer = keras.optimizers.Adam(schedule, beta_1=0.8)
        record = self._optimizer(optimizer)
        self.assertEqual(record["class"], "keras.src.optimizers.adam.Adam")
        self.assertEqual(
            record["config"]["learning_rate"],
            {
                "class": f"{__name__}._ScheduleHoldingAnObject",
                "config": {"helper": f"{__name__}._Plain"},
            },
        )
        self.assertEqual(record["config"]["beta_1"], 0.8)
        self.assertIs(
            keras3_adapter.learning_rate_schedule(optimizer), schedule
        )
        # Another configuration is now seen.
        other = self._optimizer(keras.optimizers.Adam(schedule, beta_1=0.5))
        self.assertEqual(
            model_fingerprint.diff(
                dict(_fingerprint(None), optimizer=record),
                dict(_fingerprint(None), optimizer=other),
            ),
            ["optimizer config 'beta_1': backup 0.8, model 0.5"],
        )

    def test_a_backup_that_recorded_the_schedule_class_alone(self):
        # What a configuration Keras could not give was recorded as before
        # it was taken beside the schedule: the class is compared.
        current = self._optimizer(
            keras.optimizers.Adam(_ScheduleHoldingAnObject())
        )
        old = {
            "class": current["class"],
            "config": {"learning_rate": f"{__name__}._ScheduleHoldingAnObject"},
        }
        self.assertEqual(
            model_fingerprint.diff(
                dict(_fingerprint(None), optimizer=old),
                dict(_fingerprint(None), optimizer=current),
            ),
            [],
        )
        old["config"]["learning_rate"] = "other.Schedule"
        self.assertEqual(
            model_fingerprint.diff(
                dict(_fingerprint(None), optimizer=old),
                dict(_fingerprint(None), optimizer=current),
            ),
            [
                "optimizer learning rate: backup other.Schedule, model "
                f"{__name__}._ScheduleHoldingAnObject"
            ],
        )

    def test_a_held_optimizer_that_recorded_the_class_alone(self):
        current = self._optimizer(
            keras.optimizers.Adam(_ScheduleHoldingAnObject())
        )

        def held(config):
            optimizer = {
                "path": "g_optimizer",
                "class": current["class"],
                "config": config,
                "built": False,
                "built_on": None,
                "variables": [],
            }
            return {
                "optimizers": [optimizer],
                "variable_count": 0,
                "extra_variables": [],
            }

        name = f"{__name__}._ScheduleHoldingAnObject"
        for recorded, problems in (
            ({"learning_rate": name}, 0),
            ({"learning_rate": "other.Schedule"}, 1),
        ):
            self.assertLen(
                model_fingerprint.held_diff(
                    held(recorded), held(current["config"]), False
                ),
                problems,
            )

    def test_a_set_is_recorded_sorted(self):
        # Its repr's order follows string hashes, which differ per process.
        self.assertEqual(
            model_fingerprint.to_json_value(
                {"tags": {"gamma", "alpha", "beta"}, "ids": frozenset({3, 1})}
            ),
            {"tags": ["alpha", "beta", "gamma"], "ids": [1, 3]},
        )

    def test_objects_in_the_configuration_are_recorded_without_an_address(
        self,
    ):
        first = self._optimizer(_AdamHoldingObjects())
        config = first["config"]
        self.assertEqual(config["fn"], f"{__name__}._loss_fn")
        self.assertEqual(config["helper"], f"{__name__}._Plain")
        # A repr without an address is kept as it was recorded before.
        self.assertEqual(config["dtype"], "tf.float32")
        self.assertNotIn(" at 0x", json.dumps(first))
        # Another process holds other objects at other addresses.
        second = self._optimizer(_AdamHoldingObjects())
        self.assertEqual(
            model_fingerprint.diff(
                dict(_fingerprint(None), optimizer=first),
                dict(_fingerprint(None), optimizer=second),
            ),
            [],
        )


if __name__ == "__main__":
    absltest.main()
