//! One measured run: open the subscribers, publish, drain, tally.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde_json::{json, Value};
use tokio::{
    sync::{mpsc, watch, Semaphore},
    time::Instant,
};

use crate::{
    now_us,
    options::{Options, Scenario},
    proc::{clock_ticks_per_second, cpu_ticks, cpu_ticks_self, rss_bytes, sum, syscalls},
    publisher::{publish_conn, publisher, PublishJob, PublishStats},
    report::{histogram, percentiles, summary},
    subscriber::{subscriber, Shared, SubPlan},
};

/// Runs the scenario once against the servers at `targets` (process ids `pids`, if known) and
/// returns the result as one JSON object.
pub(crate) async fn run_one(
    o: &Options,
    server: &str,
    targets: &[SocketAddr],
    pids: &[u32],
) -> Result<Value, String> {
    let ticks = clock_ticks_per_second();
    let m = targets.len();
    let topics = match (o.scenario, o.topics) {
        (Scenario::Topics, None) => o.subscribers.max(1),
        (_, Some(t)) => t.max(1),
        (_, None) => 1,
    };
    // Fresh topic names for every run, so history from earlier runs on the same Redis is never
    // replayed.
    let run_tag = format!("{:x}", now_us() % 0xffff_ffff);
    let topic_names: Vec<Arc<str>> = (0..topics)
        .map(|t| Arc::from(format!("lg{run_tag}.{t}")))
        .collect();
    let publishing = o.scenario != Scenario::Idle;
    let events = if publishing { o.events } else { 0 };
    let duration_planned = Duration::from_secs_f64(events as f64 / o.rate);

    let rss_before = sum(pids, rss_bytes);
    let shared = Arc::new(Shared {
        ready: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        last_receive: AtomicU64::new(0),
    });
    let gate = Arc::new(Semaphore::new(o.connect_concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);

    // Subscribers. In the resume scenario the first `--resume-share` of them drop their
    // connection a third into the publishing and reconnect to the next instance.
    let open_start = Instant::now();
    let (resume_tx, resume_rx) = watch::channel(None::<Instant>);
    let resuming = (o.subscribers as f64 * o.resume_share).round() as usize;
    let mut handles = Vec::with_capacity(o.subscribers);
    for i in 0..o.subscribers {
        let topic = i % topics;
        let resume = (o.scenario == Scenario::Resume && i < resuming)
            .then(|| (targets[(i + 1) % m], resume_rx.clone()));
        let plan = SubPlan {
            topic,
            topic_name: topic_names[topic].to_string(),
            target: targets[i % m],
            resume,
            pause: o.pause,
            events,
        };
        handles.push(tokio::spawn(subscriber(
            plan,
            shared.clone(),
            gate.clone(),
            stop_rx.clone(),
        )));
    }
    // Wait until every subscriber has its stream open (or failed to open it).
    let open_deadline = Instant::now() + Duration::from_secs(120);
    while shared.ready.load(Ordering::Acquire) < o.subscribers {
        if Instant::now() > open_deadline {
            return Err(format!(
                "only {} of {} streams opened within 120 s",
                shared.ready.load(Ordering::Acquire),
                o.subscribers
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let open_secs = open_start.elapsed().as_secs_f64();

    let mut rss_after = None;
    if !publishing {
        tokio::time::sleep(o.settle).await;
        rss_after = sum(pids, rss_bytes);
    }

    // Publishers: `--publishers` connections per instance.
    let stats = Arc::new(Mutex::new(PublishStats {
        ok: vec![false; events],
        ..PublishStats::default()
    }));
    let mut queues = Vec::new();
    let mut publisher_tasks = Vec::new();
    if publishing {
        for &target in targets {
            let mut per_instance = Vec::new();
            for _ in 0..o.publishers {
                let (tx, rx) = mpsc::unbounded_channel();
                let sender = publish_conn(target).await?;
                publisher_tasks.push(tokio::spawn(publisher(
                    target,
                    sender,
                    rx,
                    o.payload,
                    stats.clone(),
                )));
                per_instance.push(tx);
            }
            queues.push(per_instance);
        }
    }

    // Time to attach a profiler to the servers, say, between opening and publishing.
    tokio::time::sleep(o.warmup).await;
    let sys_before: Vec<_> = pids.iter().map(|&p| syscalls(p)).collect();
    let cpu_before = sum(pids, cpu_ticks);
    let self_before = cpu_ticks_self();
    let redis_before = o.redis_pid.and_then(cpu_ticks);
    let start = Instant::now();
    let start_us = now_us();
    let _ = resume_tx.send(Some(start + duration_planned / 3));
    if publishing {
        let period = Duration::from_secs_f64(1.0 / o.rate);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for seq in 0..events {
            tick.tick().await;
            let instance = seq % m;
            let conn = (seq / m) % o.publishers;
            let job = PublishJob {
                seq,
                topic: topic_names[seq % topics].clone(),
            };
            let _ = queues[instance][conn].send(job);
        }
    } else {
        // Idle: the servers' CPU while the streams stay open with nothing to send.
        tokio::time::sleep(o.hold).await;
    }
    let publish_secs = start.elapsed().as_secs_f64();
    drop(queues);
    for task in publisher_tasks {
        let _ = task.await;
    }

    // How many deliveries to wait for: every subscriber that opened its stream gets every
    // event of its topic that was published.
    let stats = std::mem::take(&mut *stats.lock().unwrap_or_else(|e| e.into_inner()));
    let mut subs_per_topic = vec![0u64; topics];
    for i in 0..o.subscribers {
        subs_per_topic[i % topics] += 1;
    }
    let expected_guess: u64 = (0..events)
        .filter(|&j| stats.ok[j])
        .map(|j| subs_per_topic[j % topics])
        .sum();
    let drain_deadline = Instant::now() + o.drain;
    if publishing {
        while shared.delivered.load(Ordering::Relaxed) < expected_guess
            && Instant::now() < drain_deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let cpu_after = sum(pids, cpu_ticks);
    let sys_after: Vec<_> = pids.iter().map(|&p| syscalls(p)).collect();
    let self_after = cpu_ticks_self();
    let redis_after = o.redis_pid.and_then(cpu_ticks);
    if publishing {
        rss_after = sum(pids, rss_bytes);
    }
    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        results.push(h.await.map_err(|e| format!("subscriber task: {e}"))?);
    }

    // Tally.
    let mut per_topic = vec![[0u64; 5]; topics]; // expected, delivered, missing, dup, ooo
    let mut connect_errors = 0u64;
    let mut stream_errors = 0u64;
    let mut first_error = None;
    let (mut reconnects, mut resumed, mut reset, mut gaps) = (0, 0, 0, 0);
    let mut latencies = Vec::new();
    for r in &results {
        if !r.connected {
            connect_errors += 1;
            first_error = first_error.or(r.error.clone());
            continue;
        }
        if r.error.is_some() {
            stream_errors += 1;
            first_error = first_error.or(r.error.clone());
        }
        let t = &mut per_topic[r.topic];
        let mut j = r.topic;
        while j < events {
            if stats.ok[j] {
                t[0] += 1;
                if r.seen[j / 64] & (1 << (j % 64)) == 0 {
                    t[2] += 1;
                }
            }
            j += topics;
        }
        t[1] += r.delivered;
        t[3] += r.duplicate;
        t[4] += r.out_of_order;
        reconnects += r.reconnects;
        resumed += r.resumed;
        reset += r.reset;
        gaps += r.gaps;
        latencies.extend_from_slice(&r.latencies_us);
    }
    let total = |k: usize| per_topic.iter().map(|t| t[k]).sum::<u64>();
    let (expected, delivered, missing, duplicate, out_of_order) =
        (total(0), total(1), total(2), total(3), total(4));
    let lat = histogram(latencies);
    let publish_lat = histogram(stats.latencies_us.iter().copied());
    let last = shared.last_receive.load(Ordering::Relaxed);
    let active_secs = if last > start_us {
        (last - start_us) as f64 / 1e6
    } else {
        publish_secs
    };
    let secs = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / ticks),
        _ => None,
    };
    let server_cpu = secs(cpu_before, cpu_after);
    let cpu_us_per_delivery = match server_cpu {
        Some(c) if delivered > 0 => Some(c * 1e6 / delivered as f64),
        _ => None,
    };
    // Write system calls per delivery: below one means frames shared writes.
    let (mut reads, mut writes, mut known) = (0u64, 0u64, !pids.is_empty());
    for (b, a) in sys_before.iter().zip(&sys_after) {
        match (b, a) {
            (Some(b), Some(a)) => {
                reads += a.0.saturating_sub(b.0);
                writes += a.1.saturating_sub(b.1);
            }
            _ => known = false,
        }
    }
    let per_delivery = |n: u64| (known && delivered > 0).then(|| n as f64 / delivered as f64);
    let connections = o.subscribers as u64 - connect_errors;
    let rss_per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connections > 0 => {
            Some(a.saturating_sub(b) as f64 / connections as f64)
        }
        _ => None,
    };
    let per_topic_json = (topics <= 16).then(|| {
        per_topic
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    topic_names[i].to_string(),
                    json!({"expected": t[0], "delivered": t[1], "missing": t[2],
                           "duplicate": t[3], "out_of_order": t[4]}),
                )
            })
            .collect::<BTreeMap<_, _>>()
    });
    let round = |x: f64, places: i32| {
        let f = 10f64.powi(places);
        (x * f).round() / f
    };
    let result = json!({
        "scenario": o.scenario.name(),
        "server": server,
        "server_args": o.server_args,
        "server_env": o.server_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "backend": o.backend,
        "instances": m,
        "subscribers": o.subscribers,
        "topics": topics,
        "events": events,
        "rate": o.rate,
        "payload": o.payload,
        "published": stats.ok.iter().filter(|&&ok| ok).count(),
        "publish_errors": stats.errors,
        "publish_error": stats.first_error,
        "expected": expected,
        "delivered": delivered,
        "missing": missing,
        "duplicate": duplicate,
        "out_of_order": out_of_order,
        "connect_errors": connect_errors,
        "stream_errors": stream_errors,
        "first_error": first_error,
        "reconnects": reconnects,
        "resumed": resumed,
        "reset": reset,
        "gaps": gaps,
        "latency_us": percentiles(&lat),
        "publish_latency_us": percentiles(&publish_lat),
        "open_secs": round(open_secs, 3),
        "publish_secs": round(publish_secs, 3),
        "active_secs": round(active_secs, 3),
        "deliveries_per_s": if active_secs > 0.0 { round(delivered as f64 / active_secs, 0) } else { 0.0 },
        "server_cpu_s": server_cpu.map(|c| round(c, 3)),
        "idle_cpu_per_s": server_cpu
            .filter(|_| !publishing && publish_secs > 0.0)
            .map(|c| round(c / publish_secs, 5)),
        "cpu_us_per_delivery": cpu_us_per_delivery.map(|c| round(c, 3)),
        "server_writes_per_delivery": per_delivery(writes).map(|x| round(x, 4)),
        "server_reads_per_delivery": per_delivery(reads).map(|x| round(x, 4)),
        "loadgen_cpu_s": secs(self_before, self_after).map(|c| round(c, 3)),
        "redis_cpu_s": secs(redis_before, redis_after).map(|c| round(c, 3)),
        "server_rss_before": rss_before,
        "server_rss_after": rss_after,
        "rss_per_conn_bytes": rss_per_conn.map(|c| round(c, 0)),
        "per_topic": per_topic_json,
        "label": o.label,
        "unix_time": start_us / 1_000_000,
    });
    summary(&result);
    Ok(result)
}
