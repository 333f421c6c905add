//! Tests of the client commands: argument parsing, rendering, and the retry
//! and failover policy against an in-process fake `ringkv.v1.Kv` server.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use clap::Parser;

use super::*;
use crate::cli::exit;
use crate::cli::fake_grpc::{FakeNode, Scripted, dead_addr, sample_status, serve};

#[derive(clap::Parser, Debug)]
enum Cmd {
    Put(PutArgs),
    Get(GetArgs),
    Del(DelArgs),
    Ls(LsArgs),
    Status(StatusArgs),
    Locate(LocateArgs),
}

fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
    Cmd::try_parse_from(std::iter::once("ringkv").chain(args.iter().copied()))
}

#[test]
fn put_flags_parse_into_one_precondition() {
    let Ok(Cmd::Put(a)) = parse(&["put", "k", "v", "--if-match", "17", "--timeout", "250ms"])
    else {
        panic!("put did not parse");
    };
    assert_eq!(a.value.as_deref(), Some("v"));
    assert_eq!(a.opts.timeout, Duration::from_millis(250));
    assert_eq!(
        put_precondition(&a),
        Some(Precondition {
            kind: Some(precondition::Kind::ModRevision(17))
        })
    );
    let Ok(Cmd::Put(a)) = parse(&["put", "k", "--if-none-match-star"]) else {
        panic!("put --if-none-match-star did not parse");
    };
    assert_eq!(a.value, None);
    assert_eq!(
        put_precondition(&a).and_then(|p| p.kind),
        Some(precondition::Kind::MustNotExist(true))
    );
    let Ok(Cmd::Put(a)) = parse(&["put", "k", "v", "--if-exists"]) else {
        panic!("put --if-exists did not parse");
    };
    assert_eq!(
        put_precondition(&a).and_then(|p| p.kind),
        Some(precondition::Kind::MustExist(true))
    );
    // Two preconditions at once are a usage error.
    let err = parse(&["put", "k", "v", "--create", "--if-match", "3"]).unwrap_err();
    assert_eq!(err.exit_code(), i32::from(exit::USAGE));
}

#[test]
fn client_options_have_documented_defaults_and_validation() {
    let Ok(Cmd::Get(a)) = parse(&["get", "k"]) else {
        panic!("get did not parse");
    };
    assert_eq!(
        a.opts.endpoints,
        [
            "http://127.0.0.1:9091",
            "http://127.0.0.1:9092",
            "http://127.0.0.1:9093"
        ]
    );
    assert_eq!(a.opts.output, OutputFormat::Table);
    assert_eq!(a.opts.timeout, Duration::from_secs(10));
    assert_eq!(a.consistency, Consistency::Linearizable);

    let Ok(Cmd::Get(a)) = parse(&[
        "get",
        "k",
        "--endpoints",
        "a:1,b:2",
        "-o",
        "json",
        "--consistency",
        "stale",
    ]) else {
        panic!("get with options did not parse");
    };
    assert_eq!(a.opts.endpoints, ["http://a:1", "http://b:2"]);
    assert_eq!(a.opts.output, OutputFormat::Json);
    assert_eq!(a.consistency, Consistency::Stale);

    for bad in [
        &["get", "k", "--timeout", "10"][..],
        &["get", "k", "--endpoints", "nohost"],
        &["get", "k", "--raw", "-o", "json"],
        &["del", "k", "--if-match", "x"],
    ] {
        let err = parse(bad).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE), "{bad:?}");
    }
}

#[test]
fn get_output_prints_value_or_envelope() {
    let kv = KeyValue {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"hello"),
        version: 2,
        create_revision: 5,
        mod_revision: 9,
        expires_at_unix_ms: 0,
    };
    assert_eq!(render_get(OutputFormat::Table, false, &kv), b"hello\n");
    assert_eq!(render_get(OutputFormat::Table, true, &kv), b"hello");
    assert_eq!(
        String::from_utf8(render_get(OutputFormat::Json, false, &kv)).unwrap(),
        r#"{"key":"k","value":"hello","value_encoding":"utf8","version":2,"create_revision":5,"mod_revision":9}"#
            .to_owned()
            + "\n"
    );
    let binary = KeyValue {
        value: Bytes::from_static(&[0xff, 0x00, 0x01]),
        ..kv
    };
    let json: serde_json::Value =
        serde_json::from_slice(&render_get(OutputFormat::Json, false, &binary)).unwrap();
    assert_eq!(json["value"], "/wAB");
    assert_eq!(json["value_encoding"], "base64");
}

#[test]
fn write_and_locate_output() {
    let put = PutResponse {
        version: 1,
        mod_revision: 17,
        created: true,
        previous: None,
    };
    assert_eq!(
        render_put(OutputFormat::Table, "k", &put),
        "created       true\nversion       1\nmod_revision  17\n"
    );
    assert_eq!(
        render_put(OutputFormat::Json, "k", &put),
        "{\"key\":\"k\",\"created\":true,\"version\":1,\"mod_revision\":17}\n"
    );
    let del = DeleteResponse {
        revision: 42,
        previous: None,
    };
    assert_eq!(render_del(OutputFormat::Table, "k", &del), "revision  42\n");
    assert_eq!(
        render_del(OutputFormat::Json, "k", &del),
        "{\"key\":\"k\",\"revision\":42}\n"
    );
    let loc = LocateResponse {
        partition: 119,
        leader: 0,
        replicas: vec![1, 2, 3],
        slot: 7629,
    };
    assert_eq!(
        render_locate(OutputFormat::Table, "k", &loc),
        "slot       7629\npartition  119\nleader     -\nreplicas   1,2,3\n"
    );
    assert_eq!(
        render_locate(OutputFormat::Json, "k", &loc),
        "{\"key\":\"k\",\"slot\":7629,\"partition\":119,\"leader\":null,\"replicas\":[1,2,3]}\n"
    );
}

#[test]
fn status_table_and_json() {
    let s = sample_status();
    insta::assert_snapshot!("status_table", render_status(OutputFormat::Table, true, &s));
    insta::assert_snapshot!("status_json", render_status(OutputFormat::Json, false, &s));
}

fn opts(addrs: &[SocketAddr]) -> ClientOpts {
    ClientOpts {
        endpoints: addrs.iter().map(|a| format!("http://{a}")).collect(),
        output: OutputFormat::Table,
        timeout: Duration::from_secs(5),
    }
}

fn put_args(opts: &ClientOpts, key: &str, value: &str) -> PutArgs {
    PutArgs {
        opts: opts.clone(),
        key: key.into(),
        value: Some(value.into()),
        if_match: None,
        create: false,
        if_exists: false,
        ttl: None,
        keep_ttl: false,
    }
}

fn get_args(opts: &ClientOpts, key: &str) -> GetArgs {
    GetArgs {
        opts: opts.clone(),
        key: key.into(),
        consistency: Consistency::Linearizable,
        raw: false,
    }
}

/// `ls` pages through every key under its prefix in order, stops at
/// `--limit`, prints one key per line (or a JSON object per key), and
/// parses its flags.
#[tokio::test]
async fn ls_pages_through_a_prefix_in_order_and_stops_at_its_limit() {
    let node = FakeNode::default();
    let opts = opts(&[serve(node.clone()).await]);
    for i in (0..2500).rev() {
        execute_put(&put_args(&opts, &format!("a/{i:04}"), "v"))
            .await
            .unwrap();
    }
    execute_put(&put_args(&opts, "b", "v")).await.unwrap();
    let Ok(Cmd::Ls(mut a)) = parse(&["ls", "a/"]) else {
        panic!("ls did not parse");
    };
    assert_eq!((a.limit, a.values), (None, false));
    a.opts = opts.clone();
    let mut pages = Vec::new();
    let listed = execute_ls(&a, |kvs| pages.push(kvs.to_vec()))
        .await
        .unwrap();
    assert_eq!(listed, 2500);
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [1000, 1000, 500]
    );
    let keys: Vec<Bytes> = pages.iter().flatten().map(|kv| kv.key.clone()).collect();
    let expected: Vec<Bytes> = (0..2500)
        .map(|i| Bytes::from(format!("a/{i:04}")))
        .collect();
    assert_eq!(keys, expected);

    let Ok(Cmd::Ls(mut a)) = parse(&["ls", "--limit", "1500", "--values", "-o", "json"]) else {
        panic!("ls --limit did not parse");
    };
    a.opts = ClientOpts {
        output: a.opts.output,
        ..opts.clone()
    };
    assert_eq!(a.opts.output, OutputFormat::Json);
    let mut sizes = Vec::new();
    let mut out = Vec::new();
    let listed = execute_ls(&a, |kvs| {
        sizes.push(kvs.len());
        out.extend(render_ls(a.opts.output, a.values, kvs));
    })
    .await
    .unwrap();
    assert_eq!((listed, sizes), (1500, vec![1000, 500]));
    let first = String::from_utf8(out).unwrap();
    let first = first.lines().next().unwrap();
    let j: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(
        (j["key"].as_str(), j["value"].as_str()),
        (Some("a/0000"), Some("v"))
    );

    let table = render_ls(OutputFormat::Table, false, &pages[2][..2]);
    assert_eq!(table, b"a/2000\na/2001\n");
}

#[tokio::test]
async fn commands_fail_over_past_a_refused_endpoint() {
    let node = FakeNode::default();
    let opts = opts(&[dead_addr(), serve(node.clone()).await]);

    let put = execute_put(&put_args(&opts, "k", "v1")).await.unwrap();
    assert_eq!((put.created, put.version, put.mod_revision), (true, 1, 1));
    let kv = execute_get(&get_args(&opts, "k")).await.unwrap();
    assert_eq!(kv.value, "v1");

    let create_again = PutArgs {
        create: true,
        ..put_args(&opts, "k", "v2")
    };
    let failure = execute_put(&create_again).await.unwrap_err();
    assert_eq!(failure.code, ErrorCode::PreconditionFailed);
    assert_eq!(failure.exit, exit::PRECONDITION_FAILED);
    assert_eq!(failure.current_mod_revision, Some(1));

    let cas = PutArgs {
        if_match: Some(1),
        ..put_args(&opts, "k", "v2")
    };
    assert_eq!(execute_put(&cas).await.unwrap().version, 2);

    let del = DelArgs {
        opts: opts.clone(),
        key: "k".into(),
        if_match: None,
    };
    assert_eq!(execute_del(&del).await.unwrap().revision, 3);
    let failure = execute_get(&get_args(&opts, "k")).await.unwrap_err();
    assert_eq!(
        (failure.code, failure.exit),
        (ErrorCode::NotFound, exit::NOT_FOUND)
    );

    let status = StatusArgs {
        opts: opts.clone(),
        partitions: false,
    };
    assert_eq!(execute_status(&status).await.unwrap().node_id, 1);
    let locate = LocateArgs {
        opts: opts.clone(),
        key: "k".into(),
    };
    assert_eq!(execute_locate(&locate).await.unwrap().leader, 2);
}

#[tokio::test]
async fn no_endpoint_reachable_is_unavailable() {
    let opts = opts(&[dead_addr(), dead_addr()]);
    let failure = execute_put(&put_args(&opts, "k", "v")).await.unwrap_err();
    assert_eq!(failure.code, ErrorCode::Unreachable);
    assert_eq!(failure.exit, exit::UNAVAILABLE);
}

#[tokio::test]
async fn no_leader_is_retried_then_succeeds() {
    let node = FakeNode::default();
    node.state.lock().unwrap().script.extend([
        Scripted::Fail(tonic::Code::Unavailable, "no_leader"),
        Scripted::Fail(tonic::Code::Unavailable, "busy"),
    ]);
    let opts = opts(&[serve(node.clone()).await]);
    let put = execute_put(&put_args(&opts, "k", "v")).await.unwrap();
    assert!(put.created);
    assert_eq!(node.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn no_leader_gives_up_after_the_retries() {
    let node = FakeNode::default();
    node.state
        .lock()
        .unwrap()
        .script
        .extend([Scripted::Fail(tonic::Code::Unavailable, "no_leader"); 10]);
    let opts = opts(&[serve(node.clone()).await]);
    let failure = execute_get(&get_args(&opts, "k")).await.unwrap_err();
    assert_eq!(
        (failure.code, failure.exit),
        (ErrorCode::NoLeader, exit::UNAVAILABLE)
    );
    assert_eq!(
        node.requests.load(Ordering::SeqCst),
        1 + RETRY_BACKOFF.len()
    );
}

#[tokio::test]
async fn a_write_with_unknown_outcome_is_never_resent() {
    let node = FakeNode::default();
    let other = FakeNode::default();
    node.state.lock().unwrap().script.push_back(Scripted::Fail(
        tonic::Code::DeadlineExceeded,
        "timeout_outcome_unknown",
    ));
    let opts = opts(&[serve(node.clone()).await, serve(other.clone()).await]);
    let failure = execute_put(&put_args(&opts, "k", "v")).await.unwrap_err();
    assert_eq!(failure.code, ErrorCode::TimeoutOutcomeUnknown);
    assert_eq!(failure.exit, exit::OUTCOME_UNKNOWN);
    assert_eq!(node.requests.load(Ordering::SeqCst), 1);
    assert_eq!(other.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_write_without_answer_times_out_as_outcome_unknown() {
    let node = FakeNode::default();
    node.state.lock().unwrap().script.push_back(Scripted::Hang);
    let mut opts = opts(&[serve(node.clone()).await]);
    opts.timeout = Duration::from_millis(200);
    let failure = execute_put(&put_args(&opts, "k", "v")).await.unwrap_err();
    assert_eq!(failure.code, ErrorCode::ClientTimeout);
    assert_eq!(failure.exit, exit::OUTCOME_UNKNOWN);
    assert_eq!(node.requests.load(Ordering::SeqCst), 1);
}

/// `ringkv status` exits 8 exactly when the answer shows the cluster
/// degraded; each reason alone is enough.
#[test]
fn the_status_verdict_names_each_degradation() {
    let mut s = sample_status();
    // Healthy: every member up and heard, every partition led, no moves.
    for n in &mut s.nodes {
        if n.health == "down" {
            n.health = "up".to_owned();
        }
    }
    for p in &mut s.partitions {
        p.leader = p.leader.max(1);
        p.under_replicated = false;
    }
    s.moves.clear();
    s.under_replicated.clear();
    assert_eq!(degraded(&s), Vec::<String>::new());

    let mut down = s.clone();
    down.nodes[2].health = "down".to_owned();
    assert_eq!(degraded(&down), ["node 3 is down"]);
    let mut dead = down.clone();
    dead.nodes[2].state = "dead".to_owned();
    assert_eq!(degraded(&dead), ["node 3 is dead"]);
    let mut removed = down.clone();
    removed.nodes[2].state = "removed".to_owned();
    assert_eq!(degraded(&removed), Vec::<String>::new());
    let mut joining = s.clone();
    joining.nodes[1].state = "joining".to_owned();
    assert_eq!(degraded(&joining), ["node 2 is joining"]);
    let mut moving = s.clone();
    moving.under_replicated = vec![3];
    assert_eq!(degraded(&moving), ["1 under-replicated partition(s)"]);
    moving.controller = false;
    assert_eq!(
        degraded(&moving),
        Vec::<String>::new(),
        "only the controller knows"
    );
    // A partition the node does not replicate (no term) has no known
    // leader there, and that is no degradation; one it replicates is.
    let mut elsewhere = s.clone();
    elsewhere.partitions[3].leader = 0;
    elsewhere.partitions[3].term = 0;
    assert_eq!(degraded(&elsewhere), Vec::<String>::new());
    elsewhere.partitions[3].term = 4;
    assert_eq!(
        degraded(&elsewhere),
        ["1 partition(s) node 1 replicates have no leader"]
    );
    let mut unformed = s.clone();
    unformed.cluster_uid.clear();
    assert_eq!(degraded(&unformed), ["node 1 is not in a cluster yet"]);
}
