"""model_fingerprint.diff: what makes a restore refuse a backup, robust to
how the same value is represented (a float and its float32, key order)."""

import copy
import json

from absl.testing import absltest

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


if __name__ == "__main__":
    absltest.main()
