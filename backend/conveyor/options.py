"""The backend's OPTIONS, parsed once into a frozen dataclass; every default lives here."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.connection import parse_url

from .schedule import ScheduleEntry, parse_schedule

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_MAX_NESTING = 64
# Reading a value recurses once per level (json, normalize_json), so no MAX_NESTING may go
# beyond what a worker thread recurses through safely; the codec refuses deeper records.
MAX_NESTING_CEILING = 256
SSL_CERT_REQS = ("required", "optional", "none")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
_SERVICE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong with OPTIONS, reported by check()."""

    option: str
    message: str
    hint: str
    top_level: bool = False  # a key of TASKS[alias] itself (MAX_ATTEMPTS, BACKOFF), not of its OPTIONS

    @property
    def setting(self) -> str:
        """Return where the setting lives in TASKS[alias]: "OPTIONS URL", or "MAX_ATTEMPTS"."""
        return self.option if self.top_level else f"OPTIONS {self.option}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """Validated backend settings."""

    url: str | None = None
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    ssl_cert_reqs: str = "required"
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    key_prefix: str = "conveyor"
    result_ttl: int = 86_400
    failed_result_ttl: int = 7 * 86_400
    connect_timeout: float = 2.0
    socket_timeout: float = 5.0
    max_connections: int = 50
    max_payload_bytes: int = 1_048_576
    max_nesting: int = DEFAULT_MAX_NESTING
    enqueue_on_commit: bool = False
    allowed_task_modules: tuple[str, ...] = ()  # () = the project's INSTALLED_APPS, less Django's own
    project: str | None = None  # None = the top package of the settings module
    schedule: tuple[ScheduleEntry, ...] = ()  # periodic tasks the workers enqueue (docs/periodic.md)
    tracing: bool = True  # spans when opentelemetry and a tracer provider are set up (docs/tracing.md)
    # Redis Cluster (docs/cluster.md): CLUSTER talks to it with redis-py's cluster client, which
    # follows the slots as they move; HASH_TAG_PER_QUEUE puts each queue in its own slot.
    cluster: bool = False
    hash_tag_per_queue: bool = False
    # Sentinel mode (a redis+sentinel:// URL, or SENTINELS + SERVICE_NAME): the primary is asked
    # of these sentinels; db, username, password and ssl above then apply to the primary.
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def connection_kwargs(self) -> dict[str, Any]:
        """Return keyword arguments for redis-py's connection pool (URL passed separately)."""
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.socket_timeout,
            "max_connections": self.max_connections,
        }
        if self.sentinels:  # the host and port come from the sentinels, per connection
            kwargs["db"] = self.db
        elif self.url is None:
            kwargs.update(host=self.host, port=self.port, db=self.db)
        if self.url is None:
            if self.username is not None:
                kwargs["username"] = self.username
            if self.password is not None:
                kwargs["password"] = self.password
        if self.ssl or (self.url or "").startswith("rediss://"):
            kwargs.update(
                ssl_cert_reqs=self.ssl_cert_reqs,
                ssl_check_hostname=self.ssl_check_hostname,
            )
            for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name) is not None:
                    kwargs[name] = getattr(self, name)
        return kwargs

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Return keyword arguments for the connections to the sentinels themselves."""
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.socket_timeout,
        }
        if self.sentinel_username is not None:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        if self.ssl:  # sentinels of a TLS deployment speak TLS with the same certificates
            kwargs["ssl"] = True
            kwargs.update({k: v for k, v in self.connection_kwargs().items() if k.startswith("ssl_")})
        return kwargs

    @property
    def uses_tls(self) -> bool:
        """Tell whether connections are encrypted."""
        return self.ssl or (self.url or "").startswith("rediss://")

    def describe_target(self) -> str:
        """Return where Redis is, for error messages, without credentials."""
        if self.sentinels:
            nodes = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
            return f"primary of sentinel service {self.service_name!r} via {nodes}, db {self.db}"
        if self.url is None:
            scheme = "rediss" if self.ssl else "redis"
            return f"{scheme}://{self.host}:{self.port}/{self.db} (OPTIONS HOST/PORT/DB)"
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return f"unix://{parts.path} (OPTIONS['URL'])"
        host = parts.hostname or "localhost"
        port = parts.port or 6379
        return f"{parts.scheme}://{host}:{port}{parts.path or ''} (OPTIONS['URL'])"


# name -> (expected python types, description used in hints)
_SPEC: dict[str, tuple[tuple[type, ...], str]] = {
    "URL": ((str,), "a redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel:// URL"),
    "SENTINELS": ((list, tuple), "a list of (host, port) pairs of Redis Sentinels"),
    "SERVICE_NAME": ((str,), "the sentinels' name for the primary (1-128 of A-Z a-z 0-9 _ . : -)"),
    "SENTINEL_USERNAME": ((str,), "the user name the sentinels require"),
    "SENTINEL_PASSWORD": ((str,), "the password the sentinels require"),
    "HOST": ((str,), "a host name"),
    "PORT": ((int,), "a TCP port between 1 and 65535"),
    "DB": ((int,), "a database number >= 0"),
    "USERNAME": ((str,), "a user name"),
    "PASSWORD": ((str,), "a password"),
    "SSL": ((bool,), "True or False"),
    "SSL_CERT_REQS": ((str,), "one of " + ", ".join(SSL_CERT_REQS)),
    "SSL_CA_CERTS": ((str,), "a path to a CA bundle"),
    "SSL_CERTFILE": ((str,), "a path to a client certificate"),
    "SSL_KEYFILE": ((str,), "a path to a client key"),
    "SSL_CHECK_HOSTNAME": ((bool,), "True or False"),
    "KEY_PREFIX": ((str,), "1-64 characters from A-Z a-z 0-9 _ . : -"),
    "RESULT_TTL": ((int,), "seconds > 0 to keep successful results"),
    "FAILED_RESULT_TTL": ((int,), "seconds > 0 to keep failed results"),
    "CONNECT_TIMEOUT": ((int, float), "seconds > 0"),
    "SOCKET_TIMEOUT": ((int, float), "seconds > 0"),
    "MAX_CONNECTIONS": ((int,), "a pool size >= 1"),
    "MAX_PAYLOAD_BYTES": ((int,), "bytes > 0 allowed for a task's encoded arguments"),
    "MAX_NESTING": (
        (int,),
        f"levels of lists and dicts, between 1 and {MAX_NESTING_CEILING}, allowed in a task's "
        "arguments and return value",
    ),
    "ENQUEUE_ON_COMMIT": ((bool,), "True or False"),
    "ALLOWED_TASK_MODULES": ((list, tuple), "a list of module paths task paths must fall under"),
    "PROJECT": ((str,), "1-200 printable characters naming the project that owns KEY_PREFIX"),
    "SCHEDULE": ((list, tuple), "a list of periodic task entries (docs/periodic.md)"),
    "TRACING": ((bool,), "True (spans when a tracer provider is configured) or False"),
    "CLUSTER": ((bool,), "True (URL names one node of a Redis Cluster) or False"),
    "HASH_TAG_PER_QUEUE": ((bool,), "True (each queue's keys in a slot of their own) or False"),
}
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_CONNECTION_PARTS = ("HOST", "PORT", "DB", "USERNAME", "PASSWORD")
_SENTINEL_PARTS = ("SENTINELS", "SERVICE_NAME")
_TOP_LEVEL = ("MAX_ATTEMPTS", "BACKOFF")  # read by conveyor.retries from TASKS[alias] itself


def _bad_value(name: str, value: Any) -> str | None:
    """Return why a correctly typed value is out of range, or None."""
    positive = {"RESULT_TTL", "FAILED_RESULT_TTL", "CONNECT_TIMEOUT", "SOCKET_TIMEOUT"}
    if name in positive and not 0 < value < math.inf:  # also refuses NaN, which compares False
        return f"{name} must be a finite number greater than 0, not {value!r}."
    if name in {"MAX_CONNECTIONS", "MAX_PAYLOAD_BYTES"} and value < 1:
        return f"{name} must be at least 1, not {value!r}."
    if name == "MAX_NESTING" and not 1 <= value <= MAX_NESTING_CEILING:
        return f"MAX_NESTING must be between 1 and {MAX_NESTING_CEILING}, not {value!r}."
    if name == "PORT" and not 1 <= value <= 65535:
        return f"PORT must be between 1 and 65535, not {value!r}."
    if name == "DB" and value < 0:
        return f"DB must be 0 or more, not {value!r}."
    if name == "SSL_CERT_REQS" and value not in SSL_CERT_REQS:
        return f"SSL_CERT_REQS must be one of {', '.join(SSL_CERT_REQS)}, not {value!r}."
    if name == "KEY_PREFIX" and not _PREFIX_RE.match(value):
        return f"KEY_PREFIX {value!r} has characters that cannot be used in a key prefix."
    if name == "URL":
        return _bad_url(value)
    if name == "ALLOWED_TASK_MODULES" and (
        not value or not all(isinstance(m, str) and _MODULE_RE.match(m) for m in value)
    ):
        return f"ALLOWED_TASK_MODULES must be a non-empty list of module paths, not {value!r}."
    if name == "PROJECT" and not (0 < len(value) <= 200 and value.isprintable()):
        return f"PROJECT must be 1-200 printable characters, not {value!r}."
    if name == "SENTINELS" and not _sentinel_nodes(value):
        return f"SENTINELS must be a non-empty list of (host, port) pairs, not {value!r}."
    if name == "SERVICE_NAME" and not _SERVICE_RE.match(value):
        return f"SERVICE_NAME {value!r} must be 1-128 characters from A-Z a-z 0-9 _ . : -."
    return None


def _sentinel_nodes(value: Any) -> tuple[tuple[str, int], ...] | None:
    """Return SENTINELS as (host, port) pairs, or None when it is not a non-empty list of them."""
    nodes: list[tuple[str, int]] = []
    for node in value if isinstance(value, (list, tuple)) else ():
        if not (isinstance(node, (list, tuple)) and len(node) == 2):
            return None
        host, port = node
        if not (isinstance(host, str) and host.strip() and host == host.strip()):
            return None
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            return None
        nodes.append((host, port))
    return tuple(nodes) or None


@dataclass(frozen=True, slots=True, kw_only=True)
class SentinelURL:
    """What a redis+sentinel:// URL says (see parse_sentinel_url)."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int
    username: str | None
    password: str | None = field(repr=False)
    ssl: bool


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]; raise ValueError.

    The credentials are the primary's (as in a redis:// URL); a sentinel's own come from
    SENTINEL_USERNAME/SENTINEL_PASSWORD. A port left out is 26379; rediss+sentinel:// uses
    TLS to the primary and to the sentinels. No query string is accepted.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"a sentinel URL starts with {' or '.join(s + '://' for s in SENTINEL_SCHEMES)}")
    if "?" in rest or "#" in rest:
        raise ValueError("a sentinel URL takes no query string or fragment; use OPTIONS instead")
    netloc, _, path = rest.partition("/")
    credentials, at, nodes_text = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes: list[tuple[str, int]] = []
    for node in nodes_text.split(","):
        host, port_text = node, ""
        if node.startswith("["):  # [ipv6]:port
            host, _, tail = node[1:].partition("]")
            port_text = tail.removeprefix(":")
        elif ":" in node:
            host, _, port_text = node.rpartition(":")
        if not host:
            raise ValueError(f"sentinel {node!r} has no host")
        if port_text and not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
            raise ValueError(f"sentinel {node!r} has a bad port")
        nodes.append((host, int(port_text) if port_text else DEFAULT_SENTINEL_PORT))
    service, _, db_text = path.partition("/")
    if not _SERVICE_RE.match(service):
        raise ValueError("a sentinel URL needs the service name as its path: .../service_name[/db]")
    if db_text and not db_text.isdigit():
        raise ValueError(f"database {db_text!r} is not a number")
    return SentinelURL(
        sentinels=tuple(nodes),
        service_name=service,
        db=int(db_text or 0),
        username=username,
        password=password,
        ssl=scheme == "rediss+sentinel",
    )


def _bad_url(url: str) -> str | None:
    """Return why a Redis URL is unusable, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        if url.partition("://")[0] in SENTINEL_SCHEMES:
            return _bad_sentinel_url(url)
        return f"URL is malformed: {exc}."
    if parts.scheme in SENTINEL_SCHEMES:
        return _bad_sentinel_url(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return (
            "URL must start with redis://, rediss://, unix://, redis+sentinel:// or "
            f"rediss+sentinel://, not {parts.scheme!r}://."
        )
    try:
        parse_url(url)  # redis-py's own parser refuses bad query values such as ?db=x
    except ValueError as exc:
        return f"URL is malformed: {exc}"
    if parts.scheme == "unix":
        return None if parts.path else "URL unix:// needs a socket path."
    if not parts.hostname:
        return "URL has no host."
    if port is not None and not 1 <= port <= 65535:
        return f"URL port {port} is out of range."
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        return f"URL database {db!r} is not a number."
    return None


def _bad_sentinel_url(url: str) -> str | None:
    try:
        parse_sentinel_url(url)
    except ValueError as exc:
        return f"URL is malformed: {exc}."
    return None


def _sentinel_problems(raw: dict[Any, Any], values: dict[str, Any]) -> list[Problem]:
    """Check that sentinel settings come whole and alone; fold a sentinel URL into values."""
    problems: list[Problem] = []
    url = values.get("url")
    if url is not None and url.partition("://")[0] in SENTINEL_SCHEMES:
        parsed = parse_sentinel_url(url)  # _bad_url let it through
        values.update(
            url=None,
            sentinels=parsed.sentinels,
            service_name=parsed.service_name,
            db=parsed.db,
            username=parsed.username,
            password=parsed.password,
            ssl=parsed.ssl,
        )
        if any(part in raw for part in (*_SENTINEL_PARTS, "SSL")):
            problems.append(
                Problem(
                    option="URL",
                    message="URL is a sentinel URL and SENTINELS/SERVICE_NAME/SSL are set as well.",
                    hint="Give either the redis+sentinel:// URL or SENTINELS and SERVICE_NAME.",
                )
            )
        return problems
    if "URL" in raw and any(part in raw for part in _SENTINEL_PARTS):
        problems.append(
            Problem(
                option="URL",
                message="URL and SENTINELS/SERVICE_NAME are both set.",
                hint="Give either URL (redis+sentinel:// for Sentinel) or SENTINELS and SERVICE_NAME.",
            )
        )
    given = [part for part in _SENTINEL_PARTS if part in raw]
    if len(given) == 1:
        missing = "SERVICE_NAME" if given == ["SENTINELS"] else "SENTINELS"
        problems.append(
            Problem(
                option=missing,
                message=f"{given[0]} is set without {missing}.",
                hint="Sentinel needs both SENTINELS (the sentinels' addresses) and SERVICE_NAME.",
            )
        )
    if "sentinels" in values and any(part in raw for part in ("HOST", "PORT")):
        problems.append(
            Problem(
                option="SENTINELS",
                message="SENTINELS and HOST/PORT are both set.",
                hint="With Sentinel the primary's address comes from the sentinels: drop HOST and PORT.",
            )
        )
    if "sentinels" in values:
        values["sentinels"] = _sentinel_nodes(values["sentinels"])
    elif any(name in raw for name in ("SENTINEL_USERNAME", "SENTINEL_PASSWORD")) and not given:
        problems.append(
            Problem(
                option="SENTINEL_PASSWORD",
                message="SENTINEL_USERNAME/SENTINEL_PASSWORD are set but Sentinel is not used.",
                hint="Use a redis+sentinel:// URL or SENTINELS and SERVICE_NAME, or drop them.",
            )
        )
    return problems


def parse_options(raw: Any) -> tuple[Options, list[Problem]]:
    """Parse OPTIONS; return usable options (defaults where bad) and every problem found."""
    problems: list[Problem] = []
    if not isinstance(raw, dict):
        problems.append(
            Problem(option="OPTIONS", message="OPTIONS must be a dict.", hint="Use {} or omit it.")
        )
        return Options(), problems
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in _SPEC:
            known = ", ".join(sorted(_SPEC))
            hint = f"Known options: {known}."
            if name in _TOP_LEVEL:  # Django's proposed retry settings sit beside BACKEND, not in OPTIONS
                hint = f"Move {name} out of OPTIONS, to the top level of the TASKS entry beside BACKEND."
            problems.append(Problem(option=str(name), message=f"Unknown option {name!r}.", hint=hint))
            continue
        types, description = _SPEC[name]
        if name == "SCHEDULE":
            values["schedule"], bad = parse_schedule(value)
            problems += [
                Problem(
                    option=f"SCHEDULE {b.entry}".strip(),
                    message=b.message,
                    hint=f"Set SCHEDULE to {description}.",
                )
                for b in bad
            ]
            continue
        if value is None and name in {
            "USERNAME",
            "PASSWORD",
            "SSL_CA_CERTS",
            "SSL_CERTFILE",
            "SSL_KEYFILE",
            "URL",
            "SENTINEL_USERNAME",
            "SENTINEL_PASSWORD",
        }:
            continue
        type_ok = isinstance(value, types) and not (bool not in types and isinstance(value, bool))
        reason = None if type_ok else f"{name} has the wrong type {type(value).__name__}."
        reason = reason or _bad_value(name, value)
        if reason is not None:
            problems.append(Problem(option=name, message=reason, hint=f"Set {name} to {description}."))
            continue
        values[name.lower()] = value
    if "url" in values and any(part in raw for part in _CONNECTION_PARTS):
        problems.append(
            Problem(
                option="URL",
                message="URL and HOST/PORT/DB/USERNAME/PASSWORD are both set.",
                hint="Give either URL or the individual settings, not both.",
            )
        )
    problems += _sentinel_problems(raw, values)
    if values.get("cluster") and "sentinels" in values:
        problems.append(
            Problem(
                option="CLUSTER",
                message="CLUSTER is set with Sentinel; a Redis Cluster fails over by itself.",
                hint="Give one node of the cluster as URL (or HOST/PORT) and no sentinels.",
            )
        )
        values["cluster"] = False
    if values.get("cluster") and values.get("db", 0) != 0:
        problems.append(
            Problem(option="DB", message="A Redis Cluster has only database 0.", hint="Set DB to 0.")
        )
    explicit = (*_CONNECTION_PARTS, *_SENTINEL_PARTS, "URL")
    if "url" not in values and "sentinels" not in values and not any(part in raw for part in explicit):
        values["url"] = DEFAULT_URL
    if "allowed_task_modules" in values:
        values["allowed_task_modules"] = tuple(values["allowed_task_modules"])
    return Options(**values), problems
