//! Writing the Prometheus text exposition format (0.0.4): `# HELP` and
//! `# TYPE` lines, samples with escaped label values, and histograms from
//! µs summaries as cumulative `_bucket`/`_sum`/`_count` in seconds. Which
//! families there are is `prometheus.rs`'s and `operations.rs`'s business.

use std::fmt::Write as _;

use super::snapshot::Latency;

pub(super) fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

pub(super) type Labels<'a> = Vec<(&'a str, String)>;

pub(super) struct Out(pub(super) String);

impl Out {
    fn head(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], extra: Option<(&str, &str)>, v: f64) {
        self.0.push_str(name);
        let all: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).chain(extra).collect();
        if !all.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in all.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(v));
    }

    pub(super) fn counter(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        self.series(name, help, "counter", samples);
    }

    pub(super) fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        self.series(name, help, "gauge", samples);
    }

    fn series(&mut self, name: &str, help: &str, kind: &str, samples: &[(Labels<'_>, f64)]) {
        self.head(name, help, kind);
        for (labels, v) in samples {
            self.sample(name, labels, None, *v);
        }
    }

    /// A histogram from µs summaries: bounds and sums converted to seconds.
    pub(super) fn histogram<'a>(
        &mut self,
        name: &str,
        help: &str,
        series: impl Iterator<Item = (Labels<'a>, &'a Latency)>,
    ) {
        self.head(name, help, "histogram");
        for (labels, l) in series {
            for [le_us, n] in &l.buckets {
                let le = number(*le_us as f64 / 1e6);
                self.sample(&format!("{name}_bucket"), &labels, Some(("le", &le)), *n as f64);
            }
            self.sample(&format!("{name}_bucket"), &labels, Some(("le", "+Inf")), l.count as f64);
            self.sample(&format!("{name}_sum"), &labels, None, l.sum as f64 / 1e6);
            self.sample(&format!("{name}_count"), &labels, None, l.count as f64);
        }
    }
}

pub(super) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Integers without a fraction, others as Rust prints them (shortest round-trip).
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}
