"""What a fit() backup holds in tensors, and the parts of its metadata that
describe the model.

One `Content` per fit() run (fit_run.py). It finds what the model holds
beyond its weights (keras_state.held_state: optimizers, raw variables),
names in one warning what a backup cannot hold, and reuses one
`tf.train.Checkpoint` across backups while the model holds the same things.
"""

import tensorflow as tf
from absl import logging

from backup_restore._src import backup_metadata
from backup_restore._src import callback_states
from backup_restore._src import keras_state
from backup_restore._src import model_fingerprint


class Content:
    """The checkpoint and the model's fingerprint of one fit() run.

    Args:
      model: the model fit() trains.
      adapter: its flavour's adapter (flavours.py).
    """

    def __init__(self, model, adapter):
        self.model = model
        self.adapter = adapter
        self.optimizer_fp = model_fingerprint.optimizer_fingerprint(
            model.optimizer, adapter
        )
        # Configurations before training changes them, as optimizer_fp.
        self.held_configs = {
            path: model_fingerprint.optimizer_fingerprint(optimizer, adapter)
            for path, optimizer in keras_state.held_state(
                model, adapter
            ).optimizers
        }
        self.random_generators = None  # set when the run starts
        self._held = None  # the HeldState the backup's checkpoint holds
        self._held_signature = None
        self._warned_unsaved = set()
        self._checkpoint = None
        self._spec = None
        self._holder = None
        self._static = None

    def held_state(self):
        """What the model holds beyond its weights, found again (an
        optimizer may have been built since)."""
        self._held = keras_state.held_state(self.model, self.adapter)
        self._held_signature = keras_state.held_signature(
            self._held, self.adapter
        )
        return self._held

    def checkpoint(self, callback_tensors, held=None):
        """What a backup holds in tensors."""
        if held is None:
            held = self.held_state()
        return tf.train.Checkpoint(
            **self.adapter.checkpoint_objects(
                self.model, self.random_generators, held
            ),
            callback_tensors=callback_tensors,
        )

    def warn_about_unsaved(self, held, at_start=False) -> None:
        """Names in one warning what `held` (and, `at_start`, the model's
        layers) has that a backup cannot hold and was not named yet."""
        notes = (
            unsaved_layer_notes(self.adapter, self.model) if at_start else []
        )
        objects = [o for o in held.unsaved if o not in self._warned_unsaved]
        if objects:
            self._warned_unsaved.update(objects)
            notes.append(
                f"The model holds {', '.join(objects)}, whose state a backup "
                "of a Keras 3 model does not hold (it holds variables): a "
                "resumed run starts from what the code gives it. Keep such "
                "state in tf.Variables, or build it the same way in every run."
            )
        unsaved = [
            path
            for path in keras_state.unsaved_optimizers(held, self.adapter)
            if path not in self._warned_unsaved
        ]
        if unsaved:
            self._warned_unsaved.update(unsaved)
            notes.append(
                f"Optimizer(s) {', '.join(unsaved)} were built on variables "
                "the model does not hold (neither its weights nor a "
                "tf.Variable it tracks): a restore cannot build them on those "
                "variables again, so their state is not restored. Keep the "
                "variables an optimizer updates in the model (as layers or "
                "tf.Variable attributes)."
            )
        if notes:
            logging.warning(
                "What backups of this fit() cannot hold:\n- %s",
                "\n- ".join(notes),
            )

    def warn_about_stateful_random(self, op_types) -> None:
        """Says once that the traced training step draws from stateful
        random ops (`op_types`, stateful_random.py), unless the layers that
        do so were named at the start already."""
        if not op_types or self.adapter.legacy_rng_layers(self.model):
            return
        logging.warning(
            "The training step draws random numbers from TensorFlow's "
            "stateful random ops (%s: tf.random.uniform, tf.random.normal, "
            "tf.random.shuffle, ...), whose state lives in the op, not in a "
            "variable: no backup can hold it, so a resumed run draws other "
            "values than an uninterrupted one. For an exact resume, draw "
            "from a tf.random.Generator the model tracks (or a Keras 3 "
            "SeedGenerator), or from stateless ops "
            "(tf.random.stateless_uniform) seeded from the step.",
            ", ".join(sorted(op_types)),
        )

    def warn_after_first_step(self) -> None:
        """Optimizers are built at their first step: names those built
        then on variables the model does not hold, before any backup."""
        self.warn_about_unsaved(
            keras_state.held_state(self.model, self.adapter)
        )

    def checkpoint_for(self, tensors):
        """The checkpoint for a backup, the same object while possible.

        TensorFlow's async checkpointing keeps one host copy of the state per
        Checkpoint object: a new object per backup would allocate the whole
        state again every time.
        """
        spec = callback_states.tensor_spec(tensors)
        held_changed = self._held is None or self._held_signature != (
            keras_state.held_signature(self._held, self.adapter)
        )
        if self._checkpoint is None or spec != self._spec or held_changed:
            if held_changed:
                # An optimizer made its state since the last backup (its
                # first step): the fingerprint records it.
                self._static = None
            held = self.held_state()
            self.warn_about_unsaved(held)
            self._holder = callback_states.holder(tensors=tensors)
            self._checkpoint = self.checkpoint(self._holder, held)
            self._spec = spec
        else:
            callback_states.assign(self._holder, tensors)
        return self._checkpoint

    def fingerprint(self, held=None) -> dict:
        if held is None:
            held = self._held if self._held is not None else self.held_state()
        return model_fingerprint.fingerprint(
            self.model,
            self.adapter,
            self.optimizer_fp,
            len(self.random_generators),
            model_fingerprint.held_fingerprint(
                held, self.adapter, self.held_configs
            ),
        )

    def static_metadata(self) -> dict:
        """The metadata that describes the model (its structure does not
        change during fit(); an optimizer built since makes it anew)."""
        if self._static is None:
            adapter = self.adapter
            self._static = backup_metadata.static_part(
                adapter.FLAVOUR,
                {
                    "tensorflow": tf.__version__,
                    adapter.FLAVOUR: adapter.VERSION,
                },
                self.fingerprint(),
                model_fingerprint.build_config(self.model),
            )
        return self._static


def unsaved_layer_notes(adapter, model) -> list:
    """What the model's layers keep that no backup can hold, in sentences
    of the warning at the start of fit()."""
    notes = []
    legacy_rng = adapter.legacy_rng_layers(model)
    if legacy_rng:
        notes.append(
            f"Layer(s) {', '.join(legacy_rng)} draw random numbers from "
            "tf-keras's legacy stateful RNG, whose state cannot be backed "
            "up: after a resume they draw different values than an "
            "uninterrupted run would. For an exact resume, call tf_keras."
            "backend.experimental.enable_tf_random_generator() before "
            "building the model."
        )
    unsaved = adapter.layers_with_unsaved_state(model)
    if unsaved:
        notes.append(
            f"Layer(s) {', '.join(unsaved)} keep state that tf.train."
            "Checkpoint does not save (a vocabulary, bin boundaries): "
            "backups do not hold it. A resumed run uses whatever the code "
            "gives these layers, so build them the same way in every run "
            "(the same vocabulary= or adapt() on the same data, before fit())."
        )
    return notes
