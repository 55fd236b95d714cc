//! Durations (`30s`, `4h`, `1h30m`) and Kubernetes quantities (`500m`, `64Gi`), parsed and bounded.

use std::time::Duration;

/// Parses `90s`, `10m`, `4h`, `2d`, `1h30m`: one or more whole numbers each followed by a unit.
///
/// Written here because the duration crates accept forms (spaces, fractions, `min`) that
/// Kubernetes and cron users do not write, and a zero duration is never meaningful here.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const FORMS: &str =
        "write it as whole numbers with units s, m, h or d, such as 30s, 10m, 4h or 1h30m";
    if text.is_empty() {
        return Err(format!("empty duration; {FORMS}"));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("invalid duration {text:?}; {FORMS}")),
        };
        let amount: u64 = digits
            .parse()
            .map_err(|_| format!("invalid duration {text:?}; {FORMS}"))?;
        digits.clear();
        total = amount
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("duration {text:?} is too long"))?;
    }
    if !digits.is_empty() {
        return Err(format!("duration {text:?} has no unit; {FORMS}"));
    }
    if total == 0 {
        return Err(format!("duration {text:?} is zero; it must be positive"));
    }
    Ok(Duration::from_secs(total))
}

/// Renders a duration the way users write it (`1h30m`).
pub fn format_duration(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// What a quantity measures, for the checks that differ between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantityKind {
    /// CPU cores (`500m`, `2`).
    Cpu,
    /// Bytes (`512Mi`, `64Gi`).
    Memory,
}

/// Parses a Kubernetes resource quantity and returns its value in base units (cores or bytes).
///
/// Follows the grammar of `k8s.io/apimachinery/pkg/api/resource`: a decimal number followed
/// by a binary suffix (Ki..Ei), a decimal suffix (n, u, m, k, M..E) or an exponent.
pub fn parse_quantity(text: &str, kind: QuantityKind) -> Result<f64, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let invalid = || match kind {
        QuantityKind::Cpu => {
            format!("invalid CPU quantity {text:?}; write cores such as 2 or 500m")
        }
        QuantityKind::Memory => {
            format!("invalid memory quantity {text:?}; write bytes such as 512Mi or 64Gi")
        }
    };
    if number.is_empty() || number.starts_with('.') && number.len() == 1 {
        return Err(invalid());
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| invalid())?;
            10f64.powi(exp)
        }
        _ => return Err(invalid()),
    };
    let total = value * multiplier;
    if !total.is_finite() || total <= 0.0 {
        return Err(format!("quantity {text:?} must be positive"));
    }
    if kind == QuantityKind::Memory && total < 1.0 {
        return Err(format!(
            "memory {text:?} is less than one byte (m means milli); did you mean {number}Mi?"
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_combine_units() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn durations_without_units_or_with_fractions_are_refused() {
        for bad in ["", "10", "1.5h", "4 h", "4hours", "0s", "h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn durations_format_back_to_their_written_form() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(86_400 + 1)), "1d1s");
    }

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        assert_eq!(parse_quantity("500m", QuantityKind::Cpu), Ok(0.5));
        assert_eq!(parse_quantity("8", QuantityKind::Cpu), Ok(8.0));
        assert_eq!(
            parse_quantity("64Gi", QuantityKind::Memory),
            Ok(64.0 * 1024f64.powi(3))
        );
        assert_eq!(parse_quantity("1e3", QuantityKind::Memory), Ok(1000.0));
        assert_eq!(parse_quantity("1.5", QuantityKind::Cpu), Ok(1.5));
    }

    #[test]
    fn malformed_or_nonpositive_quantities_are_refused() {
        for bad in ["", "Gi", "64GB", "-1", "0", "1.2.3", "8 cores", "."] {
            assert!(
                parse_quantity(bad, QuantityKind::Memory).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn memory_in_millibytes_suggests_mebibytes() {
        let err = parse_quantity("512m", QuantityKind::Memory).expect_err("millibytes");
        assert!(err.contains("512Mi"), "{err}");
    }
}
