"""A registry for everything users pick by name (data sets, networks, proxies, protocols, index types).

Modelled on timm's ``@register_model`` / ``list_models('res*')``: entries register themselves with a
decorator, ``names(pattern)`` filters with shell-style wildcards, and an unknown name gets an error that
lists the close matches, so a typo never surfaces as a KeyError from deep inside.
"""
from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Dict, Iterator, List, Optional

from proxylab.errors import ProxylabError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Any] = {}
        self._help: Dict[str, str] = {}

    def register(self, name: Optional[str] = None, help: str = "") -> Callable[[Any], Any]:
        def decorator(obj: Any) -> Any:
            key = name or obj.__name__
            if key in self._entries:
                raise RuntimeError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = obj
            doc = help or (obj.__doc__ or "").strip().split("\n")[0]
            self._help[key] = doc
            return obj

        return decorator

    def add(self, name: str, obj: Any, help: str = "") -> None:
        self.register(name, help)(obj)

    def get(self, name: str) -> Any:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ProxylabError(
                f"unknown {self.kind} '{name}'.{hint} Known: {', '.join(sorted(self._entries))}"
            ) from None

    def names(self, pattern: str = "*") -> List[str]:
        return sorted(k for k in self._entries if fnmatch.fnmatch(k, pattern))

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
