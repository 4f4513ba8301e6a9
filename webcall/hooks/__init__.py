"""REST hooks to the application's backend (spec §13) and the WebSocket Origin allow-list.

`policy` is sans-I/O (restClientConfig, bodies, decisions); `client` does the HTTP; `origins` checks the
WebSocket Origin header. Nothing here imports webcall.streams or webcall.wcs: callers hand
over plain dicts. docs/hooks.md says where the WCS session calls what.
"""

from .client import DEFAULT_TIMEOUT, HookClient, Hooks, HookSettings, HookStats, keep_alive_loop
from .origins import OriginPattern, origin_allowed, parse_allow_list
from .policy import (
    RESTRICTED_ACCESS,
    TERMINATED_BY_KEEP_ALIVE,
    Decision,
    HookAnswerError,
    MethodPolicy,
    RestClientConfig,
)

__all__ = [
    "DEFAULT_TIMEOUT", "HookClient", "Hooks", "HookSettings", "HookStats", "keep_alive_loop",
    "OriginPattern", "origin_allowed", "parse_allow_list",
    "RESTRICTED_ACCESS", "TERMINATED_BY_KEEP_ALIVE", "Decision", "HookAnswerError", "MethodPolicy",
    "RestClientConfig",
]
