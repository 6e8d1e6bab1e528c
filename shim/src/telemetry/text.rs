//! Prometheus' text exposition format 0.0.4: an [`Exposition`] is built
//! family by family, rendered, read back (what a shim served) and merged
//! with others, so that one family's samples from every pod come out under
//! one `# HELP`/`# TYPE` pair, as the format requires.

use std::fmt::Write;

/// The format's content type, for the HTTP answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Longest label value kept; longer ones are cut (they come from ids and
/// names the code chooses, so this only bounds a surprise).
const MAX_LABEL_VALUE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
    Untyped,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
            Kind::Untyped => "untyped",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "gauge" => Kind::Gauge,
            "counter" => Kind::Counter,
            "histogram" => Kind::Histogram,
            "untyped" => Kind::Untyped,
            _ => return None,
        })
    }
}

/// One sample line: the family's name plus `suffix` (`_bucket`, `_sum`,
/// `_count` for histograms, else empty), labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub suffix: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    /// Adds a sample of the family itself (no suffix).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.with_suffix("", labels, value)
    }

    pub fn with_suffix(&mut self, suffix: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.samples.push(Sample {
            suffix: suffix.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), bounded(v)))
                .collect(),
            value,
        });
        self
    }

    /// Adds one histogram: cumulative `_bucket`s (the last is `+Inf`),
    /// `_sum` and `_count`, each with `labels`.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        bounds: &[f64],
        cumulative: &[u64],
        sum: f64,
    ) -> &mut Self {
        let count = cumulative.last().copied().unwrap_or(0);
        for (i, c) in cumulative.iter().enumerate() {
            let le = bounds.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.with_suffix("_bucket", &with_le, *c as f64);
        }
        self.with_suffix("_sum", labels, sum);
        self.with_suffix("_count", labels, count as f64)
    }
}

fn bounded(v: &str) -> String {
    let mut end = v.len().min(MAX_LABEL_VALUE);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_owned()
}

/// Families in the order they were first added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub families: Vec<Family>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TextError {
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: &'static str },
}

impl Exposition {
    /// The family `name`, added (empty) if it is not there yet.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Family {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name: name.to_owned(),
                    help: help.to_owned(),
                    kind,
                    samples: Vec::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[i]
    }

    /// Appends `other`'s samples to the families of the same name (adding
    /// the families this one lacks). A family whose type differs from
    /// ours is dropped: its samples would not be of one metric.
    pub fn merge(&mut self, other: Exposition) {
        for f in other.families {
            let ours = self.family(&f.name, &f.help, f.kind);
            if ours.kind == f.kind {
                ours.samples.extend(f.samples);
            }
        }
    }

    /// Every sample's full name and labels, for tests and lookups.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let mut out = Vec::new();
        for f in &self.families {
            for s in &f.samples {
                if format!("{}{}", f.name, s.suffix) != name {
                    continue;
                }
                let matches = labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v));
                if matches {
                    out.push(s.value);
                }
            }
        }
        out
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            if f.samples.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# HELP {} {}", f.name, escape(&f.help, false));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            for s in &f.samples {
                out.push_str(&f.name);
                out.push_str(&s.suffix);
                if !s.labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in s.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape(v, true));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", number(s.value));
            }
        }
        out
    }

    /// Reads an exposition (as [`render`](Self::render) writes it, or any
    /// 0.0.4 text without timestamps). A sample must belong to the family
    /// of the `# TYPE` line before it, or it starts an untyped one.
    pub fn parse(text: &str) -> Result<Exposition, TextError> {
        let mut exp = Exposition::default();
        let mut help: Option<(String, String)> = None;
        let mut current: Option<usize> = None;
        for (n, line) in text.lines().enumerate() {
            let bad = |problem| TextError::Line {
                line: n + 1,
                problem,
            };
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                check_name(name).ok_or(bad("bad metric name"))?;
                help = Some((name.to_owned(), unescape(text)));
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or(bad("TYPE without a type"))?;
                check_name(name).ok_or(bad("bad metric name"))?;
                let kind = Kind::parse(kind.trim()).ok_or(bad("unknown metric type"))?;
                let h = match help.take() {
                    Some((hn, h)) if hn == name => h,
                    _ => String::new(),
                };
                exp.family(name, &h, kind);
                current = exp.families.iter().position(|f| f.name == name);
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, labels, value) = parse_sample(line).ok_or(bad("bad sample line"))?;
            let family = current
                .filter(|&i| {
                    let f = &exp.families[i];
                    name.strip_prefix(f.name.as_str())
                        .is_some_and(|s| suffixes(f.kind).contains(&s))
                })
                .unwrap_or_else(|| {
                    exp.family(&name, "", Kind::Untyped);
                    exp.families
                        .iter()
                        .position(|f| f.name == name)
                        .unwrap_or(0)
                });
            let f = &mut exp.families[family];
            let suffix = name[f.name.len()..].to_owned();
            f.samples.push(Sample {
                suffix,
                labels,
                value,
            });
        }
        Ok(exp)
    }
}

fn suffixes(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Histogram => &["_bucket", "_sum", "_count"],
        _ => &[""],
    }
}

fn check_name(name: &str) -> Option<()> {
    let mut chars = name.chars();
    let first = chars.next()?;
    let ok = (first.is_ascii_alphabetic() || first == '_' || first == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    ok.then_some(())
}

/// A sample line's name, labels and value.
type SampleLine = (String, Vec<(String, String)>, f64);

/// `name{labels} value` (a timestamp after the value is ignored).
fn parse_sample(line: &str) -> Option<SampleLine> {
    let end = line.find(['{', ' '])?;
    let name = &line[..end];
    check_name(name)?;
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            check_name(key)?;
            let (value, after) = read_quoted(after)?;
            labels.push((key.to_owned(), value));
            rest = after;
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some((name.to_owned(), labels, value))
}

/// A label value up to its closing quote, unescaped; and what follows.
fn read_quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

fn escape(s: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Exposition {
        let mut e = Exposition::default();
        e.family("husk_pod_vcpus", "vCPUs of the pod's VM.", Kind::Gauge)
            .sample(&[("pod", "p1")], 2.0);
        e.family(
            "husk_pod_agent_call_duration_seconds",
            "Agent calls.",
            Kind::Histogram,
        )
        .histogram(
            &[("pod", "p1"), ("call", "stats")],
            &[0.01, 0.1],
            &[1, 3, 4],
            0.25,
        );
        e.family("odd", "a \\ help\nline", Kind::Counter)
            .sample(&[("v", "quote \" back \\ nl \n")], 1.5);
        e
    }

    #[test]
    fn rendered_text_is_the_format() {
        let text = sample().render();
        assert!(
            text.starts_with(
                "# HELP husk_pod_vcpus vCPUs of the pod's VM.\n# TYPE husk_pod_vcpus gauge\n\
             husk_pod_vcpus{pod=\"p1\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "husk_pod_agent_call_duration_seconds_bucket{pod=\"p1\",call=\"stats\",le=\"0.01\"} 1\n"
        ));
        assert!(text.contains("le=\"+Inf\"} 4\n"), "{text}");
        assert!(text
            .contains("husk_pod_agent_call_duration_seconds_count{pod=\"p1\",call=\"stats\"} 4\n"));
        assert!(text.contains("# HELP odd a \\\\ help\\nline\n"), "{text}");
        assert!(
            text.contains("odd{v=\"quote \\\" back \\\\ nl \\n\"} 1.5\n"),
            "{text}"
        );
    }

    #[test]
    fn parse_reads_back_what_render_wrote() {
        let e = sample();
        assert_eq!(Exposition::parse(&e.render()).unwrap(), e);
    }

    #[test]
    fn merge_keeps_one_family_per_name() {
        let mut a = sample();
        let mut b = Exposition::default();
        b.family("husk_pod_vcpus", "vCPUs of the pod's VM.", Kind::Gauge)
            .sample(&[("pod", "p2")], 4.0);
        b.family("husk_pod_vcpus_x", "other", Kind::Gauge)
            .sample(&[], 1.0);
        a.merge(b);
        let text = a.render();
        assert_eq!(text.matches("# TYPE husk_pod_vcpus gauge").count(), 1);
        assert_eq!(a.find("husk_pod_vcpus", &[]), vec![2.0, 4.0]);
        assert_eq!(a.find("husk_pod_vcpus", &[("pod", "p2")]), vec![4.0]);
        // A family of another type under the same name is not mixed in.
        let mut c = Exposition::default();
        c.family("husk_pod_vcpus", "", Kind::Counter)
            .sample(&[], 9.0);
        a.merge(c);
        assert_eq!(a.find("husk_pod_vcpus", &[]), vec![2.0, 4.0]);
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        for bad in [
            "# TYPE x nonsense\n",
            "x{a=\"1\" 2\n",
            "1x 2\n",
            "x{a=1} 2\n",
            "x not-a-number\n",
            "x\n",
        ] {
            let e = Exposition::parse(bad).unwrap_err();
            assert!(matches!(e, TextError::Line { line: 1, .. }), "{bad:?}: {e}");
        }
        // Untyped samples, comments and timestamps are the format too.
        let e = Exposition::parse("# just a comment\nup 1 1700000000000\n").unwrap();
        assert_eq!(e.find("up", &[]), vec![1.0]);
    }

    #[test]
    fn long_label_values_are_cut() {
        let mut e = Exposition::default();
        let long = "é".repeat(500);
        e.family("x", "", Kind::Gauge).sample(&[("v", &long)], 1.0);
        let v = &e.families[0].samples[0].labels[0].1;
        assert!(v.len() <= MAX_LABEL_VALUE && long.starts_with(v.as_str()));
    }
}
