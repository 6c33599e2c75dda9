//! The history `created_by` text exactly as BuildKit's Dockerfile frontend writes it, which
//! leans on Go's `fmt` verbs (`%q` of a string slice, `%v` of a map, `time.Duration`).
//!
//! Hand-written: these are a handful of Go formatting rules, not worth a dependency. Knows
//! nothing of the graph or of execution.

use super::image::Healthcheck;
use crate::parser::raw::go_quote;
use std::time::Duration;

/// Go's `fmt.Sprintf("%q", []string{...})`: `["a" "b c"]`.
pub fn go_quote_list(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|value| go_quote(value)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `fmt.Sprintf("%v", []string{...})`: `[a b c]`.
pub fn go_list(values: &[String]) -> String {
    format!("[{}]", values.join(" "))
}

/// Go's `fmt.Sprintf("%v", map[nat.Port]struct{}{...})`: `map[443/tcp:{} 80/tcp:{}]`, keys
/// sorted as strings.
pub fn go_port_map(ports: &[String]) -> String {
    let mut ports: Vec<&String> = ports.iter().collect();
    ports.sort();
    ports.dedup();
    let entries: Vec<String> = ports.iter().map(|port| format!("{port}:{{}}")).collect();
    format!("map[{}]", entries.join(" "))
}

/// Go's `time.Duration.String()`: `0s`, `1.5s`, `5m0s`, `1h0m0s`, `500ms`, `2µs`.
pub fn go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", fraction(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", fraction(nanos, 1_000_000));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let seconds = fraction(nanos % 60_000_000_000, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `value / unit` with the fractional digits Go prints (trailing zeros dropped).
fn fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let rest = value % unit;
    if rest == 0 {
        return whole.to_string();
    }
    let width = unit.to_string().len() - 1;
    let digits = format!("{rest:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Go's `%q` of an integer: a quoted rune literal (`'\x03'`, `'A'`).
fn go_quote_rune(value: i64) -> String {
    let Some(c) = u32::try_from(value).ok().and_then(char::from_u32) else {
        return "'\\ufffd'".to_string();
    };
    match c {
        '\'' => "'\\''".to_string(),
        '\\' => "'\\\\'".to_string(),
        '\u{07}' => "'\\a'".to_string(),
        '\u{08}' => "'\\b'".to_string(),
        '\u{0C}' => "'\\f'".to_string(),
        '\n' => "'\\n'".to_string(),
        '\r' => "'\\r'".to_string(),
        '\t' => "'\\t'".to_string(),
        '\u{0B}' => "'\\v'".to_string(),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => format!("'\\x{:02x}'", c as u32),
        c if (c as u32) < 0x80 || !c.is_control() => format!("'{c}'"),
        c if (c as u32) <= 0xffff => format!("'\\u{:04x}'", c as u32),
        c => format!("'\\U{:08x}'", c as u32),
    }
}

/// `fmt.Sprintf("HEALTHCHECK %q", &HealthConfig{...})`:
/// `HEALTHCHECK &{["CMD-SHELL" "curl -f http://localhost/"] "30s" "3s" "0s" "0s" '\x03'}`.
pub fn healthcheck_created_by(check: &Healthcheck) -> String {
    format!(
        "HEALTHCHECK &{{{} {} {} {} {} {}}}",
        go_quote_list(&check.test),
        go_quote(&go_duration(check.interval)),
        go_quote(&go_duration(check.timeout)),
        go_quote(&go_duration(check.start_period)),
        go_quote(&go_duration(check.start_interval)),
        go_quote_rune(check.retries)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let check = |nanos: u64, expect: &str| {
            assert_eq!(
                go_duration(Duration::from_nanos(nanos)),
                expect,
                "{nanos}ns"
            )
        };
        check(0, "0s");
        check(999, "999ns");
        check(2_000, "2µs");
        check(500_000_000, "500ms");
        check(1_500_000, "1.5ms");
        check(1_500_000_000, "1.5s");
        check(30_000_000_000, "30s");
        check(300_000_000_000, "5m0s");
        check(3_600_000_000_000, "1h0m0s");
        check(3_723_000_000_000, "1h2m3s");
    }

    #[test]
    fn go_verbs() {
        let list = vec![
            "nginx".to_string(),
            "-g".to_string(),
            "daemon off;".to_string(),
        ];
        assert_eq!(go_quote_list(&list), r#"["nginx" "-g" "daemon off;"]"#);
        assert_eq!(go_list(&["/data".to_string()]), "[/data]");
        assert_eq!(
            go_port_map(&["80/tcp".to_string(), "443/tcp".to_string()]),
            "map[443/tcp:{} 80/tcp:{}]"
        );
        assert_eq!(go_quote_rune(3), r"'\x03'");
        assert_eq!(go_quote_rune(0), r"'\x00'");
        assert_eq!(go_quote_rune(65), "'A'");
    }

    #[test]
    fn healthcheck_text() {
        let check = Healthcheck {
            test: vec![
                "CMD-SHELL".to_string(),
                "curl -f http://localhost/ || exit 1".to_string(),
            ],
            interval: Duration::from_secs(300),
            timeout: Duration::from_secs(3),
            retries: 3,
            ..Healthcheck::default()
        };
        assert_eq!(
            healthcheck_created_by(&check),
            r#"HEALTHCHECK &{["CMD-SHELL" "curl -f http://localhost/ || exit 1"] "5m0s" "3s" "0s" "0s" '\x03'}"#
        );
    }
}
