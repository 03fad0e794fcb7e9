"""How vm.run reaches a guest: one interface, supplied by the backend.

Machine validates a run() call and turns the outcome into a CompletedProcess (or
TimeoutExpired / CalledProcessError); an ExecStrategy carries the command there and
back. Two exist:

- AgentExec: pyapptron's guest agent on its own byte channel (exact stdout/stderr,
  stdin, many commands at once, files). The default (Backend.exec_strategy).
- ConsoleShellExec: a shell on the guest's serial console, for guests without the
  agent (pyapptron.console_exec has the framing and what it gives up).
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from .agent import AgentClient
from .console_exec import ConsoleExec
from .errors import InvalidOption, NotSupported

logger = logging.getLogger(__name__)

#: How long a killed command may take to report its exit before we stop waiting.
KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class Outcome:
    """What a command did: its status (or -signal), its output, and whether the
    timeout ended it (then status and output are whatever came until then)."""

    status: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


class ExecStrategy(abc.ABC):
    """Carries vm.run() to the guest and back."""

    @abc.abstractmethod
    async def wait_ready(self) -> None:
        """Until the guest can run commands (a cold boot's end)."""

    @abc.abstractmethod
    async def run(self, args, argv: list, *, timeout: float | None, input: bytes | None,
                  cwd: str | None, env: Mapping[str, str] | None) -> Outcome:
        """Run one command. `args` is what the user passed, `argv` the same as a list
        (a shell string as ["/bin/sh", "-c", args]); the strategy takes the form it
        carries. On timeout the command is ended and Outcome.timed_out is true.
        Cancelling the call ends the command too."""

    @abc.abstractmethod
    def close(self, exc: BaseException) -> None:
        """The machine is gone: running and later commands raise exc."""


class AgentExec(ExecStrategy):
    """Commands through the guest agent (emulators/agent/PROTOCOL.md)."""

    def __init__(self, agent: AgentClient):
        self.agent = agent

    async def wait_ready(self) -> None:
        await self.agent.wait_ready()

    def close(self, exc: BaseException) -> None:
        self.agent.close(exc)

    async def run(self, args, argv, *, timeout, input, cwd, env) -> Outcome:
        requests: list = []
        task = asyncio.ensure_future(self.agent.exec(argv, input=input, cwd=cwd, env=env, started=requests.append))
        try:
            result = await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.TimeoutError:
            await self._kill(task, requests)
            # Collected after the kill, like subprocess.run: output up to the end counts.
            out, err = (bytes(requests[0].stdout), bytes(requests[0].stderr)) if requests else (b"", b"")
            return Outcome(-9, out, err, timed_out=True)
        except asyncio.CancelledError:
            await self._kill(task, requests)
            raise
        return Outcome(result.status, result.stdout, result.stderr)

    async def _kill(self, task: asyncio.Future, requests: list) -> None:
        """SIGKILL the command's process group and wait (briefly) for its exit."""
        if requests and not task.done():
            step = "sending SIGKILL to"
            try:
                # Bounded: a wedged channel must not turn a timeout into a hang.
                await asyncio.wait_for(self.agent.signal(requests[0].id, 9), KILL_GRACE_S)
                step = "waiting for the exit of"
                await asyncio.wait_for(asyncio.shield(task), KILL_GRACE_S)
            except Exception as exc:
                if not task.done():  # no exit came: the caller's error stands, but say so
                    logger.warning("%s the guest command (agent request %d) failed (%s; each step is bounded by "
                                   "%s s): it may still be running in the guest", step, requests[0].id,
                                   str(exc) or type(exc).__name__, KILL_GRACE_S)
        if not task.done():
            task.cancel()


class ConsoleShellExec(ExecStrategy):
    """Commands typed into a shell on the guest's console (no agent in the guest).

    stdout and stderr come back merged in stdout, as the terminal shows them."""

    def __init__(self, console_exec: ConsoleExec):
        self.shell = console_exec

    async def wait_ready(self) -> None:
        await self.shell.wait_ready(None)

    def close(self, exc: BaseException) -> None:
        self.shell.close(exc)

    async def run(self, args, argv, *, timeout, input, cwd, env) -> Outcome:
        if input is not None:
            raise NotSupported("this machine runs commands through the guest's console, which has no separate "
                               "stdin: input= needs a guest with pyapptron's agent (see the README)")
        if isinstance(args, bytes) or (not isinstance(args, str) and any(isinstance(a, bytes) for a in args)):
            raise InvalidOption("over the console, run() takes str commands, not bytes")
        status, output, timed_out = await self.shell.run(args if isinstance(args, str) else list(args),
                                                         timeout=timeout, cwd=cwd, env=env)
        return Outcome(status, output, b"", timed_out)
