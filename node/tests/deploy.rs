//! The deployment files (`deploy/`) checked against the binary, and run.
//!
//! These machines cannot pull container images, so the tests run what the
//! manifests rely on with real processes instead: each pod or Compose
//! service is a `ringkv server` started with exactly its container's
//! command line and environment (`$(POD_NAME)` filled in as Kubernetes
//! does), in a network namespace of its own with its own address, on a
//! bridge, and with an `/etc/hosts` that gives every pod the DNS name the
//! manifests use (`ip netns exec` mounts `/etc/netns/NS/hosts` over
//! `/etc/hosts`). Only the data directory is moved to a temporary one.
//!
//! Namespaces need root and `ip` (iproute2). Without them the run tests
//! print SKIPPED with the reason, unless `RINGKV_REQUIRE_NETNS=1` (set by
//! `.ci/run` where it can make namespaces), which turns that into a
//! failure. The manifest checks run everywhere.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::netns::{Net, skip_unless_netns};
use common::{get, kv_path, poll, request, retry_read};
use serde_yaml_ng::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ringkv");
const READY: Duration = Duration::from_secs(60);

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Every YAML document in a file.
fn yaml_docs(path: &str) -> Vec<Value> {
    let text = fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            let v: Value =
                serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}"));
            // Compose's `<<: *anchor` merge keys, applied.
            let mut v = v;
            v.apply_merge()
                .unwrap_or_else(|e| panic!("{path}: merge keys: {e}"));
            v
        })
        .collect()
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        cur = match part.parse::<usize>() {
            Ok(i) => cur.get(i),
            Err(_) => cur.get(part),
        }
        .unwrap_or_else(|| panic!("no {path:?} (stopped at {part:?}) in {v:?}"));
    }
    cur
}

fn text(v: &Value, path: &str) -> String {
    match at(v, path) {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("{path} is not a scalar: {other:?}"),
    }
}

fn strings(v: &Value, path: &str) -> Vec<String> {
    at(v, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{path} is not a list"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

/// `ringkv server --help`: every flag and variable the server takes.
fn server_help() -> String {
    let out = Command::new(BIN)
        .args(["server", "--help"])
        .output()
        .expect("run ringkv server --help");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf-8 help")
}

fn port_of(listen: &str) -> u16 {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{listen:?} has no port"))
}

/// The StatefulSet's container, its command line and environment.
struct Container {
    args: Vec<String>,
    /// Plain values; `POD_NAME` (from the pod's name) is left out.
    env: BTreeMap<String, String>,
}

fn statefulset() -> (Value, Container) {
    let docs = yaml_docs("deploy/k8s/statefulset.yaml");
    let sts = docs
        .into_iter()
        .find(|d| text(d, "kind") == "StatefulSet")
        .expect("a StatefulSet");
    let c = at(&sts, "spec.template.spec.containers.0").clone();
    let mut env = BTreeMap::new();
    for e in at(&c, "env").as_sequence().expect("env list") {
        let name = text(e, "name");
        match e.get("value") {
            Some(_) => {
                env.insert(name, text(e, "value"));
            }
            None => {
                assert_eq!(name, "POD_NAME", "the only variable from the pod");
                assert_eq!(text(e, "valueFrom.fieldRef.fieldPath"), "metadata.name");
            }
        }
    }
    let args = strings(&c, "args");
    (sts, Container { args, env })
}

/// Kubernetes' `$(VAR)` in an argument, from the container's environment.
fn expand(arg: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("$({name})"), value);
    }
    assert!(!out.contains("$("), "unexpanded variable in {arg:?}");
    out
}

/// Every long flag in a command line and every RINGKV_* variable is one
/// the server takes.
fn assert_server_takes(args: &[String], env: &BTreeMap<String, String>) {
    let help = server_help();
    assert_eq!(args.first().map(String::as_str), Some("server"));
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        let name = flag.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{name} ")) || help.contains(&format!("{name}\n")),
            "ringkv server has no {name}"
        );
    }
    for var in env.keys().filter(|k| k.starts_with("RINGKV_")) {
        assert!(
            help.contains(&format!("[env: {var}=")),
            "ringkv server reads no {var}"
        );
    }
}

/// The Kubernetes manifests agree with each other and with the binary:
/// flags and variables the server takes, ports named as the probes and
/// Services use them and listened on as the environment says, founders
/// named by the headless Service's DNS names, probes on endpoints the
/// REST API serves.
#[test]
fn the_kubernetes_manifests_match_the_binary() {
    let (sts, c) = statefulset();
    assert_server_takes(&c.args, &c.env);
    assert_eq!(text(&sts, "spec.podManagementPolicy"), "Parallel");
    let service = text(&sts, "spec.serviceName");
    let labels = at(&sts, "spec.template.metadata.labels").clone();
    assert_eq!(at(&sts, "spec.selector.matchLabels"), &labels);

    // Ports: named, and where the listeners listen.
    let ports: BTreeMap<String, u16> = at(&sts, "spec.template.spec.containers.0.ports")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (text(p, "name"), text(p, "containerPort").parse().unwrap()))
        .collect();
    assert_eq!(ports["grpc"], port_of(&c.env["RINGKV_GRPC_LISTEN"]));
    assert_eq!(ports["http"], port_of(&c.env["RINGKV_REST_LISTEN"]));
    assert_eq!(ports["redis"], port_of(&c.env["RINGKV_RESP_LISTEN"]));

    // Founders: replicas = founders, pod ringkv-N is node N+1 at its
    // headless DNS name; joiners go through them.
    let name = text(&sts, "metadata.name");
    let replicas: usize = text(&sts, "spec.replicas").parse().unwrap();
    let founders: Vec<String> = (0..replicas)
        .map(|i| format!("{}={name}-{i}.{service}:{}", i + 1, ports["grpc"]))
        .collect();
    assert_eq!(c.env["RINGKV_PEERS"], founders.join(","));
    let join: Vec<String> = (0..replicas)
        .map(|i| format!("{name}-{i}.{service}:{}", ports["grpc"]))
        .collect();
    assert_eq!(c.env["RINGKV_JOIN"], join.join(","));
    assert!(c.args.contains(&"--id-from-hostname".to_owned()));
    let advertise = c.args.iter().position(|a| a == "--advertise").unwrap();
    assert_eq!(
        c.args[advertise + 1],
        format!("$(POD_NAME).{service}:{}", ports["grpc"])
    );

    // Probes: on the named REST port, at paths the node serves.
    let container = at(&sts, "spec.template.spec.containers.0");
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/livez"),
        ("startupProbe", "/livez"),
    ] {
        assert_eq!(text(container, &format!("{probe}.httpGet.path")), path);
        assert_eq!(text(container, &format!("{probe}.httpGet.port")), "http");
    }
    let mount = text(container, "volumeMounts.0.mountPath");
    assert_eq!(mount, c.env["RINGKV_DATA_DIR"]);
    assert_eq!(
        text(container, "volumeMounts.0.name"),
        text(&sts, "spec.volumeClaimTemplates.0.metadata.name")
    );
    // The pod's grace outlasts the node's leadership handover (5 s).
    let grace: u64 = text(&sts, "spec.template.spec.terminationGracePeriodSeconds")
        .parse()
        .unwrap();
    assert!(grace >= 10, "terminationGracePeriodSeconds {grace}");

    // Services: the headless one publishes not-ready pods and is the
    // StatefulSet's; both select its pods and target its named ports.
    let services = yaml_docs("deploy/k8s/services.yaml");
    let headless = services
        .iter()
        .find(|s| text(s, "metadata.name") == service)
        .expect("the headless Service");
    assert_eq!(text(headless, "spec.clusterIP"), "None");
    assert_eq!(text(headless, "spec.publishNotReadyAddresses"), "true");
    for s in &services {
        assert_eq!(text(s, "kind"), "Service");
        assert_eq!(at(s, "spec.selector"), &labels);
        for p in at(s, "spec.ports").as_sequence().unwrap() {
            let target = text(p, "targetPort");
            assert!(ports.contains_key(&target), "no container port {target}");
            assert_eq!(text(p, "port").parse::<u16>().unwrap(), ports[&target]);
        }
    }
    let pdb = &yaml_docs("deploy/k8s/pdb.yaml")[0];
    assert_eq!(text(pdb, "kind"), "PodDisruptionBudget");
    assert_eq!(text(pdb, "spec.maxUnavailable"), "1");
    assert_eq!(at(pdb, "spec.selector.matchLabels"), &labels);
    let kustomization = &yaml_docs("deploy/k8s/kustomization.yaml")[0];
    let listed: BTreeSet<String> = strings(kustomization, "resources").into_iter().collect();
    let files: BTreeSet<String> = fs::read_dir(repo_file("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");
}

/// The Dockerfile and the Compose file agree with the binary: exposed
/// ports are the listeners', the health check is a command the binary has,
/// every service's command line and environment are ones the server takes.
#[test]
fn the_dockerfile_and_compose_file_match_the_binary() {
    let dockerfile = fs::read_to_string(repo_file("deploy/Dockerfile")).unwrap();
    let env: BTreeMap<String, String> = dockerfile
        .lines()
        .map(str::trim)
        .map(|l| l.trim_start_matches("ENV ").trim_end_matches('\\').trim())
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("RINGKV_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let expose: BTreeSet<u16> = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let listens: BTreeSet<u16> = [
        "RINGKV_GRPC_LISTEN",
        "RINGKV_REST_LISTEN",
        "RINGKV_RESP_LISTEN",
    ]
    .iter()
    .map(|k| port_of(&env[*k]))
    .collect();
    assert_eq!(expose, listens);
    assert!(dockerfile.contains("USER 10001"), "runs as a non-root user");
    assert!(dockerfile.contains("VOLUME [\"/var/lib/ringkv\"]"));
    assert_eq!(env["RINGKV_DATA_DIR"], "/var/lib/ringkv");
    // The health check: the binary's own `health` command, on the REST port.
    let check = dockerfile
        .lines()
        .find(|l| l.trim_start().starts_with("CMD [\"ringkv\", \"health\""))
        .expect("HEALTHCHECK CMD ringkv health");
    assert!(check.contains(&format!(
        "127.0.0.1:{}",
        port_of(&env["RINGKV_REST_LISTEN"])
    )));
    let out = Command::new(BIN)
        .args(["health", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());

    let compose = &yaml_docs("deploy/compose.yaml")[0];
    let services = at(compose, "services").as_mapping().unwrap();
    assert_eq!(services.len(), 5, "a 5-node cluster");
    for (name, s) in services {
        let name = name.as_str().unwrap();
        let mut args = strings(s, "command");
        let env = compose_env(s);
        assert_server_takes(&args, &env);
        assert_eq!(text(s, "hostname"), name);
        args.retain(|a| a.contains(name));
        assert_eq!(
            args,
            [format!("{name}:9091")],
            "{name} advertises its own name"
        );
    }
    let published = strings(&services[&Value::from("ringkv-0")], "ports");
    for port in listens {
        assert!(
            published
                .iter()
                .any(|p| p.ends_with(&format!(":{port}:{port}"))),
            "ringkv-0 publishes {port}"
        );
    }
}

fn compose_env(service: &Value) -> BTreeMap<String, String> {
    at(service, "environment")
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), text(v, "")))
        .collect()
}

/// Processes in the namespaces, by host name; killed on drop, with their
/// logs' tails printed when a test panics.
struct Pods {
    dir: tempfile::TempDir,
    running: BTreeMap<String, Child>,
}

impl Pods {
    fn new() -> Pods {
        Pods {
            dir: tempfile::tempdir().unwrap(),
            running: BTreeMap::new(),
        }
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("data")
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name).join("log")).unwrap_or_default()
    }

    /// Runs `args` (after `ringkv`) in `name`'s namespace with `env` (and
    /// nothing else of this process's environment), as a container would.
    fn start(&mut self, net: &Net, name: &str, args: &[String], env: &BTreeMap<String, String>) {
        let home = self.dir.path().join(name);
        fs::create_dir_all(&home).unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", net.ns(name), BIN])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOSTNAME", name)
            .envs(env)
            .env("RINGKV_DATA_DIR", self.data_dir(name))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a pod");
        self.running.insert(name.to_owned(), child);
    }

    /// SIGTERM, as the kubelet stops a container; its exit status.
    fn terminate(&mut self, name: &str) -> std::process::ExitStatus {
        let mut child = self.running.remove(name).expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{name} did not stop on SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for child in self.running.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            for name in self.running.keys() {
                let log = self.log(name);
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- {name} (last lines) ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn wait_ready(rest: SocketAddr, what: &str) {
    poll(READY, &format!("{what} ready"), || {
        get(rest, "/readyz").ok().filter(|r| r.status == 200)
    });
}

fn members(rest: SocketAddr) -> Vec<serde_json::Value> {
    let r = get(rest, "/v1/cluster/members").expect("members");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["members"].as_array().cloned().unwrap_or_default()
}

fn member_state(rest: SocketAddr, id: u64) -> Option<String> {
    members(rest)
        .iter()
        .find(|m| m["id"] == id)
        .and_then(|m| m["state"].as_str().map(str::to_owned))
}

fn put_key(rest: SocketAddr, key: &str, value: &str) {
    let r = common::retry_write(Duration::from_secs(20), || {
        request(rest, "PUT", &kv_path(key, None), &[], value.as_bytes())
    });
    assert!(r.is_success(), "put {key}: {} {}", r.status, r.text());
}

/// The StatefulSet, run: three pods found the cluster by their DNS names;
/// a fourth joins (scale up); a pod comes back at a new address and is
/// reached by its name; a rolling restart under writes (SIGTERM, as the
/// kubelet does) loses nothing and refuses nothing; the fourth is drained
/// with `ringkv node drain` and stopped (scale down), then comes back with
/// an empty volume under the same ordinal (scale up again) and is a member
/// again. Every acknowledged write is read back from every pod.
#[test]
fn statefulset_pods_form_scale_restart_and_move_by_name() {
    if skip_unless_netns("statefulset_pods_form_scale_restart_and_move_by_name") {
        return;
    }
    let (sts, c) = statefulset();
    let service = text(&sts, "spec.serviceName");
    let mut net = Net::new(0);
    let pod = |i: usize| format!("ringkv-{i}");
    for i in 0..4 {
        net.add_host(&format!("{}.{service}", pod(i)), i as u8 + 1);
    }
    let mut pods = Pods::new();
    let rest_port = port_of(&c.env["RINGKV_REST_LISTEN"]);
    let grpc_port = port_of(&c.env["RINGKV_GRPC_LISTEN"]);
    // A pod's DNS name (its namespace here) and its host name.
    let host = |i: usize| format!("{}.{service}", pod(i));
    let start_pod = |pods: &mut Pods, net: &Net, i: usize| {
        let mut vars = c.env.clone();
        vars.insert("POD_NAME".into(), pod(i));
        let args: Vec<String> = c.args.iter().map(|a| expand(a, &vars)).collect();
        vars.remove("POD_NAME");
        vars.insert("HOSTNAME".into(), pod(i));
        pods.start(net, &host(i), &args, &vars);
    };
    let rest = |net: &Net, i: usize| SocketAddr::from((net.ip_of(&host(i)), rest_port));

    let began = Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1} s  {what}", began.elapsed().as_secs_f64());
    // Three founders.
    for i in 0..3 {
        start_pod(&mut pods, &net, i);
    }
    for i in 0..3 {
        wait_ready(rest(&net, i), &pod(i));
    }
    // Members are known by name: peers dial it, clients are sent to it
    // (each node registers its client addresses once it runs).
    let listed = poll(READY, "client addresses registered", || {
        let m = members(rest(&net, 0));
        m.iter().all(|m| m["rest_addr"].is_string()).then_some(m)
    });
    for i in 0..3 {
        let m = listed
            .iter()
            .find(|m| m["id"] == i as u64 + 1)
            .expect("a founder");
        assert_eq!(m["grpc_addr"], format!("{}:{grpc_port}", host(i)));
        assert_eq!(m["rest_addr"], format!("{}:{rest_port}", host(i)));
    }
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    for k in 0..30 {
        let (key, value) = (format!("sts-a{k}"), format!("v{k}"));
        put_key(rest(&net, k % 3), &key, &value);
        acked.insert(key, value);
    }

    phase("founders ready, 30 keys written");
    // Scale up: ringkv-3 is node 4, not a founder: it joins by name.
    start_pod(&mut pods, &net, 3);
    poll(READY, "node 4 up", || {
        (member_state(rest(&net, 0), 4).as_deref() == Some("up")).then_some(())
    });
    wait_ready(rest(&net, 3), &pod(3));
    assert!(pods.log(&host(3)).contains("joining the cluster"));

    phase("ringkv-3 joined and ready");
    // ringkv-2 comes back at another address: its peers reach it by name.
    assert!(pods.terminate(&host(2)).success());
    net.readdress(&host(2), 23);
    start_pod(&mut pods, &net, 2);
    wait_ready(rest(&net, 2), "ringkv-2 at its new address");
    for k in 0..30 {
        let (key, value) = (format!("sts-b{k}"), format!("v{k}"));
        put_key(rest(&net, 0), &key, &value);
        acked.insert(key, value);
    }
    // Every key reaches ringkv-2's replicas: stale reads there show them
    // once the leaders (mostly elsewhere) have sent them to its new address.
    let held_by_2 = poll(READY, "ringkv-2 to catch up by name", || {
        let mut n = 0;
        for key in acked.keys() {
            let r = get(rest(&net, 2), &kv_path(key, Some("stale"))).ok()?;
            match r.status {
                200 => n += 1,
                // Not a replica of that key's partition: forwarded. Fine.
                _ => return None,
            }
        }
        Some(n)
    });
    assert_eq!(held_by_2, acked.len());

    phase("ringkv-2 caught up at its new address");
    // A rolling restart under writes, highest ordinal first (as the
    // StatefulSet controller does), each pod ready before the next.
    let rests: Vec<SocketAddr> = (0..4).map(|i| rest(&net, i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let avoid = Arc::new(AtomicU64::new(u64::MAX));
    let seen = Arc::new(Mutex::new((BTreeMap::new(), 0u64, Vec::<String>::new())));
    let writer = {
        let (stop, avoid, seen, rests) = (stop.clone(), avoid.clone(), seen.clone(), rests.clone());
        thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("sts-roll{i}");
                loop {
                    let skip = avoid.load(Ordering::Relaxed);
                    let via = (0..4u64)
                        .cycle()
                        .skip(i as usize % 4)
                        .find(|&n| n != skip)
                        .unwrap();
                    match request(rests[via as usize], "PUT", &kv_path(&key, None), &[], b"r") {
                        Ok(r) if r.is_success() => {
                            seen.lock().unwrap().0.insert(key.clone(), "r".to_owned());
                            break;
                        }
                        Ok(r) if r.status == 503 => {
                            seen.lock().unwrap().1 += 1;
                            thread::sleep(Duration::from_millis(50));
                        }
                        Ok(r) => {
                            seen.lock()
                                .unwrap()
                                .2
                                .push(format!("{}: {}", r.status, r.text()));
                            break;
                        }
                        Err(e) => {
                            seen.lock().unwrap().2.push(format!("in transit: {e}"));
                            break;
                        }
                    }
                }
                i += 1;
            }
        })
    };
    for i in (0..4).rev() {
        avoid.store(i as u64, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(300));
        let status = pods.terminate(&host(i));
        assert!(status.success(), "{} exited {status}", pod(i));
        start_pod(&mut pods, &net, i);
        wait_ready(rest(&net, i), &pod(i));
        avoid.store(u64::MAX, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let (rolled, no_leader, errors) = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!(
        "rolling restart: {} writes acknowledged, {no_leader} retried no_leader, {} errors",
        rolled.len(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "writes failed during the rolling restart: {errors:?}"
    );
    assert!(rolled.len() > 20, "the writer wrote: {}", rolled.len());
    acked.extend(rolled);

    phase("rolling restart done");
    // Scale down: drain the highest ordinal with the CLI, then stop it.
    // As `kubectl exec ringkv-0 -- ringkv node drain 4` does: in a pod,
    // where the members' names resolve (the CLI follows the controller).
    let drained = Command::new("ip")
        .args(["netns", "exec", net.ns(&host(0)), BIN])
        .args(["node", "drain", "4", "--wait", "90s", "--endpoints"])
        .arg(format!("127.0.0.1:{grpc_port}"))
        .output()
        .unwrap();
    assert!(
        drained.status.success(),
        "ringkv node drain 4: {}{}",
        String::from_utf8_lossy(&drained.stdout),
        String::from_utf8_lossy(&drained.stderr)
    );
    assert_eq!(member_state(rest(&net, 0), 4).as_deref(), Some("removed"));
    assert!(pods.terminate(&host(3)).success());
    phase("node 4 drained and stopped");
    // Its volume deleted, the ordinal scaled up again: an empty data
    // directory under the same id is a new member.
    fs::remove_dir_all(pods.data_dir(&host(3))).unwrap();
    start_pod(&mut pods, &net, 3);
    poll(READY, "node 4 up again", || {
        (member_state(rest(&net, 0), 4).as_deref() == Some("up")).then_some(())
    });
    // It is given replicas again (rebalancing), and catches them up.
    let held = poll(READY, "node 4 to hold replicas again", || {
        let st = get(rest(&net, 3), "/v1/cluster/status").ok()?.json();
        let n = st["partitions"]
            .as_array()?
            .iter()
            // (A leader is known only where this node holds a replica.)
            .filter(|p| p["leader"].is_u64() && p["applied_index"].as_u64() > Some(0))
            .filter(|p| {
                p["replicas"]
                    .as_array()
                    .is_some_and(|r| r.contains(&4.into()))
            })
            .count();
        (n > 0).then_some(n)
    });
    wait_ready(rest(&net, 3), "ringkv-3 again");
    eprintln!("node 4 holds {held} replicas again");

    phase("node 4 back with an empty volume");
    // Nothing acknowledged is lost, read through every pod.
    for i in 0..4 {
        for (key, value) in &acked {
            let r = retry_read(Duration::from_secs(20), || {
                get(rest(&net, i), &kv_path(key, None))
            });
            assert_eq!(r.status, 200, "{key} via {}: {}", pod(i), r.text());
            assert_eq!(&r.text(), value, "{key} via {}", pod(i));
        }
    }
    eprintln!("{} keys read back through each of 4 pods", acked.len());
}

/// The Compose file, run: five services with its command lines and
/// environment, each its own host named as the service; they form a
/// cluster of five by name (three founders, two joiners) and serve
/// through the first one's ports.
#[test]
fn the_compose_cluster_forms_itself_by_service_name() {
    if skip_unless_netns("the_compose_cluster_forms_itself_by_service_name") {
        return;
    }
    let compose = &yaml_docs("deploy/compose.yaml")[0];
    let services = at(compose, "services").as_mapping().unwrap().clone();
    let mut net = Net::new(1);
    for (i, name) in services.keys().enumerate() {
        net.add_host(name.as_str().unwrap(), i as u8 + 1);
    }
    let mut pods = Pods::new();
    for (name, s) in &services {
        let name = name.as_str().unwrap();
        let mut env = compose_env(s);
        env.insert("HOSTNAME".into(), text(s, "hostname"));
        pods.start(&net, name, &strings(s, "command"), &env);
    }
    let rest_port =
        port_of(&compose_env(&services[&Value::from("ringkv-0")])["RINGKV_REST_LISTEN"]);
    let rest = |name: &str| SocketAddr::from((net.ip_of(name), rest_port));
    wait_ready(rest("ringkv-0"), "ringkv-0");
    poll(READY, "five members up", || {
        let m = members(rest("ringkv-0"));
        (m.len() == 5 && m.iter().all(|m| m["state"] == "up")).then_some(())
    });
    for name in services.keys() {
        wait_ready(rest(name.as_str().unwrap()), name.as_str().unwrap());
    }
    let by_name: BTreeSet<String> = members(rest("ringkv-0"))
        .iter()
        .map(|m| m["grpc_addr"].as_str().unwrap().to_owned())
        .collect();
    let want: BTreeSet<String> = (0..5).map(|i| format!("ringkv-{i}:9091")).collect();
    assert_eq!(by_name, want);
    put_key(rest("ringkv-0"), "compose", "works");
    let r = retry_read(Duration::from_secs(20), || {
        get(rest("ringkv-4"), &kv_path("compose", None))
    });
    assert_eq!((r.status, r.text()), (200, "works".to_owned()));
}
