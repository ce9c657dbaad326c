"""Network exposure rules shared by the project's servers (planner server, policy server).

* :func:`is_loopback_host`: does binding a host only accept connections from this machine?
* :func:`check_bind`: refuse a non-loopback bind when no shared token is configured.
* :func:`token_from_env`: read a shared token from an environment variable (never from the
  command line, where other users of the machine can read it in the process list).
* :func:`bearer_token_matches`: constant-time check of an ``Authorization: Bearer <token>`` header.

This module imports nothing beyond the standard library, so any server or client can use it.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
from typing import Optional


def is_loopback_host(host: str) -> bool:
    """True if binding ``host`` only accepts connections from this machine.

    ``localhost`` and loopback IP literals (``127.0.0.0/8``, ``::1``) are loopback; wildcard
    addresses (``0.0.0.0``, ``::``, ``""``), other IPs and other host names are not.
    """
    host = (host or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def check_bind(host: str, token: Optional[str], token_env: str, service: str = "the server") -> None:
    """Refuse a non-loopback ``host`` when no shared token is set.

    Raises:
        ValueError: ``host`` is reachable from other machines and ``token`` is empty; the message
            names ``service`` and the environment variable that must hold the token.
    """
    if not is_loopback_host(host) and not token:
        raise ValueError(
            f"refusing to bind {service} to {host!r}, which is not a loopback address, "
            f"without an API token: set the environment variable {token_env} to a secret token "
            f"(clients then send 'Authorization: Bearer <token>'), or bind 127.0.0.1")


def token_from_env(token_env: str) -> Optional[str]:
    """The token held by the environment variable ``token_env`` (surrounding blanks removed);
    ``None`` when the variable is unset or blank."""
    value = os.environ.get(token_env, "").strip()
    return value or None


def bearer_token_matches(header_value: Optional[str], token: str) -> bool:
    """True if ``header_value`` is ``Bearer <token>`` (scheme case-insensitive); the token itself
    is compared in constant time (:func:`hmac.compare_digest`)."""
    if not header_value or not token:
        return False
    scheme, _, given = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))
