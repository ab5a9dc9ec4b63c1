"""The agent's error: a refused start, or a request the agent answered with an error."""

from __future__ import annotations

from edgedistill.errors import EdgeDistillError


class AgentError(EdgeDistillError):
    """The device agent cannot start (no token), cannot be reached, or refused a request.

    The message is one line: the URL or the HTTP status and the agent's own message.
    """

    exit_code = 8
