r"""Inspects a backup directory: what is there, where it resumes, is it intact.

  ./tools/bazel run //backup_restore:inspect -- /tmp/fit_trainer_backup
  ./tools/bazel run //backup_restore:inspect -- --verify --json /tmp/b

Lists every committed backup (position in training, time written, size, what
state it holds, the model fingerprint) and the leftovers of interrupted
writes, with an integrity verdict: manifest checksum, metadata schema (an
edited manifest passes its checksum) and file sizes, and with --verify every
tensor's checksum. Reads only; changes nothing.

Exit status: 0; 1 with --verify when a committed backup is corrupt
(including one whose checkpoint is incomplete or whose tensors cannot be
read); 2 on bad usage (no path or more than one, an unknown flag, a path that
does not exist or is not a directory).
"""

import datetime
import json
import os
import sys

from absl import app
from absl import flags

from backup_restore._src import backup_metadata
from backup_restore._src import cli
from backup_restore._src import manager_metadata

_VERIFY = flags.DEFINE_bool(
    "verify",
    False,
    "Read every tensor, verifying TensorFlow's per-tensor checksums (reads "
    "every byte); exit 1 if any committed backup is corrupt.",
)
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of text.")


def _holds(tf, prefix):
    """What a checkpoint holds: top-level name -> number of saved values."""
    counts = {}
    for name, _ in tf.train.list_variables(prefix):
        if name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"):
            continue
        top = name.split("/", 1)[0]
        if "ITERATOR_STATE" in name:
            top = f"{top} (tf.data iterator position)"
        counts[top] = counts.get(top, 0) + 1
    return counts


def _describe(tf, errors, s, path, verify):
    entry = {"name": os.path.basename(path), "path": path}
    try:
        info = s.load(path, full_verify=verify)
        entry["integrity"] = "OK" + (
            " (every tensor's checksum read)"
            if verify
            else " (manifest, sizes)"
        )
        entry["corrupt"] = False
    except errors.BackupCorruptError as e:
        entry["integrity"] = f"CORRUPT: {e}"
        entry["corrupt"] = True
        return entry
    meta = info.metadata
    # An edited manifest passes its checksum: its fields are checked against
    # the schema before this reads them.
    if backup_metadata.is_fit_backup(meta):
        problem = backup_metadata.problem(meta)
    else:
        problem = manager_metadata.problem(meta)
    if problem:
        entry["integrity"] = f"CORRUPT: invalid metadata: {problem}"
        entry["corrupt"] = True
        return entry
    entry["size_bytes"] = info.size_bytes
    if backup_metadata.is_fit_backup(meta):
        entry.update(backup_metadata.describe(meta))
    else:
        entry.update(manager_metadata.describe(meta))
    entry["written_at"] = datetime.datetime.fromtimestamp(
        entry["written_at"]
    ).isoformat(sep=" ", timespec="seconds")
    try:
        holds = _holds(tf, info.checkpoint_prefix)
        entry["holds"] = {
            backup_metadata.checkpoint_part(k): n
            for k, n in sorted(holds.items())
        }
    except tf.errors.OpError as e:
        entry["holds"] = {"unreadable": str(e).splitlines()[0]}
    return entry


def _text(report):
    lines = [f"backup_dir: {report['backup_dir']}"]
    backups = report["committed"]
    if not backups:
        lines.append("no committed backup: training would start from scratch")
    for i, b in enumerate(backups):
        newest = " (newest)" if i == len(backups) - 1 else ""
        lines.append(f"{b['name']}{newest}")
        lines.append(f"  integrity: {b['integrity']}")
        if b["corrupt"]:
            continue
        where = ", ".join(f"{k} {v}" for k, v in b["resumes_at"].items())
        lines.append(f"  kind: {b['kind']}; resumes at {where}")
        lines.append(
            f"  written: {b['written_at']}; size: "
            f"{b['size_bytes'] / 1e6:.2f} MB"
        )
        known = b.get("data", {})
        data = ", ".join(
            f"{k.replace('_', ' ')} {known[k]}"
            for k in ("steps_per_epoch", "batch_size", "num_samples")
            if known.get(k) is not None
        )
        if data:
            lines.append(f"  data: {data}")
        holds = ", ".join(f"{k} ({n})" for k, n in b["holds"].items())
        lines.append(f"  holds: {holds}")
        if "history_epochs" in b:
            extra = [f"History of {b['history_epochs']} epoch(s)"]
            if b["mid_epoch_metrics"]:
                extra.append("mid-epoch metric state")
            if b["callbacks"]:
                extra.append("callbacks " + ", ".join(b["callbacks"]))
            lines.append("  also: " + "; ".join(extra))
        fp = ", ".join(f"{k}={v}" for k, v in b["fingerprint"].items())
        lines.append(f"  fingerprint: {fp}")
    for leftover in report["leftovers"]:
        lines.append(
            f"leftover of an interrupted write (removed at the next start): "
            f"{leftover}"
        )
    for name, kind in report["foreign"]:
        lines.append(
            f"not backup_restore's (a {kind} named like its entries; never "
            f"followed, read or deleted): {name}"
        )
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)


_USAGE_EXIT = 2


def _parse_flags(argv):
    """absl's parsing, but bad flags exit 2 (usage), not 1 (corrupt)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"inspect: {e}", file=sys.stderr)
        print("usage: inspect [--verify] [--json] BACKUP_DIR", file=sys.stderr)
        sys.exit(_USAGE_EXIT)


def main(argv):
    if len(argv) != 2:
        raise app.UsageError(
            "usage: inspect [--verify] [--json] BACKUP_DIR",
            exitcode=_USAGE_EXIT,
        )
    path = cli.user_path(argv[1])
    import tensorflow as tf

    from backup_restore._src import errors
    from backup_restore._src import store as store_mod

    if not tf.io.gfile.exists(path):
        print(f"inspect: {path} does not exist", file=sys.stderr)
        return _USAGE_EXIT
    if not tf.io.gfile.isdir(path):
        print(f"inspect: {path} is not a directory", file=sys.stderr)
        return _USAGE_EXIT
    s = store_mod.BackupStore(path, writable=False)  # changes nothing
    committed = [
        _describe(tf, errors, s, p, _VERIFY.value) for _, p in s.committed()
    ]
    corrupt = [b["name"] for b in committed if b["corrupt"]]
    if not committed:
        verdict = "no backup"
    elif not corrupt:
        verdict = "OK"
    elif len(corrupt) < len(committed):
        verdict = (
            f"CORRUPT: {', '.join(corrupt)}; training would resume from the "
            "newest intact one"
        )
    else:
        verdict = "CORRUPT: no intact backup; training cannot resume"
    report = {
        "backup_dir": path,
        "committed": committed,
        "leftovers": [os.path.basename(p) for p in s.leftovers()],
        "foreign": [[os.path.basename(p), k] for p, k in s.foreign()],
        "verdict": verdict,
    }
    print(json.dumps(report, indent=1) if _JSON.value else _text(report))
    return 1 if (_VERIFY.value and corrupt) else 0


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
