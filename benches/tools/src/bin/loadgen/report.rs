//! What a run reports: latency percentiles, the summary on stderr, and the ratios of two
//! servers' runs.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Latencies (µs) in an HDR histogram: 1 µs to 10 min, 3 significant digits.
pub(crate) fn histogram(values: impl IntoIterator<Item = u32>) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    for v in values {
        h.saturating_record(u64::from(v.max(1)));
    }
    h
}

/// The percentiles a result reports, or `null` with no sample.
pub(crate) fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

/// A run's result in a few lines on stderr.
pub(crate) fn summary(r: &Value) {
    let lat = &r["latency_us"];
    let ms = |v: &Value| {
        v.as_f64()
            .map_or("-".to_owned(), |us| format!("{:.1}", us / 1000.0))
    };
    eprintln!(
        "{} [{}] {} subscribers on {} instance(s), {} topic(s), {} events at {}/s",
        r["scenario"].as_str().unwrap_or(""),
        r["server"].as_str().unwrap_or(""),
        r["subscribers"],
        r["instances"],
        r["topics"],
        r["events"],
        r["rate"]
    );
    if r["events"].as_u64().unwrap_or(0) > 0 {
        eprintln!(
            "  delivered {} of {} expected: missing {}, duplicate {}, out of order {}; \
             published {} ({} errors); {} reconnects ({} resumed, {} reset)",
            r["delivered"],
            r["expected"],
            r["missing"],
            r["duplicate"],
            r["out_of_order"],
            r["published"],
            r["publish_errors"],
            r["reconnects"],
            r["resumed"],
            r["reset"],
        );
        eprintln!(
            "  latency ms: p50 {} p90 {} p99 {} max {}; {} deliveries/s",
            ms(&lat["p50"]),
            ms(&lat["p90"]),
            ms(&lat["p99"]),
            ms(&lat["max"]),
            r["deliveries_per_s"]
        );
        eprintln!(
            "  server CPU {} s = {} µs per delivery, {} writes per delivery; loadgen CPU {} s; \
             redis CPU {} s",
            r["server_cpu_s"],
            r["cpu_us_per_delivery"],
            r["server_writes_per_delivery"],
            r["loadgen_cpu_s"],
            r["redis_cpu_s"]
        );
    }
    eprintln!(
        "  server RSS {} -> {} bytes = {} bytes per connection; {} connect errors, {} stream errors{}",
        r["server_rss_before"],
        r["server_rss_after"],
        r["rss_per_conn_bytes"],
        r["connect_errors"],
        r["stream_errors"],
        r["first_error"]
            .as_str()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
}

/// The ratios of two servers' results (second / first), also summarised on stderr.
pub(crate) fn compare(first: &Value, second: &Value) -> Value {
    let ratio = |key: &str, path: &[&str]| -> Value {
        let get = |v: &Value| {
            let mut v = v.get(key)?;
            for p in path {
                v = v.get(p)?;
            }
            v.as_f64()
        };
        match (get(first), get(second)) {
            (Some(a), Some(b)) if a > 0.0 => json!(b / a),
            _ => Value::Null,
        }
    };
    let comparison = json!({
        "scenario": "compare",
        "of": [first["server"], second["server"]],
        "note": "second / first",
        "cpu_us_per_delivery": ratio("cpu_us_per_delivery", &[]),
        "latency_p99_us": ratio("latency_us", &["p99"]),
        "rss_per_conn_bytes": ratio("rss_per_conn_bytes", &[]),
    });
    eprintln!(
        "ratio {} / {}: CPU per delivery {:.2}x, p99 {:.2}x, RSS per connection {:.2}x",
        second["server"],
        first["server"],
        comparison["cpu_us_per_delivery"]
            .as_f64()
            .unwrap_or(f64::NAN),
        comparison["latency_p99_us"].as_f64().unwrap_or(f64::NAN),
        comparison["rss_per_conn_bytes"]
            .as_f64()
            .unwrap_or(f64::NAN),
    );
    comparison
}
