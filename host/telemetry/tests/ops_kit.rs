//! The operations kit in `host/ops/`: the alert rules pass `promtool check rules` and their unit
//! tests (`promtool test rules`); the dashboard is valid JSON; and every metric the rules and
//! the dashboard query is one the server exports (`wallex_telemetry::catalogue::ALL`), so a
//! renamed metric cannot leave a silent alert or an empty panel behind.
//!
//! `promtool` comes from Debian's `prometheus` package. Without it these tests say so and check
//! the rest; under `CI=true` a missing `promtool` is a failure (`.ci/run` installs it).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use wallex_telemetry::catalogue::ALL;

fn ops(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ops")
        .join(path)
}

/// Runs `promtool` with these arguments; `None` when it is not installed (and not in CI).
fn promtool(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("promtool").args(args).output() {
        Ok(output) => Some(output),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "promtool is not installed (apt-get install prometheus)"
            );
            eprintln!("SKIPPED: promtool is not installed; the rules were not run through it");
            None
        }
        Err(error) => panic!("promtool: {error}"),
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = ops("prometheus/wallex-alerts.yml");
    let tests = ops("prometheus/wallex-alerts.test.yml");
    for args in [
        vec!["check", "rules", rules.to_str().expect("path")],
        vec!["test", "rules", tests.to_str().expect("path")],
    ] {
        let Some(output) = promtool(&args) else {
            return;
        };
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Metric names a PromQL text mentions: identifiers of wallex's metric families, with the
/// histogram suffixes taken off.
fn metrics_in(text: &str) -> BTreeSet<String> {
    const FAMILIES: [&str; 6] = [
        "http_",
        "wallet_",
        "idempotency_",
        "db_pool_",
        "outbox_",
        "projector_",
    ];
    let mut found = BTreeSet::new();
    let mut word = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if FAMILIES.iter().any(|f| word.starts_with(f)) {
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(&word);
            found.insert(name.to_owned());
        }
        word.clear();
    }
    found
}

fn assert_known(source: &str, used: &BTreeSet<String>) {
    assert!(!used.is_empty(), "{source} queries no wallex metric");
    let unknown: Vec<_> = used.iter().filter(|m| !ALL.contains(&m.as_str())).collect();
    assert!(
        unknown.is_empty(),
        "{source} queries metrics the server does not export: {unknown:?}"
    );
}

#[test]
fn rules_and_dashboard_query_only_exported_metrics() {
    let rules = std::fs::read_to_string(ops("prometheus/wallex-alerts.yml")).expect("rules");
    let exprs: String = rules
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let used = metrics_in(&exprs);
    assert_known("wallex-alerts.yml", &used);
    for required in [
        "outbox_lag_events",
        "outbox_lag_seconds",
        "projector_batches_failed_total",
        "wallet_create_duration_ms",
        "projector_status",
        "projector_rebuild_status",
    ] {
        assert!(used.contains(required), "no alert uses {required}");
    }

    let text = std::fs::read_to_string(ops("grafana/wallex-dashboard.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{} queries", exprs.len());
    assert_known("wallex-dashboard.json", &metrics_in(&exprs.join("\n")));
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_metric_scanner_finds_names_and_strips_histogram_suffixes() {
    let found = metrics_in(
        "histogram_quantile(0.95, sum by (le) (rate(wallet_create_duration_ms_bucket[5m]))) \
         / projector_status{status=\"failed\"} + label_values(outbox_lag_events, projection)",
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        [
            "outbox_lag_events",
            "projector_status",
            "wallet_create_duration_ms"
        ]
    );
}
