//! Prometheus metrics, hand-written exposition (text format 0.0.4) to keep the build light:
//! requests by route, model and outcome; errors by class; latency histograms per route and
//! model; limit hits; policy denials by rule. Labels come only from fixed sets (route patterns,
//! outcome words, policy rule names) or from configured model names — never from raw request
//! content, so a client cannot grow the series without bound. Served on a separate plain-HTTP
//! listener, loopback by default.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, String), u64>,
    errors: BTreeMap<String, u64>,
    latency: BTreeMap<(String, String), Histogram>,
    limited: BTreeMap<String, u64>,
    denials: BTreeMap<String, u64>,
    shed: u64,
    circuit_open: u64,
    abuse: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// One finished request. `model` must be a configured model name or `-`.
    pub fn request(&self, route: &str, model: &str, outcome: &str, latency: Duration) {
        self.with(|m| {
            *m.requests
                .entry((route.to_string(), model.to_string(), outcome.to_string()))
                .or_default() += 1;
            if outcome != "ok" {
                *m.errors.entry(outcome.to_string()).or_default() += 1;
            }
            let h = m
                .latency
                .entry((route.to_string(), model.to_string()))
                .or_default();
            let s = latency.as_secs_f64();
            for (i, b) in BUCKETS.iter().enumerate() {
                if s <= *b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += s;
        });
    }

    pub fn limited(&self, by: &str) {
        self.with(|m| *m.limited.entry(by.to_string()).or_default() += 1);
    }

    pub fn denied(&self, rule: &str) {
        self.with(|m| *m.denials.entry(rule.to_string()).or_default() += 1);
    }

    pub fn shed(&self) {
        self.with(|m| m.shed += 1);
    }

    /// An identity newly flagged by an abuse signal.
    pub fn abuse(&self, signal: &str) {
        self.with(|m| *m.abuse.entry(signal.to_string()).or_default() += 1);
    }

    pub fn circuit_open(&self) {
        self.with(|m| m.circuit_open += 1);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut o = String::new();
            let _ = writeln!(
                o,
                "# HELP warden_requests_total Requests by route pattern, model and outcome.\n# TYPE warden_requests_total counter"
            );
            for ((r, md, oc), n) in &m.requests {
                let _ = writeln!(
                    o,
                    "warden_requests_total{{route=\"{}\",model=\"{}\",outcome=\"{}\"}} {n}",
                    esc(r),
                    esc(md),
                    esc(oc)
                );
            }
            let _ = writeln!(
                o,
                "# HELP warden_errors_total Refused or failed requests by class.\n# TYPE warden_errors_total counter"
            );
            for (c, n) in &m.errors {
                let _ = writeln!(o, "warden_errors_total{{class=\"{}\"}} {n}", esc(c));
            }
            let _ = writeln!(
                o,
                "# HELP warden_request_duration_seconds Request latency by route pattern and model.\n# TYPE warden_request_duration_seconds histogram"
            );
            for ((r, md), h) in &m.latency {
                let labels = format!("route=\"{}\",model=\"{}\"", esc(r), esc(md));
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        o,
                        "warden_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    o,
                    "warden_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(o, "warden_request_duration_seconds_sum{{{labels}}} {}", h.sum);
                let _ = writeln!(
                    o,
                    "warden_request_duration_seconds_count{{{labels}}} {}",
                    h.count
                );
            }
            let _ = writeln!(
                o,
                "# HELP warden_rate_limited_total Requests refused by a rate limit (identity or tenant).\n# TYPE warden_rate_limited_total counter"
            );
            for (by, n) in &m.limited {
                let _ = writeln!(o, "warden_rate_limited_total{{limit=\"{}\"}} {n}", esc(by));
            }
            let _ = writeln!(
                o,
                "# HELP warden_policy_denials_total Requests denied by the route policy, by rule.\n# TYPE warden_policy_denials_total counter"
            );
            for (rule, n) in &m.denials {
                let _ = writeln!(
                    o,
                    "warden_policy_denials_total{{rule=\"{}\"}} {n}",
                    esc(rule)
                );
            }
            let _ = writeln!(
                o,
                "# HELP warden_load_shed_total Requests refused at once because too many were in flight.\n# TYPE warden_load_shed_total counter\nwarden_load_shed_total {}",
                m.shed
            );
            let _ = writeln!(
                o,
                "# HELP warden_abuse_flags_total Identities flagged by a model-extraction or abuse signal.\n# TYPE warden_abuse_flags_total counter"
            );
            for (signal, n) in &m.abuse {
                let _ = writeln!(
                    o,
                    "warden_abuse_flags_total{{signal=\"{}\"}} {n}",
                    esc(signal)
                );
            }
            let _ = writeln!(
                o,
                "# HELP warden_circuit_open_total Requests refused because a model's circuit was open.\n# TYPE warden_circuit_open_total counter\nwarden_circuit_open_total {}",
                m.circuit_open
            );
            o
        })
    }
}

/// A label value escaped for the exposition format.
pub fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// More exposition text, appended to the gateway's counters (the models' gauges).
pub type MoreMetrics = std::sync::Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `shutdown`; plain HTTP/1.1, nothing else.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    more: MoreMetrics,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioIo, TokioTimer};
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let metrics = metrics.clone();
        let more = more.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let more = more.clone();
                async move {
                    let mut resp =
                        if req.uri().path() == "/metrics" && req.method() == http::Method::GET {
                            let text = metrics.render() + &more();
                            let mut r = http::Response::new(Full::new(Bytes::from(text)));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("text/plain; version=0.0.4"),
                            );
                            r
                        } else {
                            let mut r =
                                http::Response::new(Full::new(Bytes::from_static(b"not found\n")));
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                            r
                        };
                    resp.headers_mut().insert(
                        http::header::CACHE_CONTROL,
                        http::HeaderValue::from_static("no-store"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::default();
        m.request(
            "/v2/models/{name}/infer",
            "demo",
            "ok",
            Duration::from_micros(300),
        );
        m.request(
            "/v2/models/{name}/infer",
            "demo",
            "forbidden",
            Duration::from_micros(50),
        );
        m.limited("tenant");
        m.denied("default_deny");
        let text = m.render();
        assert!(text.contains(
            "warden_requests_total{route=\"/v2/models/{name}/infer\",model=\"demo\",outcome=\"ok\"} 1"
        ));
        assert!(text.contains("warden_errors_total{class=\"forbidden\"} 1"));
        assert!(text.contains(
            "warden_request_duration_seconds_bucket{route=\"/v2/models/{name}/infer\",model=\"demo\",le=\"0.00025\"} 1"
        ));
        assert!(text.contains(
            "warden_request_duration_seconds_count{route=\"/v2/models/{name}/infer\",model=\"demo\"} 2"
        ));
        assert!(text.contains("warden_rate_limited_total{limit=\"tenant\"} 1"));
        assert!(text.contains("warden_policy_denials_total{rule=\"default_deny\"} 1"));
    }
}
