"""Which backend replicas a gateway under test uses, so that `gateway-*` targets report THEIR numbers.

A `gateway-*` target's server-side figures (the backend's Prometheus latency, its process's CPU and
memory, the version it serves) must come from the replicas behind that gateway. They are asked of the
gateway itself (`GET /v1/backends`, with the load test's API key when it has one). Only when the
gateway cannot say (older gateway, refused, a replica not reachable from here) do addresses the user
gave (`--torch-url`, `GATEWAY_TORCH_URLS`, ...) stand in; defaults never do. What cannot be attributed
is left empty, so the report shows "n/a" and a warning instead of another server's numbers.

TF Serving behind a gateway speaking gRPC: its metrics and status live on its REST port, which the
gateway does not report. For a replica on this machine the REST port is found as the other port its
own process listens on that answers TF Serving's model status API; otherwise a given REST URL is used
(refused when it is provably another process), or the figures are n/a.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import psutil

from gateway.loadtest.resources import pids_listening_on
from gateway.loadtest.targets import (
    EXPLICIT_TF_REST,
    EXPLICIT_TORCH,
    Endpoints,
    Target,
    metrics_urls_for,
    status_urls,
)

TIMEOUT_S = 3.0
FLAGS = {
    "torch": "--torch-url / GATEWAY_TORCH_URLS",
    "tf": "--tf-rest-url / GATEWAY_TF_REST_URLS",
}


class DiscoveryError(RuntimeError):
    """The gateway did not say which backends it uses."""


@dataclass(frozen=True)
class Backend:
    """One backend as the gateway reports it."""

    protocol: str  # "rest" | "grpc"
    addresses: tuple[str, ...]  # base URLs (rest) or host:port (grpc)
    versions: tuple[int | None, ...]  # per replica: the highest AVAILABLE version its probe saw


def fetch_backends(gateway_url: str, api_key: str | None, timeout: float = TIMEOUT_S) -> dict[str, Backend]:
    """The gateway's `GET /v1/backends`, parsed. Raises DiscoveryError with the reason."""
    req = urllib.request.Request(f"{gateway_url.rstrip('/')}/v1/backends", headers={"Accept": "application/json"})
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            doc = orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        hint = " (set LOADTEST_API_KEY or --api-key)" if exc.code == 401 else ""
        raise DiscoveryError(f"GET /v1/backends answered HTTP {exc.code}{hint}") from None
    except (OSError, ValueError) as exc:
        raise DiscoveryError(f"GET /v1/backends failed: {exc}") from None
    try:
        out = {}
        for name, b in doc["backends"].items():
            replicas = b["replicas"]
            out[name] = Backend(
                protocol=str(b["protocol"]),
                addresses=tuple(str(r["address"]).rstrip("/") for r in replicas),
                versions=tuple(_int_or_none(r.get("loaded_version")) for r in replicas),
            )
        return out
    except (KeyError, TypeError, AttributeError) as exc:
        raise DiscoveryError(f"GET /v1/backends answered an unexpected document ({exc!r})") from None


def attribute_gateway_targets(targets: dict[str, Target], ep: Endpoints) -> tuple[dict[str, Target], list[str]]:
    """Every `gateway-*` target with its server-side sources filled in; warnings for what is n/a."""
    names = [n for n, t in targets.items() if t.server_source == "unresolved"]
    if not names:
        return targets, []
    backends: dict[str, Backend] | None = None
    error = None
    if ep.gateway_url:
        try:
            backends = fetch_backends(ep.gateway_url, ep.gateway_api_key)
        except DiscoveryError as exc:
            error = str(exc)
    out = dict(targets)
    warnings: list[str] = []
    for name in names:
        out[name], more = attribute(targets[name], ep, backends, error)
        warnings += more
    return out, warnings


def attribute(
    target: Target, ep: Endpoints, backends: dict[str, Backend] | None, error: str | None
) -> tuple[Target, list[str]]:
    """One gateway target's sources, from the gateway's answer (or `error`, why there is none)."""
    # A gateway on another machine reports loopback addresses of ITS machine: here they would name
    # this machine's servers (another stack's, perhaps), so they count as not reachable from here;
    # and its backends are no containers of this machine's Docker engine.
    here = _is_local(urlsplit(ep.gateway_url or "").hostname or "")
    t, warnings = _attribute(target, ep, backends, error, here)
    return (t if here else dataclasses.replace(t, docker_ok=False)), warnings


def _attribute(
    target: Target, ep: Endpoints, backends: dict[str, Backend] | None, error: str | None, here: bool
) -> tuple[Target, list[str]]:
    b = target.backend
    given = _given_rest_urls(b, ep)
    info = backends.get(b) if backends is not None else None

    def reachable(url: str) -> bool:
        return (here or not _is_loopback(urlsplit(url).hostname or "")) and _answers_http(url)

    if info is None:
        why = error or f"the gateway's /v1/backends lists no {b!r} backend"
        if given:
            return _from_given(target, given, "", f"the gateway did not say which {b} replicas it uses ({why})")
        return _none(
            target, f"the gateway did not say which {b} replicas it uses ({why}); nothing was given ({FLAGS[b]})"
        )
    versions = info.versions
    if info.protocol == "rest":
        unreachable = [u for u in info.addresses if not reachable(f"{u}/v1/models/cnn")]
        if not unreachable:
            return _from_rest(target, info.addresses, "REST", versions, "gateway", _note_gateway(b, info)), []
        why = f"the gateway's {b} replicas ({', '.join(unreachable)}) are not reachable from here"
        if given:
            return _from_given(target, given, "REST", why, versions)
        # Not reachable from here, e.g. compose service names: resource use may still come from that
        # service's container (when exactly one runs), never from a local process.
        return _none(target, f"{why}; nothing was given instead ({FLAGS[b]})", versions, docker_ok=here)
    # gRPC: TF Serving's metrics and status are on its REST port, which the gateway does not report.
    grpc_ports = tuple(_grpc_port(a) for a in info.addresses)
    local = here and all(_is_local(_grpc_host(a)) for a in info.addresses)
    found = [_local_rest_url(a) for a in info.addresses] if local else []
    if found and all(found):
        rest = tuple(u for u in found if u)
        note = (
            f"the gateway's tf replicas {', '.join(info.addresses)} (gRPC, from its /v1/backends); their REST "
            f"ports {', '.join(rest)} found as the other ports of the same processes"
        )
        t = _from_rest(target, rest, "GRPC", versions, "gateway", note)
        return dataclasses.replace(t, ports=grpc_ports), []
    if given:
        same = _same_processes(grpc_ports, tuple(_url_port(u) for u in given)) if local and _all_local(given) else None
        if same is False:
            return _none(
                target,
                f"the TF REST URLs given ({', '.join(given)}) are served by other processes than the gateway's tf "
                f"replicas ({', '.join(info.addresses)}, gRPC)",
                versions,
                info.addresses,
            )
        note = (
            f"TF Serving's REST port(s) {', '.join(given)} as given ({FLAGS['tf']}), "
            + ("checked to be the same processes as" if same else "assumed to be the same servers as")
            + f" the gateway's tf replicas {', '.join(info.addresses)} (gRPC); each round is checked against "
            "the server's request count"
        )
        t = _from_rest(target, given, "GRPC", versions, "given", note)
        # Resource use from the replicas the gateway named (a process here, or a compose container).
        return dataclasses.replace(t, ports=grpc_ports if local else (), docker_ok=here and not local), []
    return _none(
        target,
        f"the gateway reaches TF Serving over gRPC ({', '.join(info.addresses)}); TF Serving's metrics are on its "
        f"REST port, which the gateway does not report and which could not be found on this machine "
        f"(give {FLAGS['tf']} for these replicas)",
        versions,
        info.addresses if local else (),
        docker_ok=here and not local,
    )


# -- the sources --------------------------------------------------------------------------------------


def _from_rest(
    target: Target,
    rest_urls: tuple[str, ...],
    entrypoint: str,
    versions: tuple[int | None, ...] | None,
    source: str,
    note: str,
) -> Target:
    local = _all_local(rest_urls)
    return dataclasses.replace(
        target,
        metrics_urls=metrics_urls_for(target.backend, rest_urls),
        metrics_entrypoint=entrypoint if target.backend == "tf" else "",
        status_urls=status_urls(rest_urls),
        # A port is only a process on this machine when the replica is on this machine.
        ports=tuple(_url_port(u) for u in rest_urls) if local else (),
        replica_versions=versions,
        server_source=source,
        server_note=note,
        docker_ok=not local,
    )


def _from_given(
    target: Target,
    given: tuple[str, ...],
    entrypoint: str,
    why: str,
    versions: tuple[int | None, ...] | None = None,
) -> tuple[Target, list[str]]:
    note = (
        f"{why}; server-side figures come from {', '.join(given)} as given ({FLAGS[target.backend]}), "
        "trusted only in rounds where that server counted the requests sent"
    )
    return _from_rest(target, given, entrypoint, versions, "given", note), [f"{target.name}: {note}"]


def _none(
    target: Target,
    why: str,
    versions: tuple[int | None, ...] | None = None,
    local_addresses: tuple[str, ...] = (),
    docker_ok: bool = False,
) -> tuple[Target, list[str]]:
    """No server-side latency. Resource use only from replicas known to be on this machine (or, with
    `docker_ok`, from the backend's compose container when exactly one runs)."""
    ports = tuple(_address_port(a) for a in local_addresses)
    note = f"server-side latency n/a: {why}"
    t = dataclasses.replace(
        target,
        metrics_urls=(),
        status_urls=(),
        ports=ports,
        replica_versions=versions,
        server_source="none",
        server_note=note,
        docker_ok=docker_ok and not ports,
    )
    what = "server-side latency" + ("" if ports or docker_ok else ", resource use")
    what += "" if versions else " and served version"
    return t, [f"{target.name}: {what} n/a — {why}"]


def _note_gateway(backend: str, info: Backend) -> str:
    return f"the gateway's {backend} replicas {', '.join(info.addresses)} ({info.protocol}, from its /v1/backends)"


def _given_rest_urls(backend: str, ep: Endpoints) -> tuple[str, ...]:
    if backend == "torch":
        return ep.torch_urls if EXPLICIT_TORCH in ep.explicit else ()
    return ep.tf_rest_urls if EXPLICIT_TF_REST in ep.explicit else ()


# -- addresses and processes ---------------------------------------------------------------------------


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _answers_http(url: str, timeout: float = TIMEOUT_S) -> bool:
    """Whether an HTTP server answers at `url` (any status): reachable, as opposed to a name or port
    that does not resolve or connect from this machine."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError, http.client.HTTPException):  # HTTPException: an answer that is no HTTP
        return False


def _url_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _split_grpc(address: str) -> tuple[str, int]:
    addr = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    parts = urlsplit("//" + addr)
    return parts.hostname or "", parts.port or 0


def _grpc_host(address: str) -> str:
    return _split_grpc(address)[0]


def _grpc_port(address: str) -> int:
    return _split_grpc(address)[1]


def _address_port(address: str) -> int:
    return _url_port(address) if "://" in address else _grpc_port(address)


def _all_local(urls: tuple[str, ...]) -> bool:
    return bool(urls) and all(_is_local(urlsplit(u).hostname or "") for u in urls)


def _local_ips() -> set[str]:
    ips = set()
    with contextlib.suppress(OSError):
        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    ips.add(a.address.split("%", 1)[0])
    return ips


def _is_loopback(host: str) -> bool:
    if host.lower() in ("", "localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return addr.is_loopback or addr.is_unspecified


def _is_local(host: str) -> bool:
    """Whether `host` is this machine (loopback, or one of its interfaces' addresses)."""
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False  # e.g. a compose service name: a container, not a process of this machine
    ips = {str(info[4][0]).split("%", 1)[0] for info in infos}
    local: set[str] | None = None
    for ip in ips:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr.is_loopback or addr.is_unspecified:
            continue
        local = _local_ips() if local is None else local
        if ip not in local:
            return False
    return bool(ips)


def _listening_ports(pid: int) -> set[int]:
    ports: set[int] = set()
    with contextlib.suppress(psutil.Error, OSError):
        for c in psutil.Process(pid).net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr:
                ports.add(c.laddr.port)
    return ports


def _is_proxy(pids: list[int]) -> bool:
    """A port forwarder (Docker's userland proxy) listens for the container: its pid says nothing."""
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if "proxy" in psutil.Process(pid).name().lower():
                return True
    return False


def _local_rest_url(grpc_address: str) -> str | None:
    """The REST URL of the TF Serving whose gRPC port on this machine is `grpc_address`: the other port
    its process listens on that answers the model status API; None when there is not exactly one."""
    host, port = _split_grpc(grpc_address)
    pids = pids_listening_on((port,))
    if not pids or _is_proxy(pids):
        return None
    candidates = set().union(*(_listening_ports(p) for p in pids)) - {port}
    http_host = "127.0.0.1" if host in ("", "0.0.0.0", "::", "localhost") else host
    if ":" in http_host:
        http_host = f"[{http_host}]"
    found = [
        f"http://{http_host}:{p}" for p in sorted(candidates) if _is_tf_status(f"http://{http_host}:{p}/v1/models/cnn")
    ]
    return found[0] if len(found) == 1 else None


def _is_tf_status(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return "model_version_status" in orjson.loads(resp.read())
    except (OSError, ValueError, TypeError, http.client.HTTPException):
        return False


def _same_processes(ports_a: tuple[int, ...], ports_b: tuple[int, ...]) -> bool | None:
    """Whether the same local processes listen on both sets of ports; None when that cannot be told."""
    a, b = pids_listening_on(ports_a), pids_listening_on(ports_b)
    if not a or not b or _is_proxy(a) or _is_proxy(b):
        return None
    return set(a) == set(b)


__all__ = ["Backend", "DiscoveryError", "attribute", "attribute_gateway_targets", "fetch_backends"]
