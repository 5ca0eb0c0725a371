//! The Kubernetes manifests (deploy/kubernetes), validated offline: there
//! is no Kubernetes cluster here, and `kubectl apply --dry-run=client`
//! needs an API server to map kinds, so it cannot run either (see
//! docs/OPERATIONS.md). Instead every manifest is parsed as YAML (Debian's
//! python3-yaml, which deploy/setup.sh installs) and the objects the
//! deployment needs are checked field by field: the StatefulSet of five
//! (a PVC each, pod anti-affinity, readiness on /readyz, a preStop that
//! hands leadership away, node ids from the pod index), the headless peer
//! Service and the client Service (selectors matching the pods), the
//! PodDisruptionBudget, the Secrets (every file the config names), the
//! ConfigMap (loaded with the node's own config loader) and the bootstrap
//! Job (initialising exactly the StatefulSet's five pods by their peer
//! DNS names).

mod deploy_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use deploy_common::*;
use serde_json::Value;

fn k8s_dir() -> PathBuf {
    deploy_dir().join("kubernetes")
}

/// Every YAML document of `file`, as JSON.
fn yaml_docs(file: &Path) -> Vec<Value> {
    let py = Path::new("/usr/bin/python3");
    assert!(
        py.is_file(),
        "/usr/bin/python3 is missing: run deploy/setup.sh (it installs python3-yaml)"
    );
    let out = output(
        Command::new(py)
            .arg("-c")
            .arg(
                "import json, sys, yaml\n\
         docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
         print(json.dumps(docs))",
            )
            .arg(file),
    );
    assert!(
        out.status.success(),
        "{} is not valid YAML (or python3-yaml is missing: run deploy/setup.sh): {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("JSON from python") {
        Value::Array(v) => v,
        other => panic!("expected a list of documents, got {other}"),
    }
}

fn all_objects() -> Vec<Value> {
    let kust = yaml_docs(&k8s_dir().join("kustomization.yaml"));
    assert_eq!(kust.len(), 1);
    let resources: Vec<String> = kust[0]["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| r.as_str().expect("resource name").to_string())
        .collect();
    // Every manifest in the directory is listed, and every listed one exists.
    let mut on_disk: Vec<String> = std::fs::read_dir(k8s_dir())
        .expect("deploy/kubernetes")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed = resources.clone();
    listed.sort();
    assert_eq!(listed, on_disk, "kustomization.yaml lists every manifest");
    let mut objs = Vec::new();
    for r in &resources {
        for d in yaml_docs(&k8s_dir().join(r)) {
            for k in ["apiVersion", "kind"] {
                assert!(d[k].is_string(), "{r}: an object without {k}: {d}");
            }
            assert!(
                d["metadata"]["name"].is_string(),
                "{r}: an object without a name"
            );
            if d["kind"] != "Namespace" {
                assert_eq!(
                    d["metadata"]["namespace"], "billdb",
                    "{r}: {}",
                    d["metadata"]["name"]
                );
            }
            objs.push(d);
        }
    }
    objs
}

/// `container` gets BILLDB_NODE_ID from the StatefulSet's pod index.
fn assert_node_id_from_pod_index(container: &Value, what: &str) {
    let id = container["env"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no env"))
        .iter()
        .find(|e| e["name"] == "BILLDB_NODE_ID")
        .unwrap_or_else(|| panic!("{what} gets no BILLDB_NODE_ID"));
    assert_eq!(
        id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.labels['apps.kubernetes.io/pod-index']",
        "{what}"
    );
}

fn one<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = objs
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name}");
    found[0]
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("expected a string: {s}"))
                .to_string()
        })
        .collect()
}

fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("selector");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels[k] == *v)
}

#[test]
fn kubernetes_manifests_hold_what_a_five_node_cluster_needs() {
    let objs = all_objects();
    one(&objs, "Namespace", "billdb");

    // The StatefulSet.
    let sts = one(&objs, "StatefulSet", "billdb");
    assert_eq!(sts["apiVersion"], "apps/v1");
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 5);
    assert_eq!(
        spec["ordinals"]["start"], 1,
        "pods billdb-1..5 are nodes 1..5"
    );
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert!(selects(&spec["selector"]["matchLabels"], pod_labels));
    let claims = spec["volumeClaimTemplates"]
        .as_array()
        .expect("volumeClaimTemplates");
    assert_eq!(claims.len(), 1, "one PVC per pod");
    assert_eq!(claims[0]["metadata"]["name"], "data");
    assert!(claims[0]["spec"]["resources"]["requests"]["storage"].is_string());
    let pod = &spec["template"]["spec"];
    let anti =
        &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    let anti = anti.as_array().expect("required pod anti-affinity");
    assert!(
        anti.iter()
            .any(|t| t["topologyKey"] == "kubernetes.io/hostname"
                && selects(&t["labelSelector"]["matchLabels"], pod_labels)),
        "no two billdb pods on one Kubernetes node"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    assert!(
        grace >= 45,
        "time for the hand-over and the shutdown: {grace}"
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert!(c["image"].as_str().expect("image").starts_with("billdb"));
    let ready = &c["readinessProbe"]["httpGet"];
    assert_eq!(ready["path"], "/readyz");
    assert_eq!(ready["scheme"], "HTTPS");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let pre = strs(&c["lifecycle"]["preStop"]["exec"]["command"]).join(" ");
    assert!(
        pre.starts_with("/usr/bin/billdb cluster step-down "),
        "preStop hands leadership away: {pre}"
    );
    let env = c["env"].as_array().expect("env");
    assert_node_id_from_pod_index(c, "the billdb container");
    let token = env
        .iter()
        .find(|e| e["name"] == "BILLDB_TOKEN")
        .expect("BILLDB_TOKEN");
    let tref = &token["valueFrom"]["secretKeyRef"];
    let ports: BTreeSet<(String, u64)> = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("port name").to_string(),
                p["containerPort"].as_u64().expect("port"),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [("http", 7001), ("grpc", 7101), ("raft", 7201)]
            .iter()
            .map(|(n, p)| (n.to_string(), *p))
            .collect()
    );
    // Every mount is a declared volume or the claim.
    let volumes: Vec<&Value> = pod["volumes"].as_array().expect("volumes").iter().collect();
    let vol = |name: &str| volumes.iter().find(|v| v["name"] == name).copied();
    let mut mounts = std::collections::BTreeMap::new();
    for m in c["volumeMounts"].as_array().expect("volumeMounts") {
        let name = m["name"].as_str().expect("mount name");
        assert!(
            name == "data" || vol(name).is_some(),
            "mount {name} has no volume"
        );
        mounts.insert(
            m["mountPath"].as_str().expect("mountPath").to_string(),
            m.clone(),
        );
    }
    assert_eq!(mounts["/var/lib/billdb"]["name"], "data", "data on the PVC");
    let cfg_mount = &mounts["/etc/billdb/node.toml"];
    let cfg_vol = vol(cfg_mount["name"].as_str().expect("name")).expect("config volume");
    let cm_name = cfg_vol["configMap"]["name"]
        .as_str()
        .expect("configMap volume");
    let tls_vol = vol(mounts["/etc/billdb/tls"]["name"].as_str().expect("name")).expect("tls");
    assert!(
        tls_vol["emptyDir"].is_object(),
        "the node's TLS directory is the init container's copy, not a Secret: {tls_vol}"
    );
    assert_eq!(mounts["/etc/billdb/tls"]["readOnly"], true);
    for m in mounts.values() {
        let name = m["name"].as_str().expect("name");
        if let Some(v) = vol(name) {
            assert!(
                v["secret"].is_null() && v["projected"].is_null(),
                "the billdb container mounts no Secret (another node's key): {v}"
            );
        }
    }
    let inits = pod["initContainers"].as_array().expect("initContainers");
    assert_eq!(inits.len(), 1, "one init container");
    let init = &inits[0];

    // Services: headless for peers (published before ready), one for clients.
    let peers = one(
        &objs,
        "Service",
        spec["serviceName"].as_str().expect("serviceName"),
    );
    assert_eq!(
        peers["spec"]["clusterIP"], "None",
        "the peer Service is headless"
    );
    assert_eq!(peers["spec"]["publishNotReadyAddresses"], true);
    assert!(selects(&peers["spec"]["selector"], pod_labels));
    let client = one(&objs, "Service", "billdb");
    assert_ne!(client["spec"]["clusterIP"], "None");
    assert!(selects(&client["spec"]["selector"], pod_labels));
    for svc in [peers, client] {
        for p in svc["spec"]["ports"].as_array().expect("service ports") {
            let target = p["targetPort"].as_str().expect("named targetPort");
            assert!(
                ports.iter().any(|(n, _)| n == target),
                "service port {target} names no container port"
            );
        }
    }

    // PodDisruptionBudget: one at a time.
    let pdb = objs
        .iter()
        .find(|o| o["kind"] == "PodDisruptionBudget")
        .expect("a PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
    assert!(
        pdb["spec"]["maxUnavailable"] == 1 || pdb["spec"]["minAvailable"] == 4,
        "at most one voluntary disruption: {}",
        pdb["spec"]
    );

    // The ConfigMap's node config, through the node's own loader, as node 3.
    let cm = one(&objs, "ConfigMap", cm_name);
    let node_toml = cm["data"][cfg_mount["subPath"].as_str().expect("subPath")]
        .as_str()
        .expect("node.toml in the ConfigMap");
    let image_toml = std::fs::read_to_string(deploy_dir().join("container/node.toml"))
        .expect("deploy/container/node.toml");
    assert_eq!(
        node_toml, image_toml,
        "the ConfigMap holds the image's node.toml"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("node.toml");
    std::fs::write(&p, node_toml).expect("write");
    let args = <billdb_node::config::Args as clap::Parser>::try_parse_from([
        "billdb-node".as_ref(),
        "--config".as_ref(),
        p.as_os_str(),
        "--node-id".as_ref(),
        "3".as_ref(),
    ])
    .expect("args");
    let cfg = billdb_node::config::Config::load(&args).expect("the ConfigMap's config loads");
    assert_eq!(cfg.node_id, 3);
    assert!(
        cfg.data_dir.starts_with("/var/lib/billdb"),
        "data on the PVC"
    );
    for (addr, port) in [
        (&cfg.http_addr, 7001),
        (&cfg.grpc_addr, 7101),
        (&cfg.raft_addr, 7201),
    ] {
        assert!(
            addr.ends_with(&format!(":{port}")),
            "{addr} is not the container port {port}"
        );
    }
    let tls = cfg.tls.as_ref().expect("[tls]: secure by default");
    assert_eq!(tls.cert_file, Path::new("/etc/billdb/tls/node3.pem"));
    assert!(!cfg.insecure.raft && !cfg.insecure.grpc && !cfg.insecure.http);
    assert!(
        refused_without_node_id(&p),
        "without BILLDB_NODE_ID the config must not load"
    );

    // The init container: node N's files out of the five Secrets into the
    // in-memory `tls` volume, by the real `billdb cert install` run here on
    // the files the projected volume would hold.
    assert_node_id_from_pod_index(init, "the init container");
    let mut init_mounts = std::collections::BTreeMap::new();
    for m in init["volumeMounts"].as_array().expect("init mounts") {
        let name = m["name"].as_str().expect("name").to_string();
        assert!(vol(&name).is_some(), "init mount {name} has no volume");
        init_mounts.insert(name, m["mountPath"].as_str().expect("path").to_string());
    }
    let tls_name = tls_vol["name"].as_str().expect("name");
    let init_out = init_mounts
        .get(tls_name)
        .expect("the init container writes the tls volume");
    let (all_name, all_path) = init_mounts
        .iter()
        .find(|(n, _)| n.as_str() != tls_name)
        .expect("the init container reads the five Secrets");
    let projected = &vol(all_name).expect("volume")["projected"]["sources"];
    let sources = projected.as_array().expect("a projected volume of Secrets");
    assert_eq!(sources.len(), 5, "one Secret per node");
    let fake = tempfile::tempdir().expect("tempdir");
    let relocate = |p: &str| -> PathBuf {
        for (mount, to) in [(all_path.as_str(), "all"), (init_out.as_str(), "tls")] {
            if let Some(rest) = p.strip_prefix(mount) {
                return fake.path().join(to).join(rest.trim_start_matches('/'));
            }
        }
        panic!("{p} is under no mount of the init container")
    };
    for (i, src) in sources.iter().enumerate() {
        let n = i + 1;
        let name = src["secret"]["name"].as_str().expect("secret source");
        assert_eq!(name, format!("billdb-tls-{n}"));
        let secret = one(&objs, "Secret", name);
        let data = secret["stringData"].as_object().expect("secret data");
        let want: BTreeSet<String> = ["ca.pem", "tokens.toml"]
            .iter()
            .map(|f| f.to_string())
            .chain([format!("node{n}.pem"), format!("node{n}.key")])
            .collect();
        assert_eq!(
            data.keys().cloned().collect::<BTreeSet<_>>(),
            want,
            "Secret {name} holds node {n}'s files and no other node's key"
        );
        for item in src["secret"]["items"].as_array().expect("items") {
            let key = item["key"].as_str().expect("key");
            let path = item["path"].as_str().expect("path");
            assert_eq!(path, format!("{n}/{key}"), "node {n}'s files under {n}/");
            let to = fake.path().join("all").join(path);
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            std::fs::write(&to, data[key].as_str().expect("text")).expect("write");
        }
    }
    let cmd: Vec<String> = strs(&init["command"])
        .into_iter()
        .map(|a| a.replace("$(BILLDB_NODE_ID)", "3"))
        .collect();
    assert_eq!(cmd[..3], ["/usr/bin/billdb", "cert", "install"]);
    let mut install = Command::new(cli_bin());
    install.args(["cert", "install"]).env("BILLDB_NODE_ID", "3");
    let mut args = cmd[3..].iter();
    while let Some(a) = args.next() {
        install.arg(a);
        if a == "--from" || a == "--out" {
            install.arg(relocate(args.next().expect("a path")));
        }
    }
    run(&mut install);
    let mut named = vec![
        tls.ca_file.clone(),
        tls.cert_file.clone(),
        tls.key_file.clone(),
        cfg.auth.tokens_file.clone().expect("tokens_file"),
    ];
    named.sort();
    let mut got: Vec<PathBuf> = std::fs::read_dir(fake.path().join("tls"))
        .expect("the init container's output")
        .map(|e| Path::new("/etc/billdb/tls").join(e.expect("entry").file_name()))
        .collect();
    got.sort();
    assert_eq!(
        got, named,
        "node 3's tls volume holds exactly the files its config names"
    );
    assert_eq!(
        std::fs::read_to_string(fake.path().join("tls/node3.key")).expect("key"),
        "REPLACE: secrets/node/3/node3.key"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(fake.path().join("tls/node3.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key copy is private: {mode:o}");
    }
    let client_secret = one(&objs, "Secret", tref["name"].as_str().expect("secret name"));
    let ckeys = client_secret["stringData"]
        .as_object()
        .expect("client secret data");
    assert!(ckeys.contains_key(tref["key"].as_str().expect("key")));

    // The bootstrap Job: init, idempotent, the five pods by peer DNS name.
    let job = objs
        .iter()
        .find(|o| o["kind"] == "Job")
        .expect("a bootstrap Job");
    assert_eq!(job["apiVersion"], "batch/v1");
    let jpod = &job["spec"]["template"]["spec"];
    assert!(matches!(
        jpod["restartPolicy"].as_str(),
        Some("OnFailure" | "Never")
    ));
    let cmd = strs(&jpod["containers"][0]["command"]);
    assert_eq!(&cmd[..3], ["/usr/bin/billdb", "cluster", "init"]);
    assert!(
        cmd.contains(&"--if-needed".to_string()),
        "a rerun is harmless"
    );
    let specs: Vec<&String> = cmd
        .iter()
        .zip(cmd.iter().skip(1))
        .filter(|(a, _)| *a == "--node")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(specs.len(), 5, "five voters");
    let ns = "billdb";
    let svc = spec["serviceName"].as_str().expect("serviceName");
    for (i, s) in specs.iter().enumerate() {
        let host = format!("billdb-{}.{svc}.{ns}.svc.cluster.local", i + 1);
        assert_eq!(
            **s,
            format!(
                "id={},raft={host}:7201,grpc={host}:7101,http={host}:7001",
                i + 1
            ),
            "voter {} is pod billdb-{} by its peer name",
            i + 1,
            i + 1
        );
    }
    for m in jpod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("job mounts")
    {
        let v = jpod["volumes"]
            .as_array()
            .expect("job volumes")
            .iter()
            .find(|v| v["name"] == m["name"])
            .expect("job mount has a volume");
        one(
            &objs,
            "Secret",
            v["secret"]["secretName"].as_str().expect("secret volume"),
        );
    }
}

fn refused_without_node_id(p: &Path) -> bool {
    let args = <billdb_node::config::Args as clap::Parser>::try_parse_from([
        "billdb-node".as_ref(),
        "--config".as_ref(),
        p.as_os_str(),
    ])
    .expect("args");
    // Only meaningful when the environment does not give the id either.
    std::env::var_os("BILLDB_NODE_ID").is_none()
        && billdb_node::config::Config::load(&args).is_err()
}

/// The Kubernetes version the manifests are written for (OPERATIONS.md:
/// "Kubernetes 1.31 or later": `ordinals.start` and the pod-index label).
const KUBERNETES_VERSION: &str = "1.31.0";

/// `kubernetes-validate --strict` (the Kubernetes OpenAPI schemas, bundled:
/// no API server, no network) on `files`: (passed, output).
fn schema_check(files: &[PathBuf]) -> (bool, String) {
    let env = std::env::var_os("BILLDB_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/billdb-pyenv"));
    let tool = env.join("bin/kubernetes-validate");
    assert!(
        tool.exists(),
        "{} is missing: run deploy/setup.sh (deploy/python-requirements.txt)",
        tool.display()
    );
    let out = output(
        Command::new(tool)
            .args(["--strict", "--no-warn", "-k", KUBERNETES_VERSION])
            .args(files),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn kubernetes_manifests_pass_the_kubernetes_schemas_strictly() {
    let _ = all_objects(); // every manifest listed and parsed
    let files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .expect("deploy/kubernetes")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    assert!(files.len() >= 7, "{files:?}");
    let (ok, text) = schema_check(&files);
    assert!(
        ok,
        "the manifests fail the Kubernetes {KUBERNETES_VERSION} schemas:\n{text}"
    );
    // Every object was checked against a schema (none skipped for an
    // unknown kind).
    let objects = all_objects().len();
    let passed = text.matches(" passed for resource ").count();
    assert_eq!(passed, objects, "{text}");

    // The check can fail: a field Kubernetes does not know, and a wrong type.
    let sts = std::fs::read_to_string(k8s_dir().join("statefulset.yaml")).expect("statefulset");
    let dir = tempfile::tempdir().expect("tempdir");
    for (what, bad) in [
        (
            "an unknown field",
            sts.replace("  podManagementPolicy:", "  podManagmentPolicy:"),
        ),
        ("a wrong type", sts.replace("replicas: 5", "replicas: five")),
    ] {
        assert_ne!(bad, sts, "{what}: the manifest changed");
        let p = dir.path().join("statefulset.yaml");
        std::fs::write(&p, bad).expect("write");
        let (ok, text) = schema_check(&[p]);
        assert!(!ok, "{what} was not caught:\n{text}");
    }
}

/// The NetworkPolicy the drill's kubectl executor applies for a partition
/// passes the Kubernetes schemas strictly and names this StatefulSet's pods
/// in this namespace (the executor's defaults are the manifests' names), so
/// `billdb drill run leader-isolated --executor kubectl` cuts the right
/// pods. Validated, not run: there is no Kubernetes here.
#[test]
fn the_drill_partition_policy_passes_the_schemas_and_selects_the_statefulsets_pods() {
    use billdb_client::drill::kubectl::KubectlExecutor;
    let objs = all_objects();
    let sts = objs
        .iter()
        .find(|o| o["kind"] == "StatefulSet")
        .expect("a StatefulSet");
    let ns = sts["metadata"]["namespace"].as_str().expect("namespace");
    let name = sts["metadata"]["name"].as_str().expect("name");
    let k = KubectlExecutor::new(ns, name).expect("executor");
    assert_eq!((ns, name), ("billdb", "billdb"), "the executor's defaults");
    let policy = k.policy(&[1, 2]).expect("policy");
    assert_eq!(policy["metadata"]["namespace"], ns);
    // Pod names: the StatefulSet's name and the ordinal, which counts
    // from ordinals.start = 1 and is the node id.
    let start = sts["spec"]["ordinals"]["start"].as_u64().unwrap_or(0);
    assert_eq!(start, 1, "node id = ordinal");
    assert_eq!(
        policy["spec"]["podSelector"]["matchExpressions"][0]["values"],
        serde_json::json!([format!("{name}-1"), format!("{name}-2")])
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("policy.yaml");
    std::fs::write(&p, serde_json::to_string_pretty(&policy).unwrap()).expect("write");
    let (ok, text) = schema_check(std::slice::from_ref(&p));
    assert!(ok, "{text}");
    assert!(text.contains(" passed for resource "), "{text}");
    // The check can fail here too.
    let mut bad = policy.clone();
    bad["spec"]["policyTypes"] = serde_json::json!("Ingress");
    std::fs::write(&p, serde_json::to_string_pretty(&bad).unwrap()).expect("write");
    let (ok, text) = schema_check(&[p]);
    assert!(!ok, "a wrong type was not caught:\n{text}");
}
