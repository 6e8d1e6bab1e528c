//! The admission policies in deploy/, read as the API server would get
//! them, without one: deploy/husk-deploy.yaml's policy that lets the
//! DaemonSet's ServiceAccount change only husk's label of the node its
//! token is bound to, and deploy/husk-pod-policy.yaml's that refuses
//! hostNetwork pods of husk's RuntimeClasses. Each file parses as YAML;
//! each policy is bound with Deny and fails closed; its CEL names the
//! fields and the names the rest of the repository uses (the
//! ServiceAccount, husk-deploy.sh's label, config/runtimeclass.yaml's
//! classes) and is balanced. Where cel-python is installed (the Python
//! named by HUSK_CEL_PYTHON, else python3), tests/tools/vap_cel.py also
//! evaluates each policy's CEL against sample requests; else SKIPPED.
//! cel-python is not the API server's cel-go (no typed objects, no cost
//! limits): that the policies compile and act so on a real API server
//! (Kubernetes 1.30 or later) is not tested here.

use husk_tests::repo_root;
use serde::Deserialize;
use serde_json::Value;

/// Every document of a YAML file of the repository.
fn documents(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join(rel)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// Whether brackets nest and close outside CEL's string literals.
fn balanced(cel: &str) -> bool {
    let mut open = Vec::new();
    let mut quote = None;
    let mut escaped = false;
    for c in cel.chars() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' | '[' | '{' => open.push(c),
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open.pop() != Some(want) {
                    return false;
                }
            }
            _ => {}
        }
    }
    open.is_empty() && quote.is_none()
}

/// The policy `name` and its binding; asserts what every husk policy
/// has. Returns the policy's validation expressions, joined.
fn policy<'a>(docs: &'a [Value], name: &str) -> (&'a Value, String) {
    let p = find(docs, "ValidatingAdmissionPolicy", name);
    assert_eq!(p["apiVersion"], "admissionregistration.k8s.io/v1");
    assert_eq!(
        p["spec"]["failurePolicy"], "Fail",
        "{name} must fail closed"
    );
    let b = find(docs, "ValidatingAdmissionPolicyBinding", name);
    assert_eq!(b["spec"]["policyName"], name);
    assert_eq!(strings(&b["spec"]["validationActions"]), ["Deny"]);
    let mut all = String::new();
    for v in p["spec"]["validations"].as_array().unwrap() {
        let cel = v["expression"].as_str().unwrap();
        assert!(balanced(cel), "{name}: unbalanced CEL: {cel}");
        assert!(v["message"].is_string() || v["messageExpression"].is_string());
        if let Some(m) = v["messageExpression"].as_str() {
            assert!(balanced(m), "{name}: unbalanced CEL: {m}");
        }
        all.push_str(cel);
        all.push('\n');
    }
    for c in p["spec"]["matchConditions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert!(balanced(c["expression"].as_str().unwrap()));
    }
    (p, all)
}

/// husk-deploy.sh's LABEL= value.
fn deploy_label() -> String {
    let script = std::fs::read_to_string(repo_root().join("deploy/husk-deploy.sh")).unwrap();
    script
        .lines()
        .find_map(|l| l.strip_prefix("LABEL="))
        .expect("LABEL= in husk-deploy.sh")
        .to_owned()
}

#[test]
fn the_daemonset_account_may_change_only_husks_label_of_its_own_node() {
    let docs = documents("deploy/husk-deploy.yaml");
    let sa = docs.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    let (ns, sa_name) = (&sa["metadata"]["namespace"], &sa["metadata"]["name"]);
    let user = format!(
        "system:serviceaccount:{}:{}",
        ns.as_str().unwrap(),
        sa_name.as_str().unwrap()
    );
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    assert_eq!(
        &ds["spec"]["template"]["spec"]["serviceAccountName"],
        sa_name
    );
    // RBAC: nodes, get and patch, nothing else.
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(strings(&rules[0]["resources"]), ["nodes"]);
    assert_eq!(strings(&rules[0]["verbs"]), ["get", "patch"]);

    let (p, cel) = policy(&docs, "husk-deploy-own-node-label");
    // It applies to this ServiceAccount only, on nodes and their
    // subresources, for every verb that writes.
    let conditions = p["spec"]["matchConditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 1);
    assert_eq!(
        conditions[0]["expression"].as_str().unwrap(),
        format!("request.userInfo.username == '{user}'")
    );
    let rule = &p["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(strings(&rule["apiGroups"]), [""]);
    assert_eq!(strings(&rule["resources"]), ["nodes", "nodes/*"]);
    for op in ["CREATE", "UPDATE", "DELETE"] {
        assert!(
            strings(&rule["operations"]).contains(&op),
            "{op} not matched"
        );
    }
    // Only UPDATE of the node object itself.
    assert!(cel.contains("request.operation == 'UPDATE'"));
    assert!(cel.contains("request.subResource == ''"));
    // Its own node: the name the token is bound to.
    assert!(cel.contains("has(request.userInfo.extra)"));
    assert!(cel.contains(
        "request.userInfo.extra['authentication.kubernetes.io/node-name'] == [request.name]"
    ));
    // husk's label only, to "true" or away; every other label as it was.
    let label = deploy_label();
    assert!(cel.contains(&format!("k == '{label}'")));
    assert!(cel.contains(&format!("object.metadata.labels['{label}'] == 'true'")));
    assert!(cel.contains("oldObject.metadata.labels[k] == object.metadata.labels[k]"));
    // And nothing else of the node object.
    for field in [
        "spec",
        "metadata.annotations",
        "metadata.ownerReferences",
        "metadata.finalizers",
    ] {
        assert!(
            cel.contains(&format!("object.{field} == oldObject.{field}")),
            "{field} not held"
        );
    }
    // The label the RuntimeClasses select is the one the policy allows.
    for rc in documents("config/runtimeclass.yaml") {
        assert_eq!(rc["scheduling"]["nodeSelector"][&label], "true");
    }
}

#[test]
fn host_network_pods_of_husk_runtime_classes_are_refused() {
    let docs = documents("deploy/husk-pod-policy.yaml");
    let (p, cel) = policy(&docs, "husk-no-host-network");
    let rule = &p["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(strings(&rule["apiGroups"]), [""]);
    assert_eq!(strings(&rule["resources"]), ["pods"]);
    assert_eq!(strings(&rule["operations"]), ["CREATE"]);
    // The classes named are config/runtimeclass.yaml's, all of them.
    let classes: Vec<String> = documents("config/runtimeclass.yaml")
        .iter()
        .map(|rc| rc["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(classes, ["husk", "husk-vm"]);
    let var = p["spec"]["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "huskRuntimeClasses")
        .unwrap();
    let list = classes
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(var["expression"].as_str().unwrap(), format!("[{list}]"));
    assert!(cel.contains("!has(object.spec.hostNetwork) || !object.spec.hostNetwork"));
    assert!(cel.contains("!has(object.spec.runtimeClassName)"));
    assert!(cel.contains("!(object.spec.runtimeClassName in variables.huskRuntimeClasses)"));
}

#[test]
fn the_policies_admit_and_refuse_sample_requests_under_cel_python() {
    let python = std::env::var("HUSK_CEL_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .arg("tests/tools/vap_cel.py")
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(2) {
        println!("SKIPPED: {python} has no cel-python (set HUSK_CEL_PYTHON to one that has)");
        return;
    }
    assert!(
        out.status.success(),
        "a request was not admitted or refused as it should be"
    );
    assert!(stdout.lines().filter(|l| l.starts_with("ok ")).count() >= 20);
}

#[test]
fn the_cel_balance_check_catches_what_it_should() {
    assert!(balanced("a(b['x)'] == [c])"));
    assert!(!balanced("a(b['x'] == [c]"));
    assert!(!balanced("a == 'b"));
    assert!(!balanced("(]"));
}
