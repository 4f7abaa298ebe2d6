"""One fit() configuration, built the same way in a child trainer and in
process: the model, its strategy and the fit() arguments of its input.

`FitSetup` names what fit_trainer's flags name (`flags()` gives them back), so
that a test can run a configuration in its own process (interrupt + simulated
restart) and the same one in a child process it SIGKILLs.
"""

import dataclasses

INPUTS = ("numpy", "dataset", "dataset_repeat", "sequence", "generator")
MODELS = ("regression", "gan", "gan_optimizer_in_compile", "raw_variable")
# The strategies a single process builds (fit_trainer adds the multi-process
# and TPU ones).
LOCAL_STRATEGIES = ("default", "mirrored", "one_device", "central_storage")


@dataclasses.dataclass(frozen=True)
class FitSetup:
    """What trains on what, from a seed: a configuration of fit_trainer."""

    keras: str = "keras3"  # the flavour: "keras3" or "tf_keras"
    input: str = "numpy"
    model: str = "regression"
    model_size: str = "small"
    dropout: float = 0.0
    steps_per_execution: int = 1
    shuffle: bool = True
    num_samples: int = 256
    batch_size: int = 16
    steps_per_epoch: int | None = None
    strategy: str = "default"
    seed: int = 1

    def __post_init__(self):
        if self.input not in INPUTS:
            raise ValueError(f"input={self.input!r}: one of {INPUTS}")
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r}: one of {MODELS}")
        if self.input in ("dataset_repeat", "generator") and (
            not self.steps_per_epoch
        ):
            raise ValueError(f"input={self.input} needs steps_per_epoch.")
        if self.model != "regression" and (
            self.input != "numpy" or self.strategy != "default"
        ):
            raise ValueError(
                f"model={self.model} trains on numpy input with the default "
                "strategy only."
            )

    def flags(self) -> list[str]:
        """The fit_trainer flags of this configuration."""
        return [
            f"--keras={self.keras}",
            f"--input={self.input}",
            f"--model={self.model}",
            f"--model_size={self.model_size}",
            f"--dropout={self.dropout}",
            f"--steps_per_execution={self.steps_per_execution}",
            "--shuffle" if self.shuffle else "--noshuffle",
            f"--num_samples={self.num_samples}",
            f"--batch_size={self.batch_size}",
            *(
                [f"--steps_per_epoch={self.steps_per_epoch}"]
                if self.steps_per_epoch
                else []
            ),
            f"--strategy={self.strategy}",
            f"--seed={self.seed}",
        ]

    def build_model(self):
        """The compiled model; call it in the strategy's scope."""
        from testing import synthetic  # imports TensorFlow: not for --help

        if self.model.startswith("gan"):
            return synthetic.gan_model(
                self.keras,
                optimizer_in_compile=self.model == "gan_optimizer_in_compile",
            )
        if self.model == "raw_variable":
            return synthetic.raw_variable_model(self.keras)
        return synthetic.regression_model(
            self.model_size,
            dropout=self.dropout,
            steps_per_execution=self.steps_per_execution,
            flavour=self.keras,
        )

    def fit_kwargs(self) -> dict:
        """fit()'s input arguments (x, y, batch_size, shuffle,
        steps_per_epoch), a fresh input each call: a restarted job's."""
        from testing import synthetic

        kwargs = {"steps_per_epoch": self.steps_per_epoch}
        if self.input == "numpy":
            if self.model.startswith("gan"):
                # The generator's noise comes with the real samples.
                x, y = synthetic.gan_data(self.num_samples, seed=self.seed)
            else:
                x, y = synthetic.regression_data(
                    self.num_samples, seed=self.seed
                )
            kwargs.update(
                x=x, y=y, batch_size=self.batch_size, shuffle=self.shuffle
            )
        elif self.input == "sequence":
            kwargs["x"] = synthetic.SEQUENCE[self.keras](
                self.num_samples,
                self.batch_size,
                seed=self.seed,
                shuffle=self.shuffle,
            )
            kwargs["shuffle"] = self.shuffle
        elif self.input == "generator":
            kwargs["x"] = synthetic.regression_generator(
                self.num_samples, self.batch_size, seed=self.seed
            )
        else:
            kwargs["x"] = synthetic.regression_dataset(
                self.num_samples,
                self.batch_size,
                seed=self.seed,
                shuffle_seed=self.seed if self.shuffle else None,
                repeat=self.input == "dataset_repeat",
            )
        return kwargs


def split_cpu(tf, logical_cpus: int) -> list[str] | None:
    """All GPUs (None: the strategy's default), or without a GPU the CPU
    split into `logical_cpus` logical devices, one replica each.

    Splitting must come before anything initializes TensorFlow's runtime;
    once it is initialized, a split already made is kept.
    """
    if tf.config.list_physical_devices("GPU"):
        return None
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus
        )
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) != logical_cpus:
            raise
    return [f"/cpu:{i}" for i in range(logical_cpus)]


def local_strategy(tf, name: str, logical_cpus: int = 2):
    """The tf.distribute strategy `name` (one of LOCAL_STRATEGIES)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(
            gpus[0].name if gpus else "/cpu:0"
        )
    devices = split_cpu(tf, logical_cpus)
    if name == "central_storage":
        return tf.distribute.experimental.CentralStorageStrategy(devices)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    raise ValueError(f"strategy={name!r}: one of {LOCAL_STRATEGIES}")
