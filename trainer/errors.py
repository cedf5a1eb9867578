"""The trainer's user-facing error: the CLI prints its message on one line and exits non-zero."""


class TrainerError(Exception):
    """A problem the user can fix (bad data file, unknown preset, version taken, folder not writable...)."""
