"""The one client of a node's HTTP API, for every command that talks to a node (publish,
inspect, why, tail --http), and the --http/--http-token options that point it."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click

from busylamp.commands.base import ADDRESS
from busylamp.presence.config import Address

DEFAULT_HTTP = "127.0.0.1:8080"


class NodeUnreachable(click.ClickException):
    """The node's HTTP API could not be reached (exit 1)."""


class NodeClient:
    """Requests to one node's HTTP API (bearer token when given); failures as ClickException
    (exit 1) with one line saying what to check."""

    def __init__(self, address: Address, token: str | None) -> None:
        self.address = address
        self.token = token

    def _headers(self, json_body: bool = False) -> dict[str, str]:
        headers = {"Content-Type": "application/json"} if json_body else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float = 10.0) -> tuple[int, bytes]:
        """(status, body) of one request."""
        conn = http.client.HTTPConnection(self.address.host, self.address.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=self._headers(body is not None))
            response = conn.getresponse()
            return response.status, response.read()
        except OSError as err:
            raise self.unreachable(err) from None
        finally:
            conn.close()

    def get_json(self, path: str, ok: Iterable[int] = (200,)) -> tuple[int, Any]:
        """(status, decoded JSON) of a GET; any status outside `ok` is an error."""
        status, body = self.request("GET", path)
        if status not in ok:
            raise self.api_error(status, body)
        return status, json.loads(body)

    def stream(self, path: str, timeout: float) -> Iterator[dict]:
        """GET an NDJSON stream and yield its objects (blank heartbeat lines skipped); ends when
        the node closes it; a ClickException after `timeout` seconds without a byte."""
        conn = http.client.HTTPConnection(self.address.host, self.address.port, timeout=timeout)
        try:
            try:
                conn.request("GET", path, headers=self._headers())
                response = conn.getresponse()
            except OSError as err:
                raise self.unreachable(err) from None
            if response.status != 200:
                raise self.api_error(response.status, response.read())
            while True:
                try:
                    line = response.readline()
                except TimeoutError:
                    raise click.ClickException(
                        f"no data from http://{self.address} for {timeout:g} s "
                        "(not even a heartbeat); giving up") from None
                except OSError as err:
                    raise self.unreachable(err) from None
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()

    def unreachable(self, err: BaseException) -> NodeUnreachable:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        return NodeUnreachable(f"cannot reach the busylamp HTTP API at http://{self.address}: "
                               f"{reason} (is `busylamp run` up? check --http)")

    def api_error(self, status: int, body: bytes) -> click.ClickException:
        """The node's error answer as one line (its JSON "error", else the body)."""
        try:
            message = json.loads(body).get("error", "")
        except (ValueError, AttributeError):
            message = body.decode("utf-8", "replace").strip()
        if status == 401:
            message += " (pass --http-token or set BUSYLAMP_HTTP_TOKEN)"
        return click.ClickException(f"http://{self.address} answered {status}: {message}")


def token_option(command: Callable) -> Callable:
    """--http-token (env BUSYLAMP_HTTP_TOKEN)."""
    return click.option("--http-token", envvar="BUSYLAMP_HTTP_TOKEN", metavar="TOKEN",
                        help="Bearer token of the node's HTTP API [env BUSYLAMP_HTTP_TOKEN].")(
        command)


def http_options(command: Callable) -> Callable:
    """--http (env BUSYLAMP_HTTP, default 127.0.0.1:8080) and --http-token."""
    command = token_option(command)
    return click.option("--http", "http_address", type=ADDRESS, default=DEFAULT_HTTP,
                        envvar="BUSYLAMP_HTTP", show_default=True,
                        help="HTTP API of the node [env BUSYLAMP_HTTP].")(command)
