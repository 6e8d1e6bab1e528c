#!/usr/bin/env python3
"""Evaluates the CEL of deploy/'s ValidatingAdmissionPolicies against
sample admission requests, with cel-python (pip install cel-python
pyyaml), as far as that stands in for the API server's cel-go: typed
objects, Kubernetes' CEL libraries and the cost limits are not modelled.
Prints one line per case; exit 1 if any is not admitted or refused as it
should be, 2 when cel-python is missing. Run from the repository root
(tests/tests/deploy_policy.rs runs it)."""
import copy
import sys

import yaml

try:
    import celpy
except ImportError:
    print("cel-python is not installed (pip install cel-python)")
    sys.exit(2)
ENV = celpy.Environment()
TRUE = celpy.celtypes.BoolType(True)
SA = "system:serviceaccount:kube-system:husk-deploy"


def policies(path):
    """The ValidatingAdmissionPolicies of a YAML file, by name."""
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}


def run(expr, act):
    """An expression's value; an error is ("error", why): denied, as
    failurePolicy Fail does."""
    try:
        r = ENV.program(ENV.compile(expr)).evaluate(act)
    except Exception as e:  # a compile error is as much a failure
        return ("error", repr(e))
    return ("error", r) if isinstance(r, celpy.CELEvalError) else r


def admit(policy, request, obj, old):
    """'not matched', 'allow', or 'deny: <message>' for one request."""
    act = {
        "request": celpy.json_to_cel(request),
        "object": celpy.json_to_cel(obj),
        "oldObject": celpy.json_to_cel(old),
    }
    spec = policy["spec"]
    for c in spec.get("matchConditions", []):
        if run(c["expression"], act) != TRUE:
            return "not matched"
    act["variables"] = celpy.celtypes.MapType(
        {celpy.celtypes.StringType(v["name"]): run(v["expression"], act) for v in spec.get("variables", [])}
    )
    for v in spec["validations"]:
        r = run(v["expression"], act)
        if r != TRUE:
            why = f" ({r[1]})" if isinstance(r, tuple) else ""
            return "deny: " + str(v.get("message") or v.get("messageExpression"))[:60] + why[:100]
    return "allow"


def node_request(user=SA, name="n1", bound="n1", op="UPDATE", sub=None):
    r = {"operation": op, "name": name, "userInfo": {"username": user}}
    if bound is not None:
        r["userInfo"]["extra"] = {"authentication.kubernetes.io/node-name": [bound]}
    if sub:
        r["subResource"] = sub
    return r


NODE = {
    "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}, "annotations": {"a": "b"}},
    "spec": {"podCIDR": "10.0.0.0/24"},
}


def node_with(change):
    o = copy.deepcopy(NODE)
    change(o)
    return o


def node_cases():
    labelled = node_with(lambda o: o["metadata"]["labels"].update({"husk.io/runtime": "true"}))
    return [
        ("set its own node's label", node_request(), labelled, NODE, "allow"),
        ("remove it", node_request(), NODE, labelled, "allow"),
        ("change nothing", node_request(), NODE, NODE, "allow"),
        ("another node", node_request(name="n2"), labelled, NODE, "deny"),
        ("a token without a node", node_request(bound=None), labelled, NODE, "deny"),
        ("the label to false", node_request(),
         node_with(lambda o: o["metadata"]["labels"].update({"husk.io/runtime": "false"})), NODE, "deny"),
        ("another label", node_request(), node_with(lambda o: o["metadata"]["labels"].update({"x": "y"})), NODE, "deny"),
        ("drop a label", node_request(), node_with(lambda o: o["metadata"].update({"labels": {}})), NODE, "deny"),
        ("a taint", node_request(),
         node_with(lambda o: o["spec"].update({"taints": [{"key": "k", "effect": "NoSchedule"}]})), NODE, "deny"),
        ("an annotation", node_request(), node_with(lambda o: o["metadata"]["annotations"].update({"c": "d"})), NODE, "deny"),
        ("an owner", node_request(), node_with(lambda o: o["metadata"].update({"ownerReferences": [{"name": "x"}]})), NODE, "deny"),
        ("nodes/status", node_request(sub="status"), NODE, NODE, "deny"),
        ("delete", node_request(op="DELETE"), None, NODE, "deny"),
        ("another user", node_request(user="alice", name="n2", bound=None),
         node_with(lambda o: o["spec"].update({"unschedulable": True})), NODE, "not matched"),
    ]


def pod(host_network, runtime_class):
    spec = {"containers": [{"name": "c"}]}
    if host_network is not None:
        spec["hostNetwork"] = host_network
    if runtime_class is not None:
        spec["runtimeClassName"] = runtime_class
    return {"metadata": {"name": "p"}, "spec": spec}


def main():
    bad = 0

    def check(what, got, want):
        nonlocal bad
        ok = got.startswith(want)
        bad += not ok
        print(("ok   " if ok else "BAD  ") + f"{what}: {got}")

    node_policy = policies("deploy/husk-deploy.yaml")["husk-deploy-own-node-label"]
    for what, request, obj, old, want in node_cases():
        check(what, admit(node_policy, request, obj, old), want)
    pod_policy = policies("deploy/husk-pod-policy.yaml")["husk-no-host-network"]
    create = {"operation": "CREATE", "userInfo": {"username": "u"}}
    for hn, rc, want in [
        (True, "husk", "deny"), (True, "husk-vm", "deny"), (True, None, "allow"), (True, "runc", "allow"),
        (False, "husk", "allow"), (None, "husk", "allow"), (None, None, "allow"),
    ]:
        check(f"pod hostNetwork={hn} runtimeClassName={rc}", admit(pod_policy, create, pod(hn, rc), None), want)
    sys.exit(1 if bad else 0)


main()
