"""User-facing errors: a mistake in a config, a path or the data gets one line and a non-zero exit."""


class UserError(Exception):
    """A mistake the user can fix; the entry points print its message on one line, without a traceback."""


class ConfigError(UserError):
    """A config file, a CLI override or a key in them is wrong."""


class DataError(UserError):
    """The data folder or an image in it is wrong."""


class UnreadableImage(DataError):
    """An image file cannot be read (its header, its pixels, or its size against ``data.max_image_pixels``)."""


class CheckpointError(UserError):
    """A run directory, checkpoint or weights file is missing or unusable."""


class StorageError(UserError):
    """A file could not be written: a full disk, a quota, a read-only or missing location."""


class LaunchError(UserError):
    """The processes the launcher started do not form the group a run needs."""


class MissingDependency(UserError):
    """An optional extra a command needs is not installed."""


class ExportMismatch(UserError):
    """An exported model does not predict what the PyTorch model predicts."""


class TrainingDiverged(UserError):
    """The loss or the gradients became NaN/inf; the settings (learning rate, clipping) need a change."""


def user_message(error: UserError) -> str:
    """The error's own one-line message, also when a DataLoader worker re-raised it with its traceback
    folded into the message."""
    message = str(error).strip()
    if "\nOriginal Traceback" in message:
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message


def describe(error: BaseException) -> str:
    """What summary.json records about the error that ended a run."""
    return user_message(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (libraries write pages)."""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:300]}"
