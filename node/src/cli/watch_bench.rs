//! `ringkv bench-watch`: watch fan-out. Many watchers follow one prefix
//! over gRPC `Kv.Watch` while writers put keys under it at a target rate;
//! prints the writes achieved, the changes delivered, and the delivery
//! latency (from the write being sent to a watcher receiving its change,
//! on this machine's clock: run it on the cluster's machine or one whose
//! clock agrees).
//!
//! Each value starts with the time its write was sent (8 bytes, Unix
//! nanoseconds), padded to `--value-size`. Watchers attach before the first
//! write; the writers then send at `--rate` writes a second in total
//! (each writer its share, on a fixed schedule: a writer that falls behind
//! sends at once, so the rate is what the cluster sustains if lower) for
//! `--duration`; the watchers then get `--drain` to receive the rest.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use ringkv_proto::v1::{PutRequest, WatchRequest, watch_request};
use tonic::transport::{Channel, Endpoint};

use super::{parse_duration, parse_endpoint};

/// Watch streams per gRPC connection (HTTP/2 servers cap concurrent
/// streams per connection, often at 100-200).
const WATCHERS_PER_CONNECTION: usize = 50;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchWatchArgs {
    /// gRPC endpoints; watchers and writers are spread over them.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_endpoint,
        default_value = "127.0.0.1:9091,127.0.0.1:9092,127.0.0.1:9093"
    )]
    pub endpoints: Vec<String>,
    /// Watchers of the prefix.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub watchers: u32,
    /// Writes per second, in total.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Concurrent writers sharing the rate.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub writers: u32,
    /// How long the writers write.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long the watchers may take to receive the last changes.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Distinct keys written (under the prefix).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes per value (at least 8: the send time).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..))]
    pub value_size: u64,
    /// The prefix written and watched.
    #[arg(long, default_value = "fanout/")]
    pub prefix: String,
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures are valid")
}

pub async fn run(a: BenchWatchArgs) -> ExitCode {
    match measure(&a).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::error_chain(e.as_ref()));
            ExitCode::from(super::exit::UNAVAILABLE)
        }
    }
}

async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(endpoint.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    Ok(super::tls::connect(endpoint).await?)
}

async fn measure(a: &BenchWatchArgs) -> anyhow::Result<()> {
    let prefix = Bytes::from(a.prefix.clone().into_bytes());
    let delivered = Arc::new(AtomicU64::new(0));
    let attached = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());

    // Watchers.
    let mut channels = Vec::new();
    let connections = (a.watchers as usize).div_ceil(WATCHERS_PER_CONNECTION);
    for c in 0..connections {
        channels.push(connect(&a.endpoints[c % a.endpoints.len()]).await?);
    }
    let mut watchers = Vec::new();
    for w in 0..a.watchers as usize {
        let channel = channels[w / WATCHERS_PER_CONNECTION].clone();
        let (prefix, delivered, attached, stop) = (
            prefix.clone(),
            delivered.clone(),
            attached.clone(),
            stop.clone(),
        );
        watchers.push(tokio::spawn(async move {
            let mut latency = histogram();
            let request = WatchRequest {
                target: Some(watch_request::Target::Prefix(prefix)),
                ..Default::default()
            };
            let mut stream = super::auth::kv(channel).watch(request).await?.into_inner();
            let stopped = stop.notified();
            tokio::pin!(stopped);
            loop {
                let message = tokio::select! {
                    m = stream.message() => m?,
                    () = &mut stopped => break,
                };
                let Some(r) = message else { break };
                if r.events.is_empty() {
                    attached.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let now = unix_nanos();
                for e in &r.events {
                    if let Some(sent) = e.value.get(..8) {
                        let sent = u64::from_be_bytes(sent.try_into().expect("8 bytes"));
                        let _ = latency.record(now.saturating_sub(sent) / 1_000);
                    }
                }
                delivered.fetch_add(r.events.len() as u64, Ordering::Relaxed);
            }
            anyhow::Ok(latency)
        }));
    }
    let attach_by = tokio::time::Instant::now() + Duration::from_secs(30);
    while attached.load(Ordering::Relaxed) < u64::from(a.watchers) {
        anyhow::ensure!(
            tokio::time::Instant::now() < attach_by,
            "only {} of {} watchers attached within 30 s",
            attached.load(Ordering::Relaxed),
            a.watchers
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{} watchers attached", a.watchers);

    // Writers, on a fixed schedule.
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = tokio::time::Instant::now();
    let end = started + a.duration;
    let interval = Duration::from_secs_f64(f64::from(a.writers) / f64::from(a.rate));
    let mut writers = Vec::new();
    for w in 0..a.writers {
        let channel = connect(&a.endpoints[w as usize % a.endpoints.len()]).await?;
        let (acked, failed) = (acked.clone(), failed.clone());
        let (prefix, keys, size, writers_n) = (a.prefix.clone(), a.keys, a.value_size, a.writers);
        writers.push(tokio::spawn(async move {
            let mut kv = super::auth::kv(channel);
            let offset = interval.mul_f64(f64::from(w) / f64::from(writers_n));
            let mut next = started + offset;
            let mut i = u64::from(w);
            while next < end {
                tokio::time::sleep_until(next).await;
                next += interval;
                let key = format!("{prefix}{:08}", i % keys);
                i += u64::from(writers_n);
                let mut value = BytesMut::with_capacity(size as usize);
                value.put_u64(unix_nanos());
                value.resize(size as usize, b'x');
                let request = PutRequest {
                    key: Bytes::from(key.into_bytes()),
                    value: value.freeze(),
                    ..Default::default()
                };
                match kv.put(request).await {
                    Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for w in writers {
        w.await?;
    }
    let wrote_for = started.elapsed();
    let acked = acked.load(Ordering::Relaxed);
    let want = acked * u64::from(a.watchers);
    let drain_by = tokio::time::Instant::now() + a.drain;
    while delivered.load(Ordering::Relaxed) < want && tokio::time::Instant::now() < drain_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_in = started.elapsed();
    stop.notify_waiters();
    let mut latency = histogram();
    for w in watchers {
        latency.add(w.await??)?;
    }
    let delivered = delivered.load(Ordering::Relaxed);
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1_000.0;
    println!(
        "writes: {acked} acknowledged ({:.0}/s of {} asked), {} failed",
        acked as f64 / wrote_for.as_secs_f64(),
        a.rate,
        failed.load(Ordering::Relaxed)
    );
    println!(
        "deliveries: {delivered} of {want} ({:.1}%) to {} watchers in {:.1} s: {:.0} changes/s",
        100.0 * delivered as f64 / want.max(1) as f64,
        a.watchers,
        all_in.as_secs_f64(),
        delivered as f64 / all_in.as_secs_f64()
    );
    println!(
        "delivery latency ms: p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        latency.max() as f64 / 1_000.0
    );
    Ok(())
}
