"""nfgen's error about data, in a module of its own so that every module reading data can raise
it (``nfgen.data`` re-exports it)."""

from __future__ import annotations


class DataError(Exception):
    """A data set that cannot be loaded, with a one-line message saying what to do."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's error reaches the main process as DataError("Caught DataError in
        # DataLoader worker ...\nOriginal Traceback ...\nnfgen.data.DataError: <message>"): keep
        # only the message, so the user sees one line and no traceback.
        if "Original Traceback" in message:
            message = message.strip().splitlines()[-1].removeprefix(f"{__name__}.DataError: ")
        super().__init__(message)
