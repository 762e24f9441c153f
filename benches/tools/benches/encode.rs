//! Encoding events to the `text/event-stream` wire format.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tower_sse::Event;

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let cases = [
        ("small_64B", "x".repeat(64)),
        (
            "json_1KiB",
            format!("{{\"items\":[{}]}}", "\"item\",".repeat(120)),
        ),
        ("lines_4KiB", "a line of text\n".repeat(4096 / 15)),
        ("crlf_4KiB", "a line of text\r\n".repeat(4096 / 16)),
        ("plain_64KiB", "y".repeat(64 * 1024)),
    ];
    for (name, data) in cases {
        let event = Event::new(data.clone()).event("update").unwrap();
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &event, |b, event| {
            b.iter(|| black_box(event.encode()))
        });
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
