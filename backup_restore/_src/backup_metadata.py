"""The metadata of a fit() backup: one schema, tagged with its format and
the Keras flavour that wrote it; read by the callback and the inspect CLI.

A backup holds JSON metadata beside its checkpoint (see manifest.py):

- `format`, `format_version`, `keras` (the flavour: "keras3", "tf_keras")
  and `versions`: what wrote it. A backup of another format or flavour is
  refused before anything is read into the model.
- `position`: epoch and step to resume at, the data position (`iterators_done`
  and `drawn`, see position.py), `stop_training`, `epoch_trained`,
  `counted_steps_per_epoch`.
- `fit_call`, `data`: which fit() call of the job, and what its positions
  mean (checked on resume).
- `fingerprint`, `build_config`: the model and optimizer (keras_state.py).
- `history`, `metrics`, `callbacks`, `callback_tensors`: the rest of the
  training state.
"""

FORMAT = "backup_restore.fit"
FORMAT_VERSION = 2


def header(flavour: str, versions: dict) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "keras": flavour,
        "versions": versions,
    }


def is_fit_backup(metadata: dict) -> bool:
    return metadata.get("format") == FORMAT


def flavour_problem(metadata: dict, flavour: str, names) -> str | None:
    """Why a backup cannot be restored by this fit(), before any check of
    the model; None if it can. `names` maps a flavour tag to a reader's
    name."""
    if not is_fit_backup(metadata):
        return (
            f"it is no Model.fit() backup of this format (format "
            f"{metadata.get('format')!r}, expected {FORMAT!r})"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        return (
            f"it has format version {metadata.get('format_version')}, this "
            f"version of backup_restore reads {FORMAT_VERSION}"
        )
    written_by = metadata.get("keras")
    if written_by != flavour:
        return (
            f"it was written by a {names(written_by)} model; this model is "
            f"a {names(flavour)} model (the two keep different state, so "
            "neither can resume the other's training)"
        )
    return None
