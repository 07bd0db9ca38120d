"""A Cloudflare quick tunnel to the gateway (vast.ai / pods without their own proxy).

`cloudflared tunnel --no-autoupdate --url http://127.0.0.1:<port>` prints its public
`https://<words>.trycloudflare.com` address on stderr after a few seconds. Quick tunnels
have no SLA and cut responses not started within 100 s: clients generate over WebSockets.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re

from common import processes

log = logging.getLogger("swarm.tunnel")

URL_RE = re.compile(r"https://[-a-z0-9]+\.trycloudflare\.com")
STOP_GRACE_S = 5.0


class TunnelError(RuntimeError):
    pass


class QuickTunnel:
    def __init__(self, binary: str, local_url: str, *, timeout: float = 60):
        self.binary = binary
        self.local_url = local_url
        self.timeout = timeout
        self.url: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=30)
        self._reader: asyncio.Task | None = None

    async def start(self) -> str:
        try:
            self._proc = await processes.spawn(
                [self.binary, "tunnel", "--no-autoupdate", "--url", self.local_url,
                 # a TLS gateway carries a certificate for the instance's public address, not for 127.0.0.1
                 *(["--no-tls-verify"] if self.local_url.startswith("https://") else [])],
                env=processes.child_env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise TunnelError(f"cannot run {self.binary!r}: {exc}") from None
        found: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(found))
        try:
            self.url = await asyncio.wait_for(asyncio.shield(found), self.timeout)
        except asyncio.TimeoutError:
            await self.stop()
            raise TunnelError(f"cloudflared printed no tunnel URL within {self.timeout:.0f} s: "
                              + " | ".join(self._tail)) from None
        log.info("quick tunnel up: %s", self.url)
        return self.url

    async def _read(self, found: asyncio.Future[str]) -> None:
        assert self._proc and self._proc.stderr

        def on_line(line: str, _cut: bool) -> None:
            self._tail.append(line)
            m = URL_RE.search(line)
            if m and not found.done():
                found.set_result(m.group(0))

        await processes.pump(self._proc.stderr, processes.LineSplitter(on_line, keep=4096))
        if not found.done():
            found.set_exception(TunnelError("cloudflared exited: " + " | ".join(self._tail)))

    async def stop(self) -> None:
        if self._proc and self._proc.returncode is None:
            await processes.stop(self._proc, STOP_GRACE_S)
        if self._reader:
            self._reader.cancel()
