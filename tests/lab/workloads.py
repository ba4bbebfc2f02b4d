"""Workloads the lab's drills run while something breaks, and the probes that count what they
see: a web Deployment behind a NodePort (NodePortLoop asks every worker), and a pod calling the
API through the `kubernetes` Service (InClusterClient)."""

from __future__ import annotations

import json
import urllib.request

import yaml

from tests.lab.lab import Lab, Probe
from tests.lab.test_cluster import SERVE, smoke_image

# Two replicas that may share a node, a PodDisruptionBudget that keeps one serving while a drain
# evicts the other, and the usual graceful stop: readiness first, endpoints gone before the
# server stops (preStop).
WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                labelSelector: {{matchLabels: {{app: {name}}}}}
                topologyKey: kubernetes.io/hostname
      containers:
        - name: web
          image: {image}
          imagePullPolicy: IfNotPresent
          command: [sh, -c, '{serve}']
          ports: [{{containerPort: 8080}}]
          readinessProbe: {{httpGet: {{port: 8080, path: /}}, periodSeconds: 1}}
          lifecycle: {{preStop: {{exec: {{command: [sleep, "5"]}}}}}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: {name}}}
spec:
  minAvailable: 1
  selector: {{matchLabels: {{app: {name}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  type: NodePort
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def web_service(lab: Lab, name: str) -> tuple[str, list[str]]:
    """Start the web workload; return its manifest's path and its NodePort URL on every worker,
    once each answers."""
    manifest = lab.cluster_file.with_suffix(f".{name}.yaml")
    manifest.write_text(WEB.format(name=name, image=smoke_image(lab), serve=SERVE))
    lab.kubectl("apply", "-f", str(manifest))
    lab.kubectl("rollout", "status", f"deployment/{name}", "--timeout=180s", timeout=200)
    port = lab.kubectl("get", "svc", name, "-o", "jsonpath={.spec.ports[0].nodePort}")
    urls = [f"http://{w.ip}:{port}/" for w in lab.cluster.workers]
    lab.wait("the NodePort on every worker", lambda: all(answers(u) for u in urls), timeout=60, interval=1)
    return str(manifest), urls


class NodePortLoop(Probe):
    """GET http://<worker>:<nodePort>/ on every worker, each a new connection, ``interval`` s
    apart, while the block runs."""

    def __init__(self, urls: list[str], interval: float = 0.25):
        super().__init__(0)
        self.urls, self.pause = urls, interval

    def round(self, i: int) -> None:
        for url in self.urls:
            self.requests += 1
            try:
                with urllib.request.urlopen(url, timeout=5) as res:
                    res.read()
            except OSError as exc:
                self.failed(f"{url}: {exc}")
            self._stop.wait(self.pause)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as res:
            return bool(res.read())
    except OSError:
        return False


# Every 0.5 s a read (list ConfigMaps) and a write (create one) through the `kubernetes` Service,
# as any in-cluster client makes them: kubectl (copied in, see InClusterClient) with the pod's
# service account and the cluster CA, raw requests (no discovery). Each log line says how one
# went. (busybox's own wget cannot talk to the apiserver: it offers none of the TLS 1.2 suites
# the apiserver accepts.)
CLIENT_LOOP = r"""
until [ -x /tmp/kubectl ]; do sleep 0.2; done
echo "$BODY" > /tmp/body.json
sa=/var/run/secrets/kubernetes.io/serviceaccount
cat > /tmp/kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters:
- name: in-cluster
  cluster: {server: "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT", certificate-authority: $sa/ca.crt}
users: [{name: sa, user: {tokenFile: $sa/token}}]
contexts: [{name: in-cluster, context: {cluster: in-cluster, user: sa}}]
current-context: in-cluster
EOF
api=/api/v1/namespaces/$NS/configmaps
k="/tmp/kubectl --kubeconfig /tmp/kubeconfig --request-timeout=5s"
while true; do
  if $k get --raw "$api?limit=1" >/dev/null 2>/tmp/err; then echo ok read
  else echo "FAIL read $(date +%T) $(tail -c 200 /tmp/err)"; fi
  if $k create --raw "$api" -f /tmp/body.json >/dev/null 2>/tmp/err; then echo ok write
  else echo "FAIL write $(date +%T) $(tail -c 200 /tmp/err)"; fi
  sleep 0.5
done
"""


class InClusterClient:
    """A pod on a worker reading and writing through the `kubernetes` Service while the block
    runs; its log is the count::

        with InClusterClient(lab) as client:
            ...
        assert client.failures == [] and client.requests > 100
    """

    def __init__(self, lab: Lab, name: str = "kthw-drill-client"):
        self.lab, self.name = lab, name
        self.requests, self.failures = 0, []

    def _objects(self) -> list[dict]:
        labels = {"kthw-drill": self.name}
        body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"generateName": f"{self.name}-", "labels": labels}})
        rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "create"]}]
        meta = {"name": self.name, "namespace": "default", "labels": labels}
        return [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": self.name},
             "subjects": [{"kind": "ServiceAccount", "name": self.name, "namespace": "default"}]},
            {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {
                "serviceAccountName": self.name,
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "client", "image": smoke_image(self.lab), "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", CLIENT_LOOP],
                    "env": [{"name": "NS", "value": "default"}, {"name": "BODY", "value": body}],
                }]}},
        ]

    def __enter__(self):
        path = self.lab.cluster_file.with_suffix(f".{self.name}.yaml")
        path.write_text(yaml.safe_dump_all(self._objects(), sort_keys=False))
        self.manifest = str(path)
        self.lab.kubectl("apply", "-f", self.manifest)
        self.lab.kubectl("wait", "--for=condition=Ready", f"pod/{self.name}", "--timeout=120s", timeout=140)
        # the client: the operator's kubectl (a static binary), in beside the pod's own tools
        self.lab.kubectl("cp", str(self.lab.kubectl_binary), f"default/{self.name}:/tmp/kubectl.part", timeout=300)
        self.lab.kubectl("exec", self.name, "--", "sh", "-c", "chmod +x /tmp/kubectl.part && mv /tmp/kubectl.part "
                         "/tmp/kubectl")
        self.lab.wait("the in-cluster client's first answers", lambda: "ok write" in self._log(), interval=1,
                      timeout=60)
        return self

    def _log(self) -> str:
        return self.lab.kubectl("logs", self.name)

    def __exit__(self, *exc) -> None:
        lines = [line for line in self._log().splitlines() if line.startswith(("ok ", "FAIL "))]
        self.requests = len(lines)
        self.failures = [line for line in lines if line.startswith("FAIL")]
        self.lab.kubectl("delete", "-f", self.manifest, "--wait=false", check=False)
        self.lab.kubectl("delete", "configmaps", "-l", f"kthw-drill={self.name}", check=False)
