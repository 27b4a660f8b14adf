//! What a bench run measured: latency histograms (HDR, microsecond resolution), answers by
//! kind, a per-second series for the plot, and for a flash sale the oversell audit. Written as
//! JSON (for `--compare`) and markdown, and plotted as SVG.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// How one request ended, as the report counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// 2xx or 304.
    Ok,
    /// 409 for want of stock: the right answer in a sale, not a failure.
    SoldOut,
    /// 503 with `Retry-After`: refused on purpose by admission control.
    Shed,
    /// 429: a quota.
    Quota,
    /// Any other 4xx.
    ClientError,
    /// Any other 5xx.
    ServerError,
    /// No answer: connection refused or reset, or the client's timeout.
    Transport,
}

impl Kind {
    pub fn of_status(status: u16, code: Option<&str>) -> Kind {
        match status {
            200..=299 | 304 => Kind::Ok,
            409 if code == Some("insufficient_stock") => Kind::SoldOut,
            503 => Kind::Shed,
            429 => Kind::Quota,
            400..=499 => Kind::ClientError,
            _ => Kind::ServerError,
        }
    }

    /// Counted in `errors`: anything but a served answer or a sold-out refusal.
    pub fn is_error(self) -> bool {
        !matches!(self, Kind::Ok | Kind::SoldOut)
    }

    fn refused(self) -> bool {
        matches!(self, Kind::Shed | Kind::Quota)
    }
}

/// A latency as the histograms hold it: whole microseconds within their bounds.
fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 600_000_000)
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")
}

/// Collects one run. Not shared across threads: the runner records under one lock.
pub struct Recorder {
    all: Histogram<u64>,
    admitted: Histogram<u64>,
    refused: Histogram<u64>,
    /// From the moment each attempt actually began, not its due time: what the server and the
    /// wire took, without the bench's own lateness.
    admitted_from_send: Histogram<u64>,
    refused_from_send: Histogram<u64>,
    /// How late first attempts began against their due time (the timer's granularity, a busy
    /// machine): the part of open-loop latency that is the bench's.
    send_lag: Histogram<u64>,
    kinds: BTreeMap<Kind, u64>,
    per_second: Vec<(Histogram<u64>, u64, u64)>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            all: histogram(),
            admitted: histogram(),
            refused: histogram(),
            admitted_from_send: histogram(),
            refused_from_send: histogram(),
            send_lag: histogram(),
            kinds: BTreeMap::new(),
            per_second: Vec::new(),
        }
    }
}

impl Recorder {
    /// One answer (or failure) `since_start` into the run, after `latency`.
    pub fn record(&mut self, since_start: Duration, latency: Duration, kind: Kind) {
        let us = micros(latency);
        self.all.saturating_record(us);
        if kind.refused() {
            self.refused.saturating_record(us);
        } else if kind != Kind::Transport {
            self.admitted.saturating_record(us);
        }
        *self.kinds.entry(kind).or_default() += 1;
        let second = since_start.as_secs() as usize;
        while self.per_second.len() <= second {
            self.per_second.push((histogram(), 0, 0));
        }
        let slot = &mut self.per_second[second];
        slot.0.saturating_record(us);
        slot.1 += 1;
        if kind.is_error() {
            slot.2 += 1;
        }
    }

    /// The same answer seen from when its attempt began; `lag` is how late a first attempt began.
    pub fn record_send(&mut self, lag: Option<Duration>, from_send: Duration, kind: Kind) {
        if let Some(lag) = lag {
            self.send_lag.saturating_record(micros(lag));
        }
        if kind.refused() {
            self.refused_from_send.saturating_record(micros(from_send));
        } else if kind != Kind::Transport {
            self.admitted_from_send.saturating_record(micros(from_send));
        }
    }

    pub fn count(&self, kind: Kind) -> u64 {
        self.kinds.get(&kind).copied().unwrap_or(0)
    }

    pub fn finish(self, run: RunInfo, elapsed: Duration) -> Report {
        let requests = self.all.len();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let served = self.count(Kind::Ok) + self.count(Kind::SoldOut);
        Report {
            run,
            elapsed_secs: secs,
            requests,
            throughput_rps: requests as f64 / secs,
            goodput_rps: served as f64 / secs,
            latency_ms: Percentiles::of(&self.all),
            latency_admitted_ms: Percentiles::of(&self.admitted),
            latency_refused_ms: Percentiles::of(&self.refused),
            latency_admitted_from_send_ms: Percentiles::of(&self.admitted_from_send),
            latency_refused_from_send_ms: Percentiles::of(&self.refused_from_send),
            send_lag_ms: Percentiles::of(&self.send_lag),
            answers: self.kinds.iter().map(|(k, n)| (*k, *n)).collect(),
            errors: self.kinds.iter().filter(|(k, _)| k.is_error()).map(|(k, n)| (*k, *n)).collect(),
            series: self
                .per_second
                .iter()
                .enumerate()
                .map(|(s, (h, n, e))| Second {
                    second: s as u64,
                    requests: *n,
                    errors: *e,
                    p50_ms: ms(h.value_at_quantile(0.5)),
                    p99_ms: ms(h.value_at_quantile(0.99)),
                })
                .collect(),
            sale: None,
            client_cpu_cores: None,
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// What was run, as given on the command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub scenario: String,
    pub url: String,
    /// `open` (fixed arrival rate) or `closed` (connections back to back).
    pub mode: String,
    pub rate: Option<f64>,
    pub connections: Option<usize>,
    pub duration_secs: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Second {
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The flash sale's audit: what the shop accepted against what it had.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sale {
    pub stock_initial: i64,
    pub orders_accepted: u64,
    /// Units reserved or shipped at the end, read back from the shop's stock.
    pub stock_sold: i64,
    /// Orders accepted beyond the stock, or units sold beyond it; must be 0.
    pub oversell: i64,
    /// Retries after a 503 or 429, honouring `Retry-After`.
    pub retries: u64,
    /// Buyers whose last answer was a refusal: out of retries, or asked to come back too late.
    #[serde(default)]
    pub turned_away: u64,
    /// Of those, the ones whose `Retry-After` fell past the end of the run (not retried).
    #[serde(default)]
    pub asked_past_end: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub run: RunInfo,
    pub elapsed_secs: f64,
    pub requests: u64,
    pub throughput_rps: f64,
    /// Answers that served the buyer: 2xx, 304 and sold-out refusals.
    pub goodput_rps: f64,
    pub latency_ms: Percentiles,
    /// Requests that got past admission (everything but 503 and 429 and transport failures).
    pub latency_admitted_ms: Percentiles,
    /// 503 and 429 refusals alone: how fast a shed answer is.
    pub latency_refused_ms: Percentiles,
    /// The two above counted from when each attempt actually began (wrk2's "uncorrected"):
    /// compare them to tell the server's time from the bench's lateness.
    #[serde(default)]
    pub latency_admitted_from_send_ms: Percentiles,
    #[serde(default)]
    pub latency_refused_from_send_ms: Percentiles,
    /// How late first attempts began against their due time.
    #[serde(default)]
    pub send_lag_ms: Percentiles,
    pub answers: BTreeMap<Kind, u64>,
    pub errors: BTreeMap<Kind, u64>,
    pub series: Vec<Second>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub sale: Option<Sale>,
    /// CPU the bench itself used over the run, in cores (user + system time / elapsed): what
    /// the load cost the machine besides the server. Linux only.
    #[serde(default)]
    pub client_cpu_cores: Option<f64>,
}

impl Report {
    pub fn to_markdown(&self) -> String {
        let r = &self.run;
        let offered = match (r.rate, r.connections) {
            (Some(rate), _) => format!("open loop at {rate} req/s"),
            (_, Some(c)) => format!("closed loop, {c} connections"),
            _ => r.mode.clone(),
        };
        let mut s = format!(
            "# vitrina bench: {}\n\n{} against {}, {:.1} s\n\n| | value |\n|---|---|\n",
            r.scenario, offered, r.url, self.elapsed_secs
        );
        s += &format!(
            "| requests | {} |\n| throughput | {:.0} req/s |\n| goodput | {:.0} req/s |\n",
            self.requests, self.throughput_rps, self.goodput_rps
        );
        if let Some(cores) = self.client_cpu_cores {
            s += &format!("| bench's own CPU | {cores:.2} cores |\n");
        }
        s += "\n| latency (ms) | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|\n";
        for (name, p) in [
            ("all", &self.latency_ms),
            ("admitted", &self.latency_admitted_ms),
            ("refused (503/429)", &self.latency_refused_ms),
            ("admitted, from send", &self.latency_admitted_from_send_ms),
            ("refused, from send", &self.latency_refused_from_send_ms),
            ("bench's lateness", &self.send_lag_ms),
        ] {
            s += &format!("| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n", p.p50, p.p90, p.p99, p.p999, p.max);
        }
        s += "\n| answer | count |\n|---|---|\n";
        for (k, n) in &self.answers {
            s += &format!(
                "| {} | {n} |\n",
                serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
            );
        }
        if let Some(sale) = &self.sale {
            s += &format!(
                "\n| flash sale | |\n|---|---|\n| stock | {} |\n| orders accepted | {} |\n| stock sold | {} |\n| retries after 503/429 | {} |\n| turned away | {} |\n| of them asked back after the end | {} |\n| **oversell** | **{}** |\n",
                sale.stock_initial,
                sale.orders_accepted,
                sale.stock_sold,
                sale.retries,
                sale.turned_away,
                sale.asked_past_end,
                sale.oversell
            );
        }
        s
    }

    /// Requests per second and p50/p99 latency per second of the run.
    pub fn to_svg(&self) -> String {
        let (w, h, pad) = (800.0, 360.0, 50.0);
        let n = self.series.len().max(1) as f64;
        let max_rps = self.series.iter().map(|s| s.requests).max().unwrap_or(1).max(1) as f64;
        let max_ms = self.series.iter().map(|s| s.p99_ms).fold(1e-3, f64::max);
        let x = |i: usize| pad + (w - 2.0 * pad) * (i as f64 + 0.5) / n;
        let y = |v: f64, top: f64| h - pad - (h - 2.0 * pad) * v / top;
        let line = |f: &dyn Fn(&Second) -> f64, top: f64| {
            self.series.iter().enumerate().map(|(i, s)| format!("{:.1},{:.1}", x(i), y(f(s), top))).collect::<Vec<_>>().join(" ")
        };
        let bars: String = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let top = y(s.requests as f64, max_rps);
                let bw = ((w - 2.0 * pad) / n * 0.8).max(1.0);
                format!(
                    "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"#dde6f0\"/>",
                    x(i) - bw / 2.0,
                    h - pad - top
                )
            })
            .collect();
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>{bars}\
             <polyline fill=\"none\" stroke=\"#2b7bb9\" stroke-width=\"2\" points=\"{}\"/>\
             <polyline fill=\"none\" stroke=\"#d0482f\" stroke-width=\"2\" points=\"{}\"/>\
             <line x1=\"{pad}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\
             <text x=\"{pad}\" y=\"20\">{} — bars: requests/s (max {max_rps:.0}); blue p50, red p99 latency (max {max_ms:.2} ms); x: seconds</text>\
             </svg>\n",
            line(&|s| s.p50_ms, max_ms),
            line(&|s| s.p99_ms, max_ms),
            h - pad,
            w - pad,
            h - pad,
            self.run.scenario,
        )
    }

    /// This run against an earlier one, as ratios (new / old).
    pub fn compare(&self, old: &Report) -> String {
        let ratio = |new: f64, old: f64| if old > 0.0 { format!("{:.2}x", new / old) } else { "-".into() };
        let mut s = String::from("| figure | before | now | change |\n|---|---|---|---|\n");
        let rows = [
            ("throughput req/s", old.throughput_rps, self.throughput_rps),
            ("goodput req/s", old.goodput_rps, self.goodput_rps),
            ("p50 ms", old.latency_ms.p50, self.latency_ms.p50),
            ("p99 ms", old.latency_ms.p99, self.latency_ms.p99),
            ("p99.9 ms", old.latency_ms.p999, self.latency_ms.p999),
            ("errors", old.errors.values().sum::<u64>() as f64, self.errors.values().sum::<u64>() as f64),
        ];
        for (name, before, now) in rows {
            s += &format!("| {name} | {before:.2} | {now:.2} | {} |\n", ratio(now, before));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunInfo {
        RunInfo {
            scenario: "browse".into(),
            url: "http://127.0.0.1:8080".into(),
            mode: "open".into(),
            rate: Some(100.0),
            connections: None,
            duration_secs: 2.0,
        }
    }

    #[test]
    fn answers_are_sorted_into_kinds() {
        assert_eq!(Kind::of_status(200, None), Kind::Ok);
        assert_eq!(Kind::of_status(304, None), Kind::Ok);
        assert_eq!(Kind::of_status(409, Some("insufficient_stock")), Kind::SoldOut);
        assert_eq!(Kind::of_status(409, Some("invalid_transition")), Kind::ClientError);
        assert_eq!(Kind::of_status(503, Some("overloaded")), Kind::Shed);
        assert_eq!(Kind::of_status(429, None), Kind::Quota);
        assert_eq!(Kind::of_status(500, None), Kind::ServerError);
        assert!(!Kind::SoldOut.is_error() && Kind::Shed.is_error());
    }

    #[test]
    fn a_report_has_percentiles_kinds_a_series_and_round_trips() {
        let mut r = Recorder::default();
        for i in 1..=100u64 {
            r.record(Duration::from_millis(i * 15), Duration::from_millis(i), Kind::Ok);
        }
        r.record(Duration::from_millis(1_900), Duration::from_micros(300), Kind::Shed);
        let report = r.finish(run(), Duration::from_secs(2));
        assert_eq!(report.requests, 101);
        assert!((report.throughput_rps - 50.5).abs() < 1e-9);
        assert!((report.goodput_rps - 50.0).abs() < 1e-9);
        let p = &report.latency_admitted_ms;
        assert!((p.p50 - 50.0).abs() < 0.1 && (p.p99 - 99.0).abs() < 0.1 && (p.max - 100.0).abs() < 0.1, "{p:?}");
        assert!((report.latency_refused_ms.max - 0.3).abs() < 0.01);
        assert_eq!(report.errors, BTreeMap::from([(Kind::Shed, 1)]));
        assert_eq!(report.series.len(), 2);
        assert_eq!(report.series.iter().map(|s| s.requests).sum::<u64>(), 101);

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["scenario"], "browse");
        assert!(json["latency_ms"]["p999"].is_number() && json["errors"]["shed"] == 1);
        let back: Report = serde_json::from_value(json).unwrap();
        assert!(back.compare(&report).contains("| throughput req/s | 50.50 | 50.50 | 1.00x |"));
        assert!(report.to_markdown().contains("| refused (503/429) |"));
        assert!(report.to_svg().starts_with("<svg") && report.to_svg().contains("polyline"));
    }

    #[test]
    fn a_sale_report_carries_the_audit_at_the_top_level() {
        let mut report = Recorder::default().finish(run(), Duration::from_secs(1));
        report.sale = Some(Sale { stock_initial: 10, orders_accepted: 10, stock_sold: 10, retries: 3, ..Sale::default() });
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            (json["orders_accepted"].as_u64(), json["stock_sold"].as_i64(), json["oversell"].as_i64()),
            (Some(10), Some(10), Some(0))
        );
    }

    #[test]
    fn latency_from_the_send_and_the_bench_s_lateness_are_kept_apart() {
        let mut r = Recorder::default();
        // Due at 0, begun 0.8 ms late, answered 0.2 ms after it began: a refusal.
        r.record(Duration::ZERO, Duration::from_micros(1_000), Kind::Quota);
        r.record_send(Some(Duration::from_micros(800)), Duration::from_micros(200), Kind::Quota);
        // A retry: no lateness of its own to count.
        r.record(Duration::ZERO, Duration::from_micros(3_000), Kind::Ok);
        r.record_send(None, Duration::from_micros(3_000), Kind::Ok);
        let report = r.finish(run(), Duration::from_secs(1));
        assert!((report.latency_refused_ms.p50 - 1.0).abs() < 0.01);
        assert!((report.latency_refused_from_send_ms.p50 - 0.2).abs() < 0.01);
        assert!((report.send_lag_ms.max - 0.8).abs() < 0.01);
        assert!((report.latency_admitted_from_send_ms.p50 - 3.0).abs() < 0.01);
        assert!(report.to_markdown().contains("| bench's lateness |"));
        // Reports written before these figures existed still read.
        let mut old = serde_json::to_value(&report).unwrap();
        for key in ["latency_admitted_from_send_ms", "latency_refused_from_send_ms", "send_lag_ms", "client_cpu_cores"] {
            old.as_object_mut().unwrap().remove(key);
        }
        assert!(serde_json::from_value::<Report>(old).is_ok());
    }
}
