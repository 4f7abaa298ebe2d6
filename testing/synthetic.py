"""Embedded synthetic data and small models for the examples and tests.

No downloads: the data is a learnable linear regression with noise, generated
from a seed.
"""

import hashlib

import keras
import numpy as np
import tensorflow as tf
import tf_keras

# The two Keras flavours TensorFlow 2.21 ships: Keras 3 (tf.keras, the
# default) and tf-keras (the legacy package).
KERAS = {"keras3": keras, "tf_keras": tf_keras}

# Hidden layer widths per model size. "large" is about 1M parameters.
MODEL_SIZES = {
    "tiny": (8,),
    "small": (32, 32),
    "large": (1024, 512, 256),
}
INPUT_DIM = 16


def regression_data(num_samples: int, seed: int = 0):
    """Returns float32 (x, y): y = x @ w + 0.1 * noise, learnable."""
    rng = np.random.RandomState(seed)
    x = rng.normal(size=(num_samples, INPUT_DIM)).astype("float32")
    w = rng.normal(size=(INPUT_DIM, 1)).astype("float32")
    y = x @ w + 0.1 * rng.normal(size=(num_samples, 1)).astype("float32")
    return x, y.astype("float32")


def regression_dataset(
    num_samples: int,
    batch_size: int,
    seed: int = 0,
    shuffle_seed: int | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """The same data as a tf.data.Dataset, optionally shuffled and repeated."""
    x, y = regression_data(num_samples, seed)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(
            num_samples, seed=shuffle_seed, reshuffle_each_iteration=True
        )
    ds = ds.batch(batch_size)
    return ds.repeat() if repeat else ds


def regression_model(
    size: str = "small",
    *,
    dropout: float = 0.0,
    learning_rate: float = 0.01,
    build: bool = True,
    steps_per_execution: int = 1,
    flavour: str = "tf_keras",
):
    """A compiled MLP regressor (Adam, MSE) of the given Keras flavour."""
    k = KERAS[flavour]
    layers = []
    if build:
        layers.append(k.Input(shape=(INPUT_DIM,)))
    for width in MODEL_SIZES[size]:
        layers.append(k.layers.Dense(width, activation="relu"))
        if dropout:
            layers.append(k.layers.Dropout(dropout))
    layers.append(k.layers.Dense(1))
    model = k.Sequential(layers)
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate),
        loss="mse",
        steps_per_execution=steps_per_execution,
    )
    return model


class _RegressionBatches:
    """The same data as a sequence of batches (a keras Sequence / PyDataset).

    `shuffle` reorders the batches at every epoch end with its own seeded
    RandomState, so the order is reproducible.
    """

    def __init__(self, num_samples, batch_size, seed=0, shuffle=False):
        super().__init__()
        self._x, self._y = regression_data(num_samples, seed)
        self._batch_size = batch_size
        self._order = np.arange(len(self))
        self._rng = np.random.RandomState(seed) if shuffle else None

    def __len__(self):
        return (len(self._x) + self._batch_size - 1) // self._batch_size

    def __getitem__(self, index):
        start = self._order[index] * self._batch_size
        end = start + self._batch_size
        return self._x[start:end], self._y[start:end]

    def on_epoch_end(self):
        if self._rng is not None:
            self._rng.shuffle(self._order)


class RegressionSequence(_RegressionBatches, tf_keras.utils.Sequence):
    """For tf-keras."""


class RegressionPyDataset(_RegressionBatches, keras.utils.PyDataset):
    """For Keras 3."""


SEQUENCE = {"keras3": RegressionPyDataset, "tf_keras": RegressionSequence}


def regression_generator(num_samples, batch_size, seed=0):
    """The same data from a plain Python generator, looping forever."""
    x, y = regression_data(num_samples, seed)
    while True:
        for start in range(0, num_samples, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]


def weights_sha256(variables) -> str:
    """SHA-256 over the bytes of every variable: equal iff bit-identical."""
    digest = hashlib.sha256()
    for v in variables:
        digest.update(v.numpy().tobytes())
    return digest.hexdigest()


def gradient_step(model, optimizer, loss_fn):
    """One step of a custom training loop: `optimizer` applies the gradients
    of `loss_fn()` (called under the tape) with respect to the model's
    trainable variables. Returns the loss."""
    with tf.GradientTape() as tape:
        loss = loss_fn()
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(
        zip(grads, model.trainable_variables, strict=True)
    )
    return loss


GAN_LATENT_DIM = 4
GAN_DATA_DIM = 8


def gan_data(num_samples: int, seed: int = 0):
    """(real samples, generator noise), float32: the noise comes with the
    data, so that a resumed run feeds the generator what the uninterrupted
    run did."""
    rng = np.random.RandomState(seed)
    real = rng.normal(size=(num_samples, GAN_DATA_DIM)).astype("float32")
    noise = rng.normal(size=(num_samples, GAN_LATENT_DIM)).astype("float32")
    return real + 2.0, noise


def gan_model(flavour: str = "tf_keras", *, optimizer_in_compile=False):
    """A GAN as keras.io's DCGAN example writes one: a model holding a
    generator and a discriminator (sub-models), compiled with one optimizer
    each, held as attributes and used by its own `train_step`.

    With `optimizer_in_compile`, the discriminator's optimizer is also the
    compiled one (`super().compile(optimizer=d_optimizer)`): `model.optimizer`
    is then built on a subset of the model's variables.
    """
    k = KERAS[flavour]

    class GAN(k.Model):
        def __init__(self):
            super().__init__()
            self.generator = k.Sequential(
                [k.Input(shape=(GAN_LATENT_DIM,)), k.layers.Dense(GAN_DATA_DIM)]
            )
            self.discriminator = k.Sequential(
                [
                    k.Input(shape=(GAN_DATA_DIM,)),
                    k.layers.Dense(6, activation="relu"),
                    k.layers.Dense(1),
                ]
            )

        def call(self, noise):
            return self.discriminator(self.generator(noise))

        def compile(self, d_optimizer, g_optimizer, loss_fn):
            if optimizer_in_compile:
                super().compile(optimizer=d_optimizer)
            else:
                super().compile()
            self.d_optimizer = d_optimizer
            self.g_optimizer = g_optimizer
            self.loss_fn = loss_fn

        def train_step(self, data):
            real, noise = data
            ones = tf.ones((tf.shape(real)[0], 1))
            with tf.GradientTape() as tape:
                fake = self.generator(noise, training=True)
                d_loss = self.loss_fn(
                    ones, self.discriminator(real, training=True)
                ) + self.loss_fn(
                    0.0 * ones, self.discriminator(fake, training=True)
                )
            weights = self.discriminator.trainable_weights
            grads = tape.gradient(d_loss, weights)
            self.d_optimizer.apply_gradients(zip(grads, weights, strict=True))
            with tf.GradientTape() as tape:
                fake = self.generator(noise, training=True)
                g_loss = self.loss_fn(
                    ones, self.discriminator(fake, training=True)
                )
            weights = self.generator.trainable_weights
            grads = tape.gradient(g_loss, weights)
            self.g_optimizer.apply_gradients(zip(grads, weights, strict=True))
            return {"d_loss": d_loss, "g_loss": g_loss}

    model = GAN()
    model.build((None, GAN_LATENT_DIM))
    model.compile(
        d_optimizer=k.optimizers.Adam(0.01),
        g_optimizer=k.optimizers.Adam(0.02),
        loss_fn=k.losses.BinaryCrossentropy(from_logits=True),
    )
    return model


def raw_variable_model(flavour: str = "tf_keras"):
    """A compiled subclassed regressor that holds a raw `tf.Variable`
    (`seen`, the samples trained on) and, inside a `tf.Module`, a layer
    that is not among its layers (`side.layer`; Keras 3 does not list its
    variables in `model.variables`), both updated by its `train_step`. Its
    output depends on them, so a wrong value changes the weights too."""
    k = KERAS[flavour]

    class Counting(k.Model):
        def __init__(self):
            super().__init__()
            self.hidden = k.layers.Dense(8, activation="relu")
            self.out = k.layers.Dense(1)
            self.seen = tf.Variable(0.0, trainable=False, name="seen")
            self.side = tf.Module()
            self.side.layer = k.layers.Dense(1, trainable=False)

        def call(self, x):
            scale = 1.0 + 1.0 / (1.0 + self.seen)
            return self.out(self.hidden(x)) * scale + self.side.layer(x)

        def train_step(self, data):
            self.seen.assign_add(tf.cast(tf.shape(data[0])[0], tf.float32))
            self.side.layer.bias.assign_add([0.01])
            return super().train_step(data)

    model = Counting()
    model(np.zeros((1, INPUT_DIM), "float32"))  # builds the layers
    model.compile(optimizer=k.optimizers.Adam(0.01), loss="mse")
    return model


def state_sha256(model) -> str:
    """SHA-256 over every variable the model holds, as tf.train.Checkpoint
    reaches them from the model (raw tf.Variables and the state of every
    optimizer held as an attribute included): equal iff bit-identical.

    In no particular order (the order the checkpoint graph reaches them
    in depends on where each optimizer was built): the hash of the sorted
    hashes of each variable's dtype, shape and bytes.
    """
    seen = set()
    digests = []
    for obj in tf.train.TrackableView(model).descendants():
        # A Keras 3 variable is no tf.Variable: its value is one.
        variable = getattr(obj, "value", obj)
        if isinstance(variable, tf.Variable) and id(variable) not in seen:
            seen.add(id(variable))
            value = variable.numpy()
            digest = hashlib.sha256(f"{value.dtype}{value.shape}".encode())
            digest.update(value.tobytes())
            digests.append(digest.hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()
