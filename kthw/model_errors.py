"""How a problem with cluster.yaml is told: :class:`Problem`, :class:`ClusterConfigError`, and the
wording that turns pydantic's schema errors into problems naming the key, the value and the fix.

Knows nothing of the schema itself: :func:`schema_problems` is handed the root model
(kthw.model.ClusterFile) to list the keys allowed where an unknown one was found.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

# A problem's value when there is none to show (a missing key, a whole list).
MISSING = object()


@dataclass(frozen=True)
class Problem:
    key: str
    value: Any
    problem: str
    fix: str

    def __str__(self) -> str:
        shown = "" if self.value is MISSING else f" = {self.value!r}"
        return f"{self.key}{shown}: {self.problem}. Fix: {self.fix}."


class ClusterConfigError(Exception):
    """cluster.yaml is not usable; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s), nothing was changed on any host:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- schema errors

_FIXES = {
    "ip_v4_address": ("is not an IPv4 address", "write it like 192.168.56.11"),
    "ip_v4_network": (
        "is not an IPv4 network in CIDR form with its host bits zero",
        "write the network address and prefix, like 10.244.0.0/16",
    ),
    "missing": ("is required but missing", "add it (cluster.yaml in the repository shows every key)"),
    "int_parsing": ("is not a whole number", "write a plain integer"),
    "int_type": ("is not a whole number", "write a plain integer"),
    "int_from_float": ("is not a whole number", "write a plain integer"),
    "greater_than_equal": (None, "raise it"),
    "less_than_equal": (None, "lower it"),
    "dict_type": ("must be a mapping", "write `key: value` pairs under it"),
    "model_type": ("must be a mapping", "write `key: value` pairs under it"),
    "list_type": ("must be a list", "write one `- item` per entry"),
    "too_short": ("is empty", "give at least one entry, or remove the key"),
    "string_type": ("must be a string", 'quote it, like "3.10" (YAML reads 3.10 as the number 3.1)'),
    "bool_type": ("must be true or false", "write true or false"),
    "bool_parsing": ("must be true or false", "write true or false"),
}

# Where one key's error needs its own words: (key, error type) -> (what is wrong, fix).
_KEY_FIXES = {
    (("backup", "every"), "string_type"): ("is not an interval with its unit", "write it like 6h or 15min"),
    (("backup", "keep"), "greater_than_equal"): (
        "must keep at least one snapshot", "give a count of 1 or more; to take none, set backup.scheduled: false"),
}


def _lookup(raw: Any, loc: tuple) -> Any:
    cur = raw
    for part in loc:
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            return MISSING
    return cur


def _key_name(raw: Any, loc: tuple) -> str:
    """('nodes', 3, 'ip') -> 'nodes[3] (worker-1).ip' so users find the entry fast."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            item = _lookup(raw, loc[: i + 1])
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                out += f" ({item['name']})"
        else:
            out += ("." if out else "") + str(part)
    return out


def _allowed_keys(schema: type[BaseModel], loc: tuple) -> list[str]:
    model: Any = schema
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            inner = getattr(cand, "__args__", (cand,))
            found = [c for c in (cand, *inner) if isinstance(c, type) and issubclass(c, BaseModel)]
            if found:
                model = found[0]
                break
        else:
            return []
    return list(model.model_fields)


def schema_problems(exc: ValidationError, raw: Any, schema: type[BaseModel]) -> list[Problem]:
    """Every error of ``exc`` (``raw`` validated against ``schema``) as a Problem with its fix."""
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        typ = err["type"]
        key = _key_name(raw, loc)
        value = _lookup(raw, loc)
        if typ == "extra_forbidden":
            allowed = _allowed_keys(schema, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            problems.append(Problem(key, MISSING, "is not a known key",
                                    f"{hint}remove or rename it (allowed here: {', '.join(allowed)})"))
        elif typ == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            problems.append(Problem(key, value, "is not one of the supported values",
                                    f"use one of {expected}"))
        elif (loc, typ) in _KEY_FIXES:
            problems.append(Problem(key, value, *_KEY_FIXES[loc, typ]))
        elif typ == "string_pattern_mismatch":
            problems.append(Problem(key, value, *_pattern_fix(loc, is_key="[key]" in err["loc"])))
        elif typ in _FIXES:
            what, fix = _FIXES[typ]
            problems.append(Problem(key, value, what or err["msg"].lower(), fix))
        else:
            problems.append(Problem(key, value, err["msg"], "correct the value"))
    return problems


def _pattern_fix(loc: tuple, is_key: bool = False) -> tuple[str, str]:
    if loc[0] == "versions":
        if loc[-1] == "pause":
            return "is not a version like 3.10", 'write it as a quoted string, like "3.10"'
        return "is not a release version like v1.36.3", "write v, then major.minor.patch, like v1.36.3"
    if loc[-1] == "name":
        return ("is not a valid name (lower-case letters, digits and '-', starting and ending "
                "with a letter or digit, at most 63 characters)", "rename it, like worker-3")
    if loc[-1] == "mirror_url":
        return "is not an http(s):// or file:// URL", "write a full URL, like https://mirror.example/kthw"
    if loc[:2] in (("extra_args", "kubelet"), ("extra_args", "kube_proxy")):
        return ("is not a configuration key", "write the field as the component's YAML configuration "
                "names it, like maxPods")
    if loc[0] == "extra_args":
        if not is_key:
            return ("is not a single word", "give the flag's value without spaces, quotes, backslashes, "
                    "% or $ (systemd would expand those two)")
        return ("is not a flag name", "write the flag without its leading dashes, in lower case, like "
                "audit-log-maxage")
    if loc[:2] == ("artifacts", "registry_mirrors"):
        if not is_key:
            return "is not an http(s):// URL", "write the mirror's URL, like http://mirror.lan:5000"
        return ("is not a registry host name", "name the registry as image references do, "
                "like registry.k8s.io or myregistry.lan:5000")
    if loc == ("backup", "every"):
        return ("is not an interval like 6h or 15min", "write whole minutes (`min`) or whole hours (`h`), "
                "like 15min or 6h")
    if loc[-1] == "domain":
        return ("is not a DNS name (labels of lower-case letters, digits and '-', joined by single dots)",
                "write it like cluster.local")
    if loc[:2] == ("pod_security", "exempt_namespaces"):
        return ("is not a namespace name (lower-case letters, digits and '-', at most 63)",
                "write it as kubectl shows it, like kube-system")
    if loc[-2:] == ("ssh", "host"):
        return ("is not a host name or IP address (it would reach ssh's command line; a leading '-' is an "
                "ssh option)", "write the machine's address, like 10.0.0.11 or node1.example.com")
    if loc[-2:] == ("ssh", "user"):
        return ("is not a user name (lower-case letters, digits, '_' and '-', starting with a letter or '_'; "
                "it reaches ssh's command line and a remote shell)", "write the login name, like ubuntu")
    return "has characters that are not allowed", "use lower-case letters, digits, '-' and '.'"
