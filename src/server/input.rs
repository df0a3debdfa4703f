//! Text that enters over HTTP, checked once at the edge: a form body is decoded strictly (a
//! field that is not UTF-8 is refused, 400, naming it), and every text value is free of
//! control characters (422) and within its field's length (422). Email addresses are
//! normalised by [`crate::domain::Email::parse`] everywhere they enter.

use super::error::ApiError;

/// Characters allowed per kind of field (documented in the README and the OpenAPI
/// description).
pub mod max {
    /// `first_name` / `name`.
    pub const NAME: usize = 100;
    /// `timezone`.
    pub const TIMEZONE: usize = 64;
    /// `utm_source`, `utm_medium`, `utm_campaign`, `utm_term`, `utm_content`, and the short
    /// texts of the events API (`product`, `order_id`, `id`, `currency`).
    pub const SHORT: usize = 200;
    /// `referrer`, `landing_url` and every other lead field.
    pub const LONG: usize = 2_000;
    /// An email address (RFC 5321: 254).
    pub const EMAIL: usize = 254;
}

/// Whether a character is one no stored text may hold: control characters (C0, DEL, C1 — line
/// breaks and NUL included) and the Unicode line and paragraph separators.
pub fn is_forbidden(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// `value` trimmed, if it holds no forbidden character and at most `max` characters; else
/// the refusal naming `field`.
pub fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if let Some((i, c)) = v.chars().enumerate().find(|(_, c)| is_forbidden(*c)) {
        return Err(ApiError::invalid(
            field,
            format!(
                "control character U+{:04X} at character {} (text fields are one line of printable text)",
                c as u32,
                i + 1
            ),
        ));
    }
    let n = v.chars().count();
    if n > max {
        return Err(ApiError::invalid(
            field,
            format!("{n} characters; at most {max} are allowed"),
        ));
    }
    Ok(v.to_string())
}

/// The fields of an `application/x-www-form-urlencoded` body, in order. `+` is a space and
/// `%XX` a byte; a name or value whose bytes are not UTF-8 is refused (400) naming the field,
/// instead of being stored with replacement characters.
pub fn form(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |raw: &[u8]| -> Vec<u8> {
        let plus: Vec<u8> = raw
            .iter()
            .map(|b| if *b == b'+' { b' ' } else { *b })
            .collect();
        percent_encoding::percent_decode(&plus).collect()
    };
    let mut out = Vec::new();
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let (k, v) = (decode(k), decode(v));
        let name = String::from_utf8(k).map_err(|e| {
            let shown = String::from_utf8_lossy(e.as_bytes()).into_owned();
            ApiError::malformed(&shown, "the field name is not UTF-8 text")
        })?;
        let value = String::from_utf8(v)
            .map_err(|_| ApiError::malformed(&name, "the value is not UTF-8 text"))?;
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode_strictly() {
        assert_eq!(
            form(b"email=a%40b.io&first_name=Anna+Maria&empty=&flag").unwrap(),
            [
                ("email".to_string(), "a@b.io".to_string()),
                ("first_name".into(), "Anna Maria".into()),
                ("empty".into(), String::new()),
                ("flag".into(), String::new()),
            ]
        );
        assert_eq!(
            form("city=%D0%9C%D0%BE%D1%81%D0%BA%D0%B2%D0%B0".as_bytes()).unwrap()[0].1,
            "Москва"
        );
        let bad = form(b"email=a%40b.io&first_name=%FF%FE").unwrap_err();
        assert_eq!(
            (bad.status.as_u16(), bad.field.as_str()),
            (400, "first_name")
        );
    }

    #[test]
    fn text_is_one_line_and_bounded() {
        assert_eq!(text("f", "  Anna  ", 10).unwrap(), "Anna");
        for bad in [
            "An\nna",
            "An\u{0}na",
            "\u{1b}[31m",
            "a\u{2028}b",
            "a\u{85}b",
        ] {
            let e = text("first_name", bad, 100).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.field.as_str()),
                (422, "first_name"),
                "{bad:?}"
            );
        }
        assert_eq!(text("f", &"я".repeat(10), 10).unwrap().chars().count(), 10);
        assert!(text("f", &"я".repeat(11), 10).is_err());
    }
}
