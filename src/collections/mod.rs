//! The seed API (pymongo-api): named collections of user documents `{id, name, age, ...extra}`.
//! Its routes keep FastAPI's response shapes so the seed's clients keep working unchanged.

pub mod routes;

use std::sync::atomic::{AtomicU32, Ordering};

use serde::ser::SerializeMap;
use serde::Serialize;
use serde_json::{Map, Value};

pub const MAX_LIST: usize = 1000;
pub const MAX_NAME_CHARS: usize = 256;
pub const MAX_DOC_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct UserDoc {
    pub id: String,
    pub name: String,
    pub age: i64,
    /// Fields beyond `name` and `age`, kept as sent.
    pub extra: Map<String, Value>,
}

impl Serialize for UserDoc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3 + self.extra.len()))?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("name", &self.name)?;
        m.serialize_entry("age", &self.age)?;
        for (k, v) in &self.extra {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// `valid_collection`'s rule, for the API document.
pub const COLLECTION_PATTERN: &str = "^(?!\\.{1,2}$)[A-Za-z0-9._-]{1,64}$";

/// Collection names as MongoDB would accept them, narrowed to what is safe in a URL path
/// (`.` and `..` are path segments, not names).
pub fn valid_collection(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && name != "."
        && name != ".."
}

/// A MongoDB-style ObjectId (seconds, random, counter as 24 hex digits), so ids look the same
/// to the seed's clients as they did before.
pub fn object_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    static PROCESS: std::sync::OnceLock<[u8; 5]> = std::sync::OnceLock::new();
    let secs = chrono::Utc::now().timestamp() as u32;
    let process = PROCESS.get_or_init(rand::random);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&secs.to_be_bytes());
    b[4..9].copy_from_slice(process);
    b[9..].copy_from_slice(&n.to_be_bytes()[1..]);
    hex::encode(b)
}

/// A FastAPI-style validation error entry: `{"type", "loc", "msg", "input"}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ValidationIssue {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub loc: Vec<Value>,
    pub msg: String,
    pub input: Value,
}

fn issue(kind: &'static str, field: &str, msg: &str, input: Value) -> ValidationIssue {
    ValidationIssue { kind, loc: vec!["body".into(), field.into()], msg: msg.into(), input }
}

/// Checks a posted user document the way the seed's pydantic model did: `name` a string, `age`
/// an integer (an integral float such as `30.0` is accepted, as pydantic does), extras kept.
pub fn parse_user(body: Value) -> Result<UserDoc, Vec<ValidationIssue>> {
    let Value::Object(mut obj) = body else {
        return Err(vec![ValidationIssue {
            kind: "model_attributes_type",
            loc: vec!["body".into()],
            msg: "Input should be a valid dictionary or object to extract fields from".into(),
            input: body,
        }]);
    };
    let whole = Value::Object(obj.clone());
    let mut issues = Vec::new();
    let name = match obj.remove("name") {
        Some(Value::String(s)) if s.chars().count() <= MAX_NAME_CHARS => Some(s),
        Some(Value::String(s)) => {
            issues.push(issue(
                "string_too_long",
                "name",
                &format!("String should have at most {MAX_NAME_CHARS} characters"),
                Value::String(s),
            ));
            None
        }
        Some(other) => {
            issues.push(issue("string_type", "name", "Input should be a valid string", other));
            None
        }
        None => {
            issues.push(issue("missing", "name", "Field required", whole.clone()));
            None
        }
    };
    let age = match obj.remove("age") {
        Some(Value::Number(n)) => {
            // Any integral number in range, as pydantic takes `30.0`; beyond 2^53 every float
            // is integral, and the nearest integer is what JSON meant.
            let integral = |f: &f64| f.fract() == 0.0 && *f >= i64::MIN as f64 && *f < i64::MAX as f64;
            match n.as_i64().or_else(|| n.as_f64().filter(integral).map(|f| f as i64)) {
                Some(a) => Some(a),
                None => {
                    issues.push(issue(
                        "int_from_float",
                        "age",
                        "Input should be a valid integer, got a number with a fractional part",
                        Value::Number(n),
                    ));
                    None
                }
            }
        }
        Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => s.trim().parse::<i64>().ok(),
        Some(other) => {
            issues.push(issue(
                "int_parsing",
                "age",
                "Input should be a valid integer, unable to parse string as an integer",
                other,
            ));
            None
        }
        None => {
            issues.push(issue("missing", "age", "Field required", whole));
            None
        }
    };
    // The id is assigned here, never taken from the client, as MongoDB's `_id` was.
    obj.remove("id");
    obj.remove("_id");
    if serde_json::to_vec(&obj).map_or(true, |b| b.len() > MAX_DOC_BYTES) {
        issues.push(ValidationIssue {
            kind: "too_large",
            loc: vec!["body".into()],
            msg: format!("Extra fields should serialize to at most {MAX_DOC_BYTES} bytes"),
            input: Value::Null,
        });
    }
    match (name, age, issues.is_empty()) {
        (Some(name), Some(age), true) => Ok(UserDoc { id: object_id(), name, age, extra: obj }),
        _ => Err(issues),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_extra_fields_and_assigns_id() {
        let d = parse_user(json!({"name": "ann", "age": 30, "city": "Oslo", "id": "forged"})).unwrap();
        assert_eq!(d.name, "ann");
        assert_eq!(d.age, 30);
        assert_ne!(d.id, "forged");
        assert_eq!(d.id.len(), 24);
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["city"], "Oslo");
        assert_eq!(v["id"], d.id.as_str());
    }

    #[test]
    fn refuses_wrong_types_like_pydantic() {
        let e = parse_user(json!({"name": 5, "age": "x"})).unwrap_err();
        assert_eq!(e.iter().map(|i| i.kind).collect::<Vec<_>>(), vec!["string_type", "int_parsing"]);
        let e = parse_user(json!({})).unwrap_err();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].loc, vec![json!("body"), json!("name")]);
        assert!(parse_user(json!([1])).is_err());
        assert!(parse_user(json!({"name": "a", "age": 1.5})).is_err());
        assert_eq!(parse_user(json!({"name": "a", "age": 2.0})).unwrap().age, 2);
        assert_eq!(parse_user(json!({"name": "a", "age": "7"})).unwrap().age, 7);
    }

    #[test]
    fn object_ids_are_unique_and_hex() {
        let a = object_id();
        let b = object_id();
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn collection_names() {
        assert!(valid_collection("helloDoc"));
        assert!(!valid_collection(""));
        assert!(!valid_collection("a/b"));
        assert!(!valid_collection(&"x".repeat(65)));
        assert!(!valid_collection(".") && !valid_collection(".."));
        assert!(valid_collection("a.b") && valid_collection("..x"));
    }
}
