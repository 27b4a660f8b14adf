//! Edge validation helpers shared by every resource: each check reports the field it refused.

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// `text`'s "no control characters", for the API document (lengths are stated per field).
pub const TEXT_PATTERN: &str = "^[^\\x00-\\x1f\\x7f-\\x9f]*$";

/// A string of `min..=max` characters without control characters.
pub fn text(errors: &mut Vec<FieldError>, field: &str, value: &str, min: usize, max: usize) {
    let n = value.chars().count();
    if n < min || n > max {
        errors.push(FieldError::new(field, format!("must be {min}-{max} characters")));
    } else if value.chars().any(char::is_control) {
        errors.push(FieldError::new(field, "must not contain control characters"));
    }
}

/// `sku`'s rule, for the API document.
pub const SKU_PATTERN: &str = "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,64}$";

/// SKU: 1-64 characters of letters, digits, '.', '_' and '-'; safe in paths and logs.
pub fn sku(value: &str) -> Result<(), FieldError> {
    // `.` and `..` are path segments, not names: a URL with them is rewritten on the way.
    let ok = (1..=64).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && value != "."
        && value != "..";
    if ok {
        Ok(())
    } else {
        Err(FieldError::new("sku", "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-', and not '.' or '..'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_bounds_and_controls() {
        let mut e = Vec::new();
        text(&mut e, "name", "ok", 1, 5);
        assert!(e.is_empty());
        text(&mut e, "name", "", 1, 5);
        text(&mut e, "name", "toolong", 1, 5);
        text(&mut e, "name", "a\u{0}b", 1, 5);
        assert_eq!(e.len(), 3);
        // Characters, not bytes.
        let mut e = Vec::new();
        text(&mut e, "name", "ёжик", 1, 4);
        assert!(e.is_empty());
    }

    #[test]
    fn sku_charset() {
        assert!(sku("TSHIRT-RED.XL_2").is_ok());
        assert!(sku("").is_err());
        assert!(sku("a/b").is_err());
        assert!(sku(&"x".repeat(65)).is_err());
        assert!(sku(".").is_err() && sku("..").is_err());
        assert!(sku("...").is_ok() && sku(".5").is_ok());
    }
}
