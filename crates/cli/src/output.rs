//! Tables and JSON for the terminal.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Print rows under a header, columns padded to fit.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

pub fn json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot print as JSON: {e}"),
    }
}

/// `3m`, `2h`, `5d`.
pub fn age(at: &Value) -> String {
    let Some(t) = at.as_str().and_then(|s| s.parse::<DateTime<Utc>>().ok()) else { return "?".into() };
    let secs = (Utc::now() - t).num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// The spec in one line: `key=value` for each field, uuids shortened, long lists counted.
pub fn summary(spec: &Value) -> String {
    let Some(map) = spec.as_object() else { return String::new() };
    let mut parts = Vec::new();
    for (k, v) in map {
        let s = match v {
            Value::Null => continue,
            Value::String(s) => short(s),
            Value::Array(a) if a.is_empty() => continue,
            Value::Array(a) if a.len() <= 3 => a
                .iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), short))
                .collect::<Vec<_>>()
                .join(","),
            Value::Array(a) => format!("[{} items]", a.len()),
            Value::Object(o) if o.is_empty() => continue,
            Value::Object(_) => summary(v).replace(' ', ","),
            other => other.to_string(),
        };
        parts.push(format!("{k}={s}"));
    }
    let line = parts.join(" ");
    if line.chars().count() > 80 { format!("{}…", line.chars().take(79).collect::<String>()) } else { line }
}

/// A uuid's first 8 characters; anything else as it is.
fn short(s: &str) -> String {
    if uuid::Uuid::parse_str(s).is_ok() { s[..8].to_string() } else { s.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_short() {
        let spec = serde_json::json!({
            "parent": "0b9e4f3c-1111-4222-8333-444455556666",
            "strategy": "netns",
            "tiers": [],
            "resources": {"cpu_millis": 2000},
        });
        assert_eq!(summary(&spec), "parent=0b9e4f3c resources=cpu_millis=2000 strategy=netns");
    }
}
