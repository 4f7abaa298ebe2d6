"""Keeps TensorFlow's per-checkpoint chatter out of a training log.

TensorFlow's asynchronous checkpointing logs three INFO lines per save
("Starting async checkpoint save on the device", "Sharding callback
duration", "Sync on ongoing save/restore"), and warns that a
LossScaleOptimizer is "skipped" by the host copy although the loss scale is
saved (it has no tensors of its own: its variables are copied one by one).
With a backup every few steps that hides everything else; backup_restore
logs one line per backup and per restore instead. Every other TensorFlow
log record passes.
"""

import logging

# Modules whose INFO (and DEBUG) records are per-save chatter.
_CHATTY_MODULES = frozenset({"async_checkpoint_helper", "functional_saver"})
_SKIPPED = "Trackable %s skipped due to: %s"


class _CheckpointChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.INFO and record.module in _CHATTY_MODULES:
            return False
        if record.msg == _SKIPPED and record.args:
            # Only the container whose own state is its child variables.
            return "LossScaleOptimizer" not in type(record.args[0]).__name__
        return True


_FILTER = _CheckpointChatter()


def quiet_checkpoint_chatter() -> None:
    """Installs the filter (once; idempotent) on the loggers TensorFlow's
    checkpoint modules write to: absl's (TF 2.21) and TensorFlow's own."""
    for name in ("absl", "tensorflow"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
