"""bgekit's exception hierarchy: every error names the file, line, field or argument at fault."""

from __future__ import annotations


class BgekitError(Exception):
    """Base class of every error bgekit raises on purpose."""


class InputError(BgekitError, ValueError):
    """Bad user input: a text, pair, argument or data row that cannot be used.

    Example:
        >>> raise InputError("texts[3] is None (NoneType); expected a string")
        Traceback (most recent call last):
        ...
        bgekit.errors.InputError: texts[3] is None (NoneType); expected a string
    """


class ConfigError(BgekitError, ValueError):
    """An invalid setting: unknown keyword, value out of range, inconsistent options."""


class ModelLoadError(BgekitError, OSError):
    """A model folder or hub name that cannot be loaded: names the path and the files expected."""


class RemoteCodeError(ModelLoadError, ConfigError):
    """A checkpoint whose model code ships with it (``auto_map`` in config.json), loaded without
    ``trust_remote_code=True``: a load error, and a setting to change."""


class DataFormatError(BgekitError, ValueError):
    """A data file that cannot be parsed: names the file, line and field.

    Args:
        message: what is wrong.
        path: the file at fault.
        line: 1-based line number, when known.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


class NonFiniteOutputError(BgekitError, ArithmeticError):
    """A model returned NaN or infinite values (e.g. fp16 overflow): names the input positions at fault.

    Args:
        message: what is wrong, naming the positions.
        positions: 0-based positions of the inputs whose outputs are not finite, in the caller's input.

    Example:
        >>> raise NonFiniteOutputError("inputs [3] gave NaN or infinite outputs", [3])
        Traceback (most recent call last):
        ...
        bgekit.errors.NonFiniteOutputError: inputs [3] gave NaN or infinite outputs
    """

    def __init__(self, message: str, positions: list[int] | tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.positions = list(positions)

    def __reduce__(self) -> tuple[object, ...]:
        # keeps ``positions`` (and notes) when a device-pool worker sends the error back
        return (type(self), (str(self), self.positions), self.__dict__)


class WorkerError(BgekitError, RuntimeError):
    """A worker process of a multi-device pool failed; carries the worker's device and traceback."""


def reject_unknown_kwargs(where: str, kwargs: dict[str, object], valid: list[str] | tuple[str, ...]) -> None:
    """Raise ConfigError listing valid names when ``kwargs`` holds anything (unknown arguments).

    Example:
        >>> reject_unknown_kwargs("Embedder", {}, ["pooling"])
    """
    if kwargs:
        names = ", ".join(sorted(kwargs))
        raise ConfigError(
            f"{where} got unknown keyword argument(s): {names}. Valid arguments: {', '.join(sorted(valid))}"
        )


class StoreError(BgekitError, RuntimeError):
    """A vector store (e.g. Milvus) refused an operation: names the store, the collection and its answer."""
