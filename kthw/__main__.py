"""Operator commands that need no host: ``python -m kthw <command>``.

    validate   check cluster.yaml and print what it derives
    pki        create or refresh the PKI, encryption config and kubeconfigs (idempotent)
    pki adopt  copy a running cluster's identity (CAs, service-account keys, encryption config,
               Weave password) from a master over SSH, then refresh the rest (--from NODE)
    pki rotate-ca [begin|switch|finish]
               rotate the CAs without downtime, a deploy after each step (README: CA rotation);
               without a step: where the rotation stands
    certs      every certificate on every master and worker (over SSH) with its days left; exits 1
               when one expires within pki.renew_before_days (or --within DAYS): for cron
    diagram    print the topology as Mermaid
    pin-checksums  fetch upstream's published sha256 of every pinned release file and add
                 them to kthw/checksums/upstream-amd64.sha256 (review the diff, then commit)
"""

from __future__ import annotations

import argparse
import sys

from kthw.model import ClusterConfigError, load_cluster
from kthw.pki import PkiError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kthw", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["validate", "pki", "certs", "diagram", "pin-checksums"])
    parser.add_argument("action", nargs="?", choices=["adopt", "rotate-ca"], help="pki adopt, pki rotate-ca: see above")
    parser.add_argument("step", nargs="?", choices=["begin", "switch", "finish"], help="pki rotate-ca: see above")
    parser.add_argument("--from", dest="source", help="pki adopt: the master to read from (default: the first)")
    parser.add_argument("--within", type=int, metavar="DAYS",
                        help="certs: the warning window (default: pki.renew_before_days)")
    parser.add_argument("--cluster", help="cluster file (default: $KTHW_CLUSTER or cluster.yaml)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only changes")
    args = parser.parse_args(argv)
    if args.action and args.command != "pki":
        parser.error(f"{args.command} takes no action {args.action!r}")
    if args.step and args.action != "rotate-ca":
        parser.error(f"{args.step} goes with `pki rotate-ca`")
    if args.source and args.action != "adopt":
        parser.error("--from goes with `pki adopt`")
    try:
        cluster = load_cluster(args.cluster)
    except ClusterConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    for warning in cluster.warnings:
        print(f"warning: {warning}", file=sys.stderr)

    if args.command == "pin-checksums":
        from kthw.artifacts import UPSTREAM_CHECKSUMS, ArtifactError, pin_upstream, write_pins

        try:
            pins = pin_upstream(cluster)
        except ArtifactError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        write_pins(pins)
        print(f"{len(pins)} pins written to {UPSTREAM_CHECKSUMS}; review `git diff` before committing")
    elif args.command == "validate":
        print(f"{cluster.source}: ok, cluster {cluster.name!r}, API at {cluster.api_server_url}")
        for n in cluster.nodes:
            extra = f" pods {n.pod_cidr}" if n.pod_cidr else ""
            print(f"  {n.role:12} {n.name:16} {n.ip}{extra}")
    elif args.command == "certs":
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
    elif args.command == "diagram":
        from kthw.diagram import mermaid

        print(mermaid(cluster), end="")
    elif args.command == "pki":
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


if __name__ == "__main__":
    sys.exit(main())
