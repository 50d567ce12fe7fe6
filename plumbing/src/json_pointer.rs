//! The one rule of RFC 6901 both binaries' own JSON pointer walks share.

/// An array index token as RFC 6901 and `serde_json::Value::pointer` read
/// it: digits, no sign, no leading zero.
pub fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_without_sign_or_leading_zero() {
        for (token, want) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("10", Some(10)),
            ("01", None),
            ("+1", None),
            ("-1", None),
            ("", None),
            ("a", None),
        ] {
            assert_eq!(array_index(token), want, "{token:?}");
        }
    }
}
