"""The metadata of a BackupManager backup (manager.py): one schema, checked
before use by the manager and the inspect CLI (which imports no Keras)."""

from backup_restore._src import schema_fields as fields

FORMAT = "backup_restore.manager/1"


def problem(metadata) -> str | None:
    """What makes a BackupManager backup's metadata invalid; None if valid.

    Its fields: `format`, `step` (the steps done), `variables` (checkpoint
    path -> [shape, dtype] of every variable), `user` (the caller's JSON,
    given back as it is), `written_at`, `scope`. A backup of another format
    is left to the caller to refuse once `format` is a string.
    """
    try:
        fields.as_dict(metadata, "metadata")
        if fields.as_str(
            fields.get(metadata, "format", "format"), "format"
        ) != (FORMAT):
            return None
        fields.as_int(fields.get(metadata, "step", "step"), "step")
        variables = fields.as_dict(
            fields.get(metadata, "variables", "variables"), "variables"
        )
        for path, spec in variables.items():
            fields.shape_and_dtype(spec, f"variables[{path!r}]")
        fields.get(metadata, "user", "user")
        fields.time(
            fields.get(metadata, "written_at", "written_at"), "written_at"
        )
        fields.as_str(fields.get(metadata, "scope", "scope"), "scope")
    except fields.Invalid as e:
        return str(e)
    return None


def describe(metadata: dict) -> dict:
    """What a valid BackupManager backup holds (`problem` found nothing),
    for a reader: its kind, when it was written (seconds since the epoch),
    the step it resumes at, how many variables."""
    return {
        "kind": "custom loop (BackupManager)",
        "written_at": metadata["written_at"],
        "resumes_at": {"step": metadata["step"]},
        "fingerprint": {"variables": len(metadata["variables"])},
    }
