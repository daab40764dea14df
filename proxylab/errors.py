"""User-facing errors.

Anything a user can get wrong (a name, a file, a bit list, a budget) raises ``ProxylabError`` with a message
that names the problem and what to do. The CLI prints it on one line and exits with code 2; the Python API
lets it propagate. Internal bugs stay ordinary exceptions so they are never disguised as user mistakes.
"""
import contextlib
from typing import Callable, Iterator, Type


class ProxylabError(ValueError):
    """A problem with the user's input or environment, explained in the message."""


class MissingDependencyError(ProxylabError):
    """An optional package is needed; the message names the install command."""

    def __init__(self, package: str, install: str, purpose: str):
        super().__init__(f"{purpose} needs the package '{package}', which is not installed. Install it with: {install}")
        self.package = package
        self.install = install


def first_line(exc: BaseException, default: str = "") -> str:
    """The first non-empty line of an exception's text (torch's can run to a dozen lines of advice), else
    `default`: what a one-line user-facing message quotes of a library's error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else default


def require(condition: bool, message: str) -> None:
    """Raise ProxylabError(message) unless condition holds (validation one-liner)."""
    if not condition:
        raise ProxylabError(message)


@contextlib.contextmanager
def network_errors(explain: Callable[[str], str], error: "Type[ProxylabError]" = ProxylabError) -> Iterator[None]:
    """Around a network's forward pass on a user's input: the failures an input the network cannot take raises
    deep inside torch (wrong channels or size, a layer that does not fit) become ``error(explain(first line of
    torch's text))``, chained to the original. proxylab's own errors and running out of memory pass unchanged."""
    try:
        yield
    except ProxylabError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        import torch  # imported only once a failure is there to examine

        oom = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
                    if isinstance(t, type))
        if oom and isinstance(e, oom):
            raise
        raise error(explain(first_line(e, type(e).__name__))) from e
