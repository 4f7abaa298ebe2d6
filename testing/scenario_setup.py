"""One scenario of a user's fit(): an optimizer or learning-rate schedule, a
model (with preprocessing layers or not), its input, and a job of one or
more fit() calls, built the same way in testing/scenario_trainer (a child
process a test kills) and in process (interrupt + simulated restart).

Process-wide settings are the caller's: with `optimizer="loss_scale"`, the
mixed_float16 policy (`set_policy()`); for tf-keras, the TF random generator
for layer randomness; op determinism.
"""

import dataclasses

OPTIMIZERS = (
    "adam",
    "exponential_decay",
    "warmup_cosine",
    "legacy_adam",
    "legacy_sgd_decay",
    "loss_scale",
)
MODELS = ("mlp", "string_lookup", "normalization", "batch_norm_dropout")
INPUTS = ("numpy", "filtered_dataset")
MODEL_SEED = 1


@dataclasses.dataclass(frozen=True)
class Scenario:
    """What trains on what; the same from the same fields in every run."""

    keras: str = "tf_keras"
    optimizer: str = "adam"
    model: str = "mlp"
    input: str = "numpy"
    num_samples: int = 64
    batch_size: int = 8
    validation: bool = False

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer={self.optimizer!r}: one of {OPTIMIZERS}"
            )
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r}: one of {MODELS}")
        if self.input not in INPUTS:
            raise ValueError(f"input={self.input!r}: one of {INPUTS}")
        if self.keras == "keras3" and self.optimizer.startswith("legacy"):
            raise ValueError("Keras 3 has no legacy optimizers.")

    @property
    def _keras(self):
        from testing import synthetic  # imports TensorFlow

        return synthetic.KERAS[self.keras]

    def set_policy(self) -> str:
        """Sets the global dtype policy this scenario trains with; returns
        the one it replaced."""
        keras = self._keras
        previous = keras.mixed_precision.global_policy().name
        if self.optimizer == "loss_scale":
            keras.mixed_precision.set_global_policy("mixed_float16")
        return previous

    def _optimizer(self):
        import tensorflow as tf

        keras = self._keras
        schedules = keras.optimizers.schedules
        name = self.optimizer
        if name == "exponential_decay":
            return keras.optimizers.Adam(
                schedules.ExponentialDecay(0.01, 5, 0.9)
            )
        if name == "warmup_cosine":

            class WarmupCosine(schedules.LearningRateSchedule):
                """A user-defined schedule, without get_config()."""

                def __call__(self, step):
                    step = tf.cast(step, tf.float32)
                    cosine = 0.005 * (1 + tf.cos(3.14159 * (step - 4) / 40))
                    return tf.where(step < 4, 0.01 * step / 4, cosine)

            return keras.optimizers.Adam(WarmupCosine())
        if name == "legacy_adam":
            return keras.optimizers.legacy.Adam(0.01)
        if name == "legacy_sgd_decay":
            return keras.optimizers.legacy.SGD(
                schedules.ExponentialDecay(0.01, 5, 0.9), momentum=0.9
            )
        if name == "loss_scale":
            scaler = getattr(keras.mixed_precision, "LossScaleOptimizer", None)
            scaler = scaler or keras.optimizers.LossScaleOptimizer  # Keras 3
            return scaler(keras.optimizers.Adam(0.01))
        return keras.optimizers.Adam(0.01)

    def data(self):
        """(x, y): numpy arrays (strings for string_lookup)."""
        import numpy as np

        rng = np.random.RandomState(0)
        x = rng.normal(size=(self.num_samples, 4)).astype("float32")
        y = x.sum(axis=1, keepdims=True)
        if self.model == "string_lookup":
            words = np.array(["red", "green", "blue", "gold", "grey", "teal"])
            x = words[rng.randint(0, len(words), size=(self.num_samples, 1))]
            y = (x == "red").astype("float32") + (x == "gold").astype("float32")
        return x, y

    def build_model(self):
        """The compiled model, from a fixed seed."""
        import tensorflow as tf

        keras = self._keras
        keras.utils.set_random_seed(MODEL_SEED)
        x, _ = self.data()
        layers = keras.layers
        if self.model == "string_lookup":
            lookup = layers.StringLookup()
            lookup.adapt(x)
            inputs = keras.Input((1,), dtype=tf.string)
            h = layers.Embedding(lookup.vocabulary_size(), 4)(lookup(inputs))
            h = layers.Flatten()(h)
        else:
            inputs = keras.Input((4,))
            h = inputs
            if self.model == "normalization":
                norm = layers.Normalization()
                norm.adapt(x)
                h = norm(h)
            h = layers.Dense(8, activation="relu")(h)
            if self.model == "batch_norm_dropout":
                h = layers.Dropout(0.3)(layers.BatchNormalization()(h))
        outputs = layers.Dense(1, dtype="float32")(h)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=self._optimizer(), loss="mse")
        return model

    def fit_kwargs(self) -> dict:
        """fit()'s input arguments, a fresh input each call."""
        import tensorflow as tf

        x, y = self.data()
        if self.keras == "keras3" and x.dtype.kind == "U":
            x = tf.constant(x)  # Keras 3's fit() takes no numpy string arrays
        kwargs = dict(x=x, y=y, batch_size=self.batch_size)
        if self.input == "filtered_dataset":
            dataset = (
                tf.data.Dataset.from_tensor_slices((x, y))
                .filter(lambda features, label: True)  # size unknown to fit()
                .shuffle(len(x), seed=3, reshuffle_each_iteration=True)
                .batch(self.batch_size)
            )
            kwargs = dict(x=dataset)
        if self.validation:
            kwargs["validation_data"] = (x[:16], y[:16])
        return kwargs


def parse_phases(phases) -> list[tuple[int, int]]:
    """["EPOCHS" or "EPOCHS:INITIAL_EPOCH", ...] -> [(epochs, initial)]."""
    parsed = []
    for phase in phases:
        epochs, _, initial_epoch = phase.partition(":")
        parsed.append((int(epochs), int(initial_epoch or 0)))
    return parsed


def run_job(scenario, model, backup, phases, callbacks=()) -> list[dict]:
    """Runs the job's fit() calls on `model` with `backup` (and
    `callbacks`), one per (epochs, initial_epoch) of `phases`; returns
    what each ended with."""
    inputs = scenario.fit_kwargs()
    results = []
    for epochs, initial_epoch in phases:
        history = model.fit(
            **inputs,
            epochs=epochs,
            initial_epoch=initial_epoch,
            callbacks=[backup, *callbacks],
            verbose=0,
        )
        resumed = backup.resumed_from
        results.append(
            {
                "history_epochs": history.epoch,
                "history": history.history,
                "resumed_from": list(resumed) if resumed else None,
                "iterations": int(model.optimizer.iterations.numpy()),
            }
        )
    return results


def weights_sha256(model) -> str:
    """SHA-256 of the model's weights that are variables."""
    import tensorflow as tf

    from testing import synthetic

    return synthetic.weights_sha256(
        [
            w
            for w in model.weights
            if isinstance(w, (tf.Variable, synthetic.KERAS["keras3"].Variable))
        ]
    )
