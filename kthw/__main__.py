"""Operator commands that need no host: ``python -m kthw <command>``.

    validate   check cluster.yaml and print what it derives
    pki        create or refresh the PKI, encryption config and kubeconfigs (idempotent)
    pki adopt  copy a running cluster's identity (CAs, service-account keys, encryption config,
               Weave password) from a master over SSH, then refresh the rest (--from NODE)
    pki rotate-ca [begin|switch|finish]
               rotate the CAs without downtime, a deploy after each step (docs/pki.md: CA rotation);
               without a step: where the rotation stands
    secrets rotate-key [begin|switch|finish]
               rotate the encryption-at-rest key, a deploy after each step (docs/pki.md: encryption
               key rotation); without a step: where it stands, the masters' configs, etcd's count
               of values by the key that sealed them (exit 1 when behind)
    certs      every certificate on every master and worker (over SSH) with its days left; exits 1
               when one expires within pki.renew_before_days (or --within DAYS): for cron
    health     one table of the cluster's health over SSH (nodes Ready, etcd, apiservers and the
               entrance, leader leases, DNS, pod network, certificates, the newest etcd snapshot);
               exits 1 when a check fails, 2 when it cannot tell (--within DAYS, --snapshot-max-age
               HOURS: no snapshot, or an older one, fails instead of warning): for cron
    diagram    print the topology as Mermaid
    pin-checksums  fetch upstream's published sha256 of every pinned release file and add
                 them to kthw/checksums/upstream-amd64.sha256 (review the diff, then commit)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from kthw.model import Cluster, ClusterConfigError, load_cluster
from kthw.pki import PkiError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kthw", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=list(COMMANDS))
    parser.add_argument("action", nargs="?", choices=["adopt", "rotate-ca", "rotate-key"],
                        help="pki adopt, pki rotate-ca, secrets rotate-key: see above")
    parser.add_argument("step", nargs="?", choices=["begin", "switch", "finish"],
                        help="rotate-ca, rotate-key: see above")
    parser.add_argument("--from", dest="source", help="pki adopt: the master to read from (default: the first)")
    parser.add_argument("--within", type=int, metavar="DAYS",
                        help="certs, health: the certificates' warning window (default: pki.renew_before_days)")
    parser.add_argument("--snapshot-max-age", type=float, metavar="HOURS",
                        help="health: fail when the newest etcd snapshot is older, or there is none "
                             "(default: only warn, past twice backup.every with the masters' schedule on, "
                             "else past a week)")
    parser.add_argument("--cluster", help="cluster file (default: $KTHW_CLUSTER or cluster.yaml)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only changes")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the checks argparse cannot make (exits 2 on a bad one)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    actions = {"pki": ("adopt", "rotate-ca"), "secrets": ("rotate-key",)}
    if args.action and args.action not in actions.get(args.command, ()):
        parser.error(f"{args.command} takes no action {args.action!r}")
    if args.command == "secrets" and not args.action:
        parser.error("secrets needs an action: secrets rotate-key [begin|switch|finish]")
    if args.step and args.action not in ("rotate-ca", "rotate-key"):
        parser.error(f"{args.step} goes with `pki rotate-ca` or `secrets rotate-key`")
    if args.source and args.action != "adopt":
        parser.error("--from goes with `pki adopt`")
    if args.within is not None and args.command not in ("certs", "health"):
        parser.error("--within goes with `certs` or `health`")
    if args.snapshot_max_age is not None and (args.command != "health" or args.snapshot_max_age < 0):
        parser.error("--snapshot-max-age goes with `health`, as a number of hours (0 or more)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cluster = load_cluster(args.cluster)
    except ClusterConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    for warning in cluster.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return COMMANDS[args.command](cluster, args)


def _pin_checksums(cluster: Cluster, args: argparse.Namespace) -> int:
    from kthw.artifacts import UPSTREAM_CHECKSUMS, ArtifactError, pin_upstream, write_pins

    try:
        pins = pin_upstream(cluster)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_pins(pins)
    print(f"{len(pins)} pins written to {UPSTREAM_CHECKSUMS}; review `git diff` before committing")
    return 0


def _validate(cluster: Cluster, args: argparse.Namespace) -> int:
    print(f"{cluster.source}: ok, cluster {cluster.name!r}, API at {cluster.api_server_url}")
    for n in cluster.nodes:
        extra = f" pods {n.pod_cidr}" if n.pod_cidr else ""
        print(f"  {n.role:12} {n.name:16} {n.ip}{extra}")
    return 0


def _certs(cluster: Cluster, args: argparse.Namespace) -> int:
    import datetime as dt

    from kthw.certs import report, rows
    from kthw.hostcerts import ssh_reader

    try:
        hosts = ssh_reader(cluster)()
    except PkiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text, code = report(rows(hosts, dt.datetime.now(dt.UTC)),
                        cluster.pki.renew_before_days if args.within is None else args.within)
    print(text)
    return code


def _secrets(cluster: Cluster, args: argparse.Namespace) -> int:
    """``secrets rotate-key [step]``: a step changes only the local encryption config (the deploy
    after it hands it out); without one, the status."""
    from kthw.key_rotation import main as rotate_key

    try:
        text, code = rotate_key(cluster, args.step)
    except PkiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(text)
    return code


def _health(cluster: Cluster, args: argparse.Namespace) -> int:
    from kthw.health import HealthConfigError, health

    try:
        text, code = health(cluster, cluster.pki.renew_before_days if args.within is None else args.within,
                            args.snapshot_max_age)
    except HealthConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return code


def _diagram(cluster: Cluster, args: argparse.Namespace) -> int:
    from kthw.diagram import mermaid

    print(mermaid(cluster), end="")
    return 0


def _pki(cluster: Cluster, args: argparse.Namespace) -> int:
    """``pki`` (after ``adopt`` or a ``rotate-ca`` step, if given): ensure the PKI, write the
    kubeconfigs, print what each file got (``--quiet``: only changes)."""
    from kthw.kubeconfig import write_kubeconfigs
    from kthw.pki import ensure_pki

    try:
        if args.action == "adopt":
            from kthw.adopt import main as adopt

            for name, what in adopt(cluster, args.source).items():
                print(f"  {name:36} {what}")
        if args.action == "rotate-ca":
            from kthw.rotation import main as rotate

            print(rotate(cluster, args.step))
            if args.step is None:
                return 0
        report = ensure_pki(cluster)
    except PkiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    kube = write_kubeconfigs(cluster)
    print(f"PKI in {cluster.pki_dir}, kubeconfigs in {cluster.kubeconfig_dir}")
    for name, action in [*report.actions.items(), *((f"{k}.kubeconfig", v) for k, v in kube.items())]:
        if not args.quiet or action != "kept":
            print(f"  {name:36} {action}")
    return 0


# command -> handler(cluster, args) -> exit code; the order is the one `--help` lists
COMMANDS: dict[str, Callable[[Cluster, argparse.Namespace], int]] = {
    "validate": _validate, "pki": _pki, "secrets": _secrets, "certs": _certs, "health": _health,
    "diagram": _diagram,
    "pin-checksums": _pin_checksums,
}


if __name__ == "__main__":
    sys.exit(main())
