//! In-process publish fan-out: the cost of one publish delivered to N subscribers.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::{FutureExt, StreamExt};
use tower_sse::{Event, EventBus, Message, Subscription};

/// Events published per measured batch; subscribers' queues hold them all.
const BATCH: u64 = 64;

fn drain(subs: &mut [Subscription]) {
    for sub in subs {
        while let Some(Some(message)) = sub.next().now_or_never() {
            assert!(matches!(message, Message::Event(_)), "{message:?}");
        }
    }
}

fn fanout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("fanout");
    group.measurement_time(Duration::from_secs(5));
    for subscribers in [1usize, 100, 10_000] {
        let bus = EventBus::builder()
            .queue_capacity(BATCH as usize * 2)
            .memory();
        let mut subs: Vec<Subscription> = runtime.block_on(async {
            let mut subs = Vec::new();
            for _ in 0..subscribers {
                subs.push(bus.subscribe(["hot"], None).await.unwrap());
            }
            subs
        });
        let event = Event::new("x".repeat(64));
        // Deliveries per second: one publish counts once per subscriber.
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::new("publish", subscribers), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let n = BATCH.min(iters - done);
                    let start = Instant::now();
                    runtime.block_on(async {
                        for _ in 0..n {
                            bus.publish("hot", event.clone()).await.unwrap();
                        }
                    });
                    total += start.elapsed();
                    drain(&mut subs);
                    done += n;
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
