//! The one output format of every bench, read by `bench.sh` into its table:
//! `FIGURE<TAB>figure<TAB>value<TAB>unit<TAB>baseline<TAB>baseline unit<TAB>ratio`.
//! A figure that is not a finite number fails the bench (that is what the
//! short mode in CI checks); nothing here compares a time with a bound.

#![allow(dead_code)]

/// `--short` anywhere on the command line (cargo passes `--bench` too, ignored).
pub fn short() -> bool {
    std::env::args().any(|a| a == "--short")
}

fn check(what: &str, v: f64) {
    assert!(v.is_finite() && v >= 0.0, "{what}: not a finite, non-negative number: {v}");
}

/// A figure with no same-run baseline (a latency, a count).
pub fn figure(name: &str, value: f64, unit: &str) {
    check(name, value);
    println!("FIGURE\t{name}\t{}\t{unit}\t-\t-\t-", fmt(value));
}

/// A figure beside the baseline measured in the same run; the ratio is
/// value / baseline (both in the same unit).
pub fn against(name: &str, value: f64, unit: &str, baseline: f64, baseline_what: &str) {
    check(name, value);
    check(baseline_what, baseline);
    assert!(baseline > 0.0, "{name}: baseline {baseline_what} is zero");
    println!(
        "FIGURE\t{name}\t{}\t{unit}\t{}\t{baseline_what}\t{:.4}",
        fmt(value),
        fmt(baseline),
        value / baseline
    );
}

fn fmt(v: f64) -> String {
    // Whole numbers and large ones without decimals; small ones with three.
    if (v == v.trunc() && v.abs() < 1e15) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
