"""The metadata of a fit() backup: one schema, tagged with its format and
the Keras flavour that wrote it; read by the callback and the inspect CLI.

A backup holds JSON metadata beside its checkpoint (see manifest.py):

- `format`, `format_version`, `keras` (the flavour: "keras3", "tf_keras")
  and `versions`: what wrote it. A backup of another format or flavour is
  refused before anything is read into the model.
- `position`: epoch and step to resume at, the data position (`iterators_done`
  and `drawn`, see position.py), `stop_training`, `epoch_trained`,
  `counted_steps_per_epoch`, `train_counter` (tf-keras's count of the
  steps trained, the step of TensorBoard's batch summaries).
- `fit_call`, `data`: which fit() call of the job, and what its positions
  mean (checked on resume).
- `fingerprint`, `build_config`: the model and optimizer (model_fingerprint.py).
- `history`, `metrics`, `callbacks`, `callback_tensors`: the rest of the
  training state.
- `written_at` (seconds since the epoch) and `scope` (which run of the job
  wrote it, added by the store).

The manifest's checksum only detects accidents: anyone can edit a manifest
and compute its CRC-32 again. So every field is checked against the schema
(`problem`) before any of it is used: its type, its range, and that the
position lies within the data it describes (backup_metadata_checks.py).
BackupManager's metadata has a schema of its own (manager_metadata.py).

`describe` and `checkpoint_part` say what a backup holds in words, for the
inspect CLI: nothing outside this module reads the fields by name.
"""

import time

from backup_restore._src import backup_metadata_checks
from backup_restore._src import schema_fields as fields

FORMAT = "backup_restore.fit"
FORMAT_VERSION = 2

# The top-level objects of a fit() backup's tf.train.Checkpoint (each
# adapter's checkpoint_objects, and the callbacks' tensors) -> what they
# hold.
CHECKPOINT_PARTS = {
    # A tf-keras model's backup holds the model and its optimizer.
    "model": "model weights",
    "optimizer": "optimizer state",
    "layer_random_generators": "layer RNG state",
    # A Keras 3 model's backup holds the variables themselves.
    "model_variables": "model weights and layer RNG state",
    "optimizer_variables": "optimizer state",
    "held_optimizers": "state of the other optimizers the model holds",
    "held_variables": "variables held outside the model's weights",
    "callback_tensors": "callback tensors",
}


def static_part(
    flavour: str, versions: dict, fingerprint: dict, build_config
) -> dict:
    """The fields that stay the same for every backup of one fit() call:
    what wrote it, and the model's fingerprint and build config."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "keras": flavour,
        "versions": versions,
        "fingerprint": fingerprint,
        "build_config": build_config,
    }


def fit_backup(
    *,
    position: dict,
    fit_call: dict,
    data: dict,
    static: dict,
    history: dict,
    metrics: list,
    callbacks: dict,
    callback_tensors: dict,
) -> dict:
    """The metadata of one fit() backup (see the module docstring); the
    store adds `scope`."""
    return {
        "position": position,
        "fit_call": fit_call,
        "data": data,
        **static,
        "history": history,
        "metrics": metrics,
        "callbacks": callbacks,
        "callback_tensors": callback_tensors,
        "written_at": time.time(),
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


def _header(metadata) -> bool:
    """Checks the fields that say what wrote the backup; whether the rest
    has this version's fit() schema (another format or flavour is refused
    as a mismatch by `flavour_problem`, not judged here)."""
    fields.as_dict(metadata, "metadata")
    fields.member(metadata, "format", fields.as_str)
    fields.member(metadata, "format_version", fields.as_int)
    fields.member(metadata, "keras", fields.as_str)
    versions = fields.member(metadata, "versions", fields.as_dict)
    for name, version in versions.items():
        fields.as_str(version, f"versions.{name}")
    return (
        metadata["format"] == FORMAT
        and metadata["format_version"] == FORMAT_VERSION
    )


def problem(metadata, geometry: dict | None = None) -> str | None:
    """What makes a fit() backup's metadata invalid; None if it is valid.

    Checks every field the callback and the inspect CLI read: its type, its
    range, and that the position lies within its fit() call and its data.
    A backup of another format, format version or flavour is left to
    `flavour_problem` once its header is well-formed.

    Args:
      metadata: the metadata of a backup (from its manifest).
      geometry: this fit()'s data geometry (the adapter's data_geometry),
        for the batches per epoch when the backup does not record them;
        None where there is no fit() (the inspect CLI).

    Returns:
      One line naming the field, its value and what is wrong, or None.
    """
    try:
        if not _header(metadata):
            return None
        backup_metadata_checks.check_fields(metadata, geometry)
    except fields.Invalid as e:
        return str(e)
    return None


def checkpoint_part(name: str) -> str:
    """What the checkpoint's top-level object `name` holds, in words (the
    name itself when it is none of CHECKPOINT_PARTS)."""
    return CHECKPOINT_PARTS.get(name, name)


def describe(metadata: dict) -> dict:
    """What a valid fit() backup holds (`problem` found nothing), for a
    reader: which kind of backup, when it was written (seconds since the
    epoch), where it resumes, its data, a summary of its fingerprint and of
    the rest of the training state."""
    position = metadata["position"]
    kind = f"Model.fit (BackupAndRestore, {metadata['keras']} model)"
    call = metadata["fit_call"]
    # Each fit() call of a job restores only its own backups.
    kind += (
        f", fit() call #{call['index']} of the job (epochs="
        f"{call['epochs']}, initial_epoch={call['initial_epoch']})"
    )
    fp = metadata["fingerprint"]
    parameters = 0
    for variable in fp["variables"]:
        count = 1
        for dim in variable["shape"]:
            count *= dim or 1
        parameters += count
    fingerprint = {
        "model": fp["model_class"],
        "weights": len(fp["variables"]),
        "parameters": parameters,
        "optimizer": fp["optimizer"]["class"],
        "layer_random_generators": fp["random_generators"],
    }
    held = fp.get("held")  # absent in backups of earlier versions
    if held is not None:
        fingerprint["optimizers_held"] = [o["path"] for o in held["optimizers"]]
        fingerprint["variables_held_outside_the_weights"] = [
            e["path"] for e in held["extra_variables"]
        ]
    return {
        "kind": kind,
        "written_at": metadata["written_at"],
        "resumes_at": {"epoch": position["epoch"], "batch": position["step"]},
        "data": metadata["data"],
        "fingerprint": fingerprint,
        "history_epochs": len(metadata["history"]["epoch"]),
        "callbacks": sorted(metadata["callbacks"]),
        "mid_epoch_metrics": bool(metadata["metrics"]),
    }
