"""A guest's network: the options (`Network`) and the policy a relay enforces (pure Python).

The guest's TCP connections leave the emulator through a Wisp relay (a WebSocket
carrying TCP streams): the host tools start one on 127.0.0.1 for their page
(pyapptron/host/relay.py), or the page names its own (`Network(relay="wisp://...")`).
The emulator's network stack in the page answers DHCP and ARP itself; names are resolved
by the relay (`resolve`), so no public DNS service is involved. The guest is untrusted,
the page is not: the page's options travel to the relay in its URL, which carries the
run's secret, and the relay checks every stream against them (`decide`).

Addresses the guest sees (v86's network stack; the same on every engine):
- the gateway, 192.168.86.1, which is also the host: `host.pyapptron.internal` resolves
  to it, and a connection to it reaches the host's 127.0.0.1, on the allowed ports only;
- the guest itself, 192.168.86.100/24, by DHCP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode

from .errors import InvalidOption

GATEWAY_IP = "192.168.86.1"
GUEST_IP = "192.168.86.100"
HOST_NAME = "host.pyapptron.internal"
#: What the page's DNS-over-HTTPS requests are addressed to; the adapter sends them to
#: the relay instead (the name never reaches a real resolver).
DNS_SERVER_NAME = "dns.pyapptron.internal"
RELAY_SCHEMES = ("wisp://", "wisps://")
#: Where the page's host (pyapptron/host/server.py) tells the page which relay it runs for
#: it: {"wisp": URL, "dns": URL}. Same-origin only (no CORS headers).
HOST_RELAY_INFO = "/pyapptron/relay.json"


@dataclass(frozen=True)
class Network:
    """What a guest's network may reach.

    internet: connections to public addresses (False: host-only, only `host_ports`).
    host_ports: ports of the host's own 127.0.0.1 the guest may reach, as
        host.pyapptron.internal:PORT. None by default.
    allow_private: private address ranges (10/8, 172.16/12, 192.168/16, fc00::/7) too.
        The host's loopback is never reachable but through `host_ports`.
    relay: a Wisp relay's URL (wisp://host:port/path/ or wisps://...); None: the one the
        host tools started for this page.
    """

    internet: bool = True
    host_ports: tuple[int, ...] = field(default_factory=tuple)
    allow_private: bool = False
    relay: str | None = None

    def __post_init__(self):
        ports = self.host_ports
        if isinstance(ports, (int, str)) or not isinstance(ports, Iterable):
            raise InvalidOption(f"Network(host_ports=) takes a list of port numbers, not {ports!r}")
        checked = []
        for port in ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise InvalidOption(f"Network(host_ports=): {port!r} is not a port number (1-65535)")
            checked.append(port)
        object.__setattr__(self, "host_ports", tuple(sorted(set(checked))))
        for name in ("internet", "allow_private"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidOption(f"Network({name}=) takes True or False, not {getattr(self, name)!r}")
        if self.relay is not None and (not isinstance(self.relay, str) or not self.relay.startswith(RELAY_SCHEMES)):
            raise InvalidOption(f"Network(relay=) takes a Wisp relay's URL (wisp://host:port/path/ or "
                                f"wisps://...), not {self.relay!r}")

    @classmethod
    def from_option(cls, value) -> Network | None:
        """boot(network=...): False/None (no network), True, "host-only", a relay URL, a Network,
        or a dict of Network's fields (from JS or a remote caller)."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, Network):
            return value
        if value == "host-only":
            return cls(internet=False)
        if isinstance(value, dict):  # the remote and JS forms: {"internet": false, "host_ports": [8080]}
            unknown = set(value) - {"internet", "host_ports", "allow_private", "relay"}
            if unknown:
                raise InvalidOption(f"network={value!r}: unknown field(s) {', '.join(sorted(unknown))}; "
                                    "fields: internet, host_ports, allow_private, relay")
            return cls(**{k: tuple(v) if k == "host_ports" and isinstance(v, list) else v for k, v in value.items()})
        if isinstance(value, str) and value.startswith(RELAY_SCHEMES):
            return cls(relay=value)
        raise InvalidOption(f"network={value!r}: use True, False, \"host-only\", a Wisp relay's URL "
                            "(\"wisp://host:port/path/\") or pyapptron.Network(...)")

    # The options travel to the relay in its URL's query (the URL carries the secret).
    def to_query(self) -> str:
        query = {"internet": int(self.internet), "private": int(self.allow_private)}
        if self.host_ports:
            query["ports"] = ",".join(map(str, self.host_ports))
        return urlencode(query)

    @classmethod
    def from_query(cls, query: str) -> Network:
        """The policy a relay URL carries; every field must be there (a URL that lost its
        query must not mean "everything")."""
        values = {k: v[-1] for k, v in parse_qs(query).items()}
        missing = [k for k in ("internet", "private") if k not in values]
        if missing:
            raise InvalidOption(f"the relay URL carries no network policy ({', '.join(missing)} missing)")
        try:
            ports = tuple(int(p) for p in values.get("ports", "").split(",") if p)
        except ValueError:
            raise InvalidOption(f"bad host ports in the relay URL: {values.get('ports')!r}") from None
        return cls(internet=values["internet"] == "1", allow_private=values["private"] == "1", host_ports=ports)

    def describe(self) -> str:
        reach = "the internet" if self.internet else "nothing outside (host-only)"
        ports = ", ".join(map(str, self.host_ports)) or "none"
        return f"{reach}; host ports: {ports}" + ("; private ranges allowed" if self.allow_private else "")


def stack_options(network: Network) -> dict:
    """What the page's network stack (emulators/v86/network.mjs, v86's own, on every
    engine) is given: the relay URL carrying this network's policy, and its DNS: v86 asks
    DNS-over-HTTPS of a name that is never resolved (DNS_SERVER_NAME); the page sends
    those requests to the relay's own resolver (`dns_url`), so no public DNS service is
    ever asked."""
    query = network.to_query()
    relay = network.relay
    sep = "&" if "?" in relay else "?"
    base = relay.split("?", 1)[0]
    http = "https://" + base[len("wisps://"):] if base.startswith("wisps://") else "http://" + base[len("wisp://"):]
    return {
        "net_device": {"relay_url": relay + sep + query, "dns_method": "doh", "doh_server": DNS_SERVER_NAME},
        "dns_url": http.rstrip("/") + "/dns-query?" + query,
    }


_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # "this host" on some stacks


def from_flags(mode: str | None, host_ports) -> dict | None:
    """The host tools' --network[=on|host-only] and --host-port PORT... flags as boot()'s
    network= (the dict form, which crosses to the page); --host-port alone is host-only."""
    ports = list(host_ports or [])
    if mode is None and not ports:
        return None
    return {"internet": mode == "on", "host_ports": ports}


class Refused(Exception):
    """The relay will not open this stream (the message says why)."""


def decide(network: Network, address: str, port: int) -> tuple[str, int]:
    """Where a guest's connection to address:port goes on the host, or Refused."""
    if address in (GATEWAY_IP, HOST_NAME):
        if port in network.host_ports:
            return "127.0.0.1", port
        raise Refused(f"port {port} of the host is not allowed (allowed: "
                      f"{', '.join(map(str, network.host_ports)) or 'none'})")
    if not network.internet:
        raise Refused("host-only network: only the allowed host ports are reachable")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise Refused(f"{address!r} is not an address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    this_network = isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK
    if ip.is_loopback or ip.is_unspecified or this_network or ip.is_link_local or ip.is_multicast or ip.is_reserved:
        raise Refused(f"{ip} is not reachable from the guest")
    if not ip.is_global:
        if not ip.is_private:
            raise Refused(f"{ip} is not a public address")
        if not network.allow_private:
            raise Refused(f"{ip} is a private address (Network(allow_private=True) allows those)")
    return str(ip), port


def dns_answer_for(network: Network, name: str) -> str | None:
    """The fixed answer for a name, if it has one: the host's name gives the gateway.
    None: resolve it for real (when the network reaches the internet) or NXDOMAIN."""
    if name.rstrip(".").lower() == HOST_NAME:
        return GATEWAY_IP
    return None


#: After a resume with a network: a new lease from this page's network stack (the state
#: kept the old one's). A Debian root without a DHCP client got its lease from the
#: initramfs, and the page's stack hands out the same address every time.
RENEW_LEASE = ("! command -v udhcpc >/dev/null || udhcpc -i eth0 -q -n -t 5 >/dev/null 2>&1 || "
               "{ echo 'no DHCP lease on eth0' >&2; exit 1; }")
