"""parse_options: every default, every accepted form, and a named problem for each bad value."""

from __future__ import annotations

import math
from typing import Any

import pytest
from conveyor.options import DEFAULT_URL, Options, parse_options


def problems_of(raw: Any) -> dict[str, str]:
    """Return the problems parse_options finds, as option name -> message."""
    _, problems = parse_options(raw)
    for problem in problems:
        assert problem.hint, problem
    return {p.option: p.message for p in problems}


def test_empty_options_use_the_default_url() -> None:
    """Fall back to redis://localhost:6379/0 and the documented defaults."""
    options, problems = parse_options({})

    assert problems == []
    assert options == Options(url=DEFAULT_URL)
    assert options.key_prefix == "conveyor"
    assert (options.result_ttl, options.failed_result_ttl) == (86_400, 7 * 86_400)
    assert options.enqueue_on_commit is False
    assert options.max_nesting == 64


def test_every_option_is_read() -> None:
    """Read every known option into its field."""
    raw = {
        "HOST": "redis.internal",
        "PORT": 6380,
        "DB": 3,
        "USERNAME": "app",
        "PASSWORD": "s3cret",
        "SSL": True,
        "SSL_CERT_REQS": "optional",
        "SSL_CA_CERTS": "/ca.pem",
        "SSL_CERTFILE": "/client.pem",
        "SSL_KEYFILE": "/client.key",
        "SSL_CHECK_HOSTNAME": False,
        "KEY_PREFIX": "app.tasks:v1-x_y",
        "RESULT_TTL": 60,
        "FAILED_RESULT_TTL": 120,
        "CONNECT_TIMEOUT": 1,
        "SOCKET_TIMEOUT": 0.25,
        "MAX_CONNECTIONS": 7,
        "MAX_PAYLOAD_BYTES": 2048,
        "MAX_NESTING": 10,
        "ENQUEUE_ON_COMMIT": True,
        "TRACING": False,
    }

    options, problems = parse_options(raw)

    assert problems == []
    assert options == Options(**{name.lower(): value for name, value in raw.items()})
    assert options.url is None
    assert "s3cret" not in repr(options)


def test_host_settings_build_pool_kwargs_and_target() -> None:
    """Pass HOST/PORT/DB/credentials and TLS settings to redis-py, and name the target without secrets."""
    options, _ = parse_options(
        {"HOST": "h", "PORT": 6380, "DB": 2, "USERNAME": "u", "PASSWORD": "p", "SSL": True}
    )

    kwargs = options.connection_kwargs()

    assert kwargs["host"] == "h"
    assert (kwargs["port"], kwargs["db"]) == (6380, 2)
    assert (kwargs["username"], kwargs["password"]) == ("u", "p")
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_check_hostname"] is True
    assert kwargs["socket_connect_timeout"] == 2.0
    assert kwargs["socket_timeout"] == 5.0
    assert options.uses_tls
    assert options.describe_target() == "rediss://h:6380/2 (OPTIONS HOST/PORT/DB)"


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis://:pw@cache:6390/4", "redis://cache:6390/4 (OPTIONS['URL'])"),
        ("rediss://user:pw@cache/1", "rediss://cache:6379/1 (OPTIONS['URL'])"),
        ("redis://localhost", "redis://localhost:6379 (OPTIONS['URL'])"),
        ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock (OPTIONS['URL'])"),
        ("redis://[::1]:6379/0", "redis://::1:6379/0 (OPTIONS['URL'])"),
    ],
)
def test_urls_are_accepted_and_described_without_credentials(url: str, target: str) -> None:
    """Accept redis://, rediss:// and unix:// URLs and describe them without the password."""
    options, problems = parse_options({"URL": url})

    assert problems == []
    assert options.url == url
    assert options.describe_target() == target
    assert "pw" not in options.describe_target()


def test_rediss_url_turns_on_tls_settings() -> None:
    """Give a rediss:// URL the TLS keyword arguments, but no host/port (the URL has them)."""
    options, _ = parse_options(
        {"URL": "rediss://cache:6380/0", "SSL_CERT_REQS": "none", "SSL_CA_CERTS": "/ca"}
    )

    kwargs = options.connection_kwargs()

    assert options.uses_tls
    assert kwargs["ssl_cert_reqs"] == "none"
    assert kwargs["ssl_ca_certs"] == "/ca"
    assert "host" not in kwargs
    assert "ssl_certfile" not in kwargs


def test_plain_url_has_no_tls_settings() -> None:
    """Keep TLS keyword arguments away from a plain redis:// connection (redis-py would refuse them)."""
    options, _ = parse_options({"URL": "redis://cache:6379/0"})

    assert not options.uses_tls
    assert not any(name.startswith("ssl") for name in options.connection_kwargs())


@pytest.mark.parametrize(
    "name", ["URL", "USERNAME", "PASSWORD", "SSL_CA_CERTS", "SSL_CERTFILE", "SSL_KEYFILE"]
)
def test_none_means_unset(name: str) -> None:
    """Treat None as 'not set' for the optional strings."""
    options, problems = parse_options({name: None})

    assert problems == []
    assert getattr(options, name.lower()) is None


@pytest.mark.parametrize(
    ("raw", "option", "words"),
    [
        ({"PORT": "x"}, "PORT", "wrong type str"),
        ({"PORT": 0}, "PORT", "between 1 and 65535"),
        ({"PORT": 70000}, "PORT", "between 1 and 65535"),
        ({"PORT": 6379.0}, "PORT", "wrong type float"),
        ({"PORT": True}, "PORT", "wrong type bool"),
        ({"DB": -1}, "DB", "0 or more"),
        ({"RESULT_TTL": 0}, "RESULT_TTL", "greater than 0"),
        ({"FAILED_RESULT_TTL": -5}, "FAILED_RESULT_TTL", "greater than 0"),
        ({"RESULT_TTL": 1.5}, "RESULT_TTL", "wrong type float"),
        ({"CONNECT_TIMEOUT": 0}, "CONNECT_TIMEOUT", "greater than 0"),
        ({"CONNECT_TIMEOUT": math.nan}, "CONNECT_TIMEOUT", "finite"),
        ({"SOCKET_TIMEOUT": math.inf}, "SOCKET_TIMEOUT", "finite"),
        ({"SOCKET_TIMEOUT": "5"}, "SOCKET_TIMEOUT", "wrong type str"),
        ({"MAX_CONNECTIONS": 0}, "MAX_CONNECTIONS", "at least 1"),
        ({"MAX_PAYLOAD_BYTES": 0}, "MAX_PAYLOAD_BYTES", "at least 1"),
        ({"MAX_NESTING": 0}, "MAX_NESTING", "between 1 and 256"),
        ({"MAX_NESTING": -64}, "MAX_NESTING", "between 1 and 256"),
        ({"MAX_NESTING": 257}, "MAX_NESTING", "between 1 and 256"),
        ({"MAX_NESTING": 100_000}, "MAX_NESTING", "between 1 and 256"),
        ({"MAX_NESTING": 32.0}, "MAX_NESTING", "wrong type float"),
        ({"MAX_NESTING": "64"}, "MAX_NESTING", "wrong type str"),
        ({"MAX_NESTING": True}, "MAX_NESTING", "wrong type bool"),
        ({"SSL": "yes"}, "SSL", "wrong type str"),
        ({"SSL_CHECK_HOSTNAME": 1}, "SSL_CHECK_HOSTNAME", "wrong type int"),
        ({"ENQUEUE_ON_COMMIT": 1}, "ENQUEUE_ON_COMMIT", "wrong type int"),
        ({"TRACING": "off"}, "TRACING", "wrong type str"),
        ({"SSL_CERT_REQS": "maybe"}, "SSL_CERT_REQS", "one of required, optional, none"),
        ({"KEY_PREFIX": "a{b}"}, "KEY_PREFIX", "cannot be used"),
        ({"KEY_PREFIX": "a}b"}, "KEY_PREFIX", "cannot be used"),
        ({"KEY_PREFIX": ""}, "KEY_PREFIX", "cannot be used"),
        ({"KEY_PREFIX": "p" * 65}, "KEY_PREFIX", "cannot be used"),
        ({"KEY_PREFIX": "with space"}, "KEY_PREFIX", "cannot be used"),
        ({"HOST": 127}, "HOST", "wrong type int"),
        ({"URL": 6379}, "URL", "wrong type int"),
        ({"URL": "http://cache:6379"}, "URL", "redis://, rediss://, unix://, redis+sentinel://"),
        ({"URL": "cache:6379"}, "URL", "redis://, rediss://, unix://, redis+sentinel://"),
        ({"URL": "redis://cache:notaport/0"}, "URL", "malformed"),
        ({"URL": "redis://[::1"}, "URL", "malformed"),
        ({"URL": "redis://cache:0/0"}, "URL", "out of range"),
        ({"URL": "redis://cache:70000/0"}, "URL", "malformed"),
        ({"URL": "redis:///0"}, "URL", "no host"),
        ({"URL": "redis://cache/zero"}, "URL", "database 'zero' is not a number"),
        ({"URL": "redis://cache/0?db=x"}, "URL", "Invalid value for 'db'"),
        ({"URL": "redis://cache/0?socket_timeout=soon"}, "URL", "Invalid value for 'socket_timeout'"),
        ({"URL": "unix://"}, "URL", "socket path"),
        ({"URL": "redis://cache", "HOST": "other"}, "URL", "both set"),
        ({"URL": "redis://cache", "PASSWORD": "pw"}, "URL", "both set"),
        ({"URL": "redis+sentinel://s1:26379,s2:x/svc"}, "URL", "bad port"),
        ({"URL": "redis+sentinel://s1:26379"}, "URL", "service name"),
        ({"URL": "redis+sentinel://s1/svc/zero"}, "URL", "database 'zero'"),
        ({"URL": "redis+sentinel://s1/svc?db=1"}, "URL", "no query string"),
        ({"URL": "redis+sentinel://,s2/svc"}, "URL", "no host"),
        ({"URL": "redis+sentinel://s1/svc", "SERVICE_NAME": "svc"}, "URL", "sentinel URL"),
        ({"URL": "redis+sentinel://s1/svc", "HOST": "h"}, "URL", "both set"),
        ({"URL": "redis://cache", "SENTINELS": [["s1", 26379]], "SERVICE_NAME": "svc"}, "URL", "both set"),
        ({"SENTINELS": [["s1", 26379]]}, "SERVICE_NAME", "without SERVICE_NAME"),
        ({"SERVICE_NAME": "svc"}, "SENTINELS", "without SENTINELS"),
        ({"SENTINELS": [], "SERVICE_NAME": "svc"}, "SENTINELS", "non-empty list"),
        ({"SENTINELS": [["s1", "26379"]], "SERVICE_NAME": "svc"}, "SENTINELS", "(host, port) pairs"),
        ({"SENTINELS": [["s1", 0]], "SERVICE_NAME": "svc"}, "SENTINELS", "(host, port) pairs"),
        ({"SENTINELS": ["s1:26379"], "SERVICE_NAME": "svc"}, "SENTINELS", "(host, port) pairs"),
        ({"SENTINELS": "s1:26379", "SERVICE_NAME": "svc"}, "SENTINELS", "wrong type str"),
        ({"SENTINELS": [["s1", 26379]], "SERVICE_NAME": "a/b"}, "SERVICE_NAME", "1-128 characters"),
        ({"SENTINELS": [["s1", 26379]], "SERVICE_NAME": "svc", "HOST": "h"}, "SENTINELS", "HOST/PORT"),
        ({"SENTINEL_PASSWORD": "pw"}, "SENTINEL_PASSWORD", "Sentinel is not used"),
        ({"NOPE": 1}, "NOPE", "Unknown option 'NOPE'"),
        ({"key_prefix": "lower"}, "key_prefix", "Unknown option"),
    ],
)
def test_bad_values_are_named(raw: dict[str, Any], option: str, words: str) -> None:
    """Report a bad option by name, with a message that says what is wrong and a hint."""
    found = problems_of(raw)

    assert option in found, found
    assert words in found[option]


@pytest.mark.parametrize("value", [1, 64, 256])
def test_max_nesting_accepts_one_to_the_ceiling(value: int) -> None:
    """Accept any MAX_NESTING from 1 up to the deepest nesting the codec reads back."""
    options, problems = parse_options({"MAX_NESTING": value})

    assert problems == []
    assert options.max_nesting == value


def test_max_nesting_hint_gives_the_range() -> None:
    """Hint at the accepted range of MAX_NESTING."""
    _, [problem] = parse_options({"MAX_NESTING": 0})

    assert "between 1 and 256" in problem.hint


def test_unknown_option_hint_lists_the_known_ones() -> None:
    """Hint at the known option names when one is misspelt."""
    _, [problem] = parse_options({"RESULTS_TTL": 5})

    assert "RESULT_TTL" in problem.hint


def test_hint_says_what_is_expected() -> None:
    """Hint at the expected form of a bad value."""
    _, [problem] = parse_options({"PORT": "x"})

    assert problem.hint == "Set PORT to a TCP port between 1 and 65535."


def test_every_problem_is_reported_and_defaults_stay_usable() -> None:
    """Report all problems at once and keep defaults for the bad ones (so __init__ never fails)."""
    options, problems = parse_options(
        {"PORT": "x", "RESULT_TTL": 0, "KEY_PREFIX": "{}", "MAX_CONNECTIONS": 3}
    )

    assert {p.option for p in problems} == {"PORT", "RESULT_TTL", "KEY_PREFIX"}
    assert (options.port, options.result_ttl, options.key_prefix) == (6379, 86_400, "conveyor")
    assert options.max_connections == 3


@pytest.mark.parametrize("raw", [None, "redis://x", ["URL"], 3])
def test_options_that_are_not_a_dict(raw: Any) -> None:
    """Report OPTIONS itself when it is not a dict."""
    options, problems = parse_options(raw)

    assert [p.option for p in problems] == ["OPTIONS"]
    assert options == Options()


def test_non_string_option_key() -> None:
    """Report a non-string key without crashing."""
    assert "1" in problems_of({1: "x"})


def test_sentinel_url_is_read_into_sentinel_settings() -> None:
    """Split a redis+sentinel:// URL into sentinels (26379 by default), service, db, the primary's login."""
    options, problems = parse_options({"URL": "redis+sentinel://app:p%40ss@s1:26380,s2,[::1]:26381/main/3"})

    assert problems == []
    assert options.url is None
    assert options.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (options.service_name, options.db) == ("main", 3)
    assert (options.username, options.password, options.ssl) == ("app", "p@ss", False)
    kwargs = options.connection_kwargs()
    assert "host" not in kwargs and "port" not in kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "app", "p@ss")
    assert (
        options.describe_target()
        == "primary of sentinel service 'main' via s1:26380,s2:26379,[::1]:26381, db 3"
    )
    assert "p@ss" not in options.describe_target() and "p@ss" not in repr(options)


def test_sentinel_settings_and_tls_reach_the_sentinels() -> None:
    """Give the sentinels their own credentials and the TLS settings of a rediss+sentinel:// URL."""
    options, problems = parse_options(
        {
            "URL": "rediss+sentinel://s1/main",
            "SENTINEL_USERNAME": "watcher",
            "SENTINEL_PASSWORD": "eyes",
            "SSL_CA_CERTS": "/ca.pem",
        }
    )

    assert problems == []
    assert options.ssl and options.uses_tls
    sentinel = options.sentinel_kwargs()
    assert (sentinel["username"], sentinel["password"]) == ("watcher", "eyes")
    assert (sentinel["ssl"], sentinel["ssl_ca_certs"]) == (True, "/ca.pem")
    assert options.connection_kwargs()["ssl_ca_certs"] == "/ca.pem"
    assert "eyes" not in repr(options)


def test_sentinels_option_pairs_are_read() -> None:
    """Accept SENTINELS as a list of [host, port] lists or tuples, with SERVICE_NAME, DB and PASSWORD."""
    options, problems = parse_options(
        {"SENTINELS": [["s1", 26379], ("s2", 26380)], "SERVICE_NAME": "main", "DB": 2, "PASSWORD": "pw"}
    )

    assert problems == []
    assert options.url is None
    assert options.sentinels == (("s1", 26379), ("s2", 26380))
    assert (options.service_name, options.db, options.password) == ("main", 2, "pw")
    assert options.sentinel_kwargs() == {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}


def test_cluster_options_are_read_and_refused_with_sentinel_or_a_db() -> None:
    """CLUSTER and HASH_TAG_PER_QUEUE are flags; a cluster has no sentinels and only database 0."""
    options, problems = parse_options(
        {"URL": "redis://node-1:6379/0", "CLUSTER": True, "HASH_TAG_PER_QUEUE": True}
    )
    assert problems == [] and options.cluster and options.hash_tag_per_queue
    assert parse_options({})[0].cluster is False and parse_options({})[0].hash_tag_per_queue is False

    assert "CLUSTER" in problems_of({"URL": "redis+sentinel://s:26379/mymaster", "CLUSTER": True})
    assert problems_of({"HOST": "node-1", "DB": 2, "CLUSTER": True}) == {
        "DB": "A Redis Cluster has only database 0."
    }
    assert "HASH_TAG_PER_QUEUE" in problems_of({"HASH_TAG_PER_QUEUE": "yes"})
