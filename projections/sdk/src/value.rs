//! Typed values written to columns, and the text-encoded kinds of value ([`Decimal`],
//! [`Timestamp`], [`Uuid`], [`Json`]).
//!
//! The text kinds are thin wrappers that say which WIT `value` case a string goes in; the SDK
//! does not parse or validate them (the host does, and fails the batch on a bad encoding).
//! Anything that converts into a [`Value`] can be passed to the mutation builders:
//!
//! | Rust | [`Value`] case | column type |
//! |---|---|---|
//! | `&str`, `String` | [`Value::Text`] | `text` |
//! | `i64`, `i32`, `u32` | [`Value::S64`] | `s64` |
//! | `f64` | [`Value::F64`] | `f64` |
//! | `bool` | [`Value::Bool`] | `bool` |
//! | `Vec<u8>`, `&[u8]` | [`Value::Bytes`] | `bytes` |
//! | [`Decimal`] | [`Value::Decimal`] | `decimal` |
//! | [`Timestamp`] | [`Value::Timestamp`] | `timestamp` |
//! | [`Uuid`] | [`Value::Uuid`] | `uuid` |
//! | [`Json`] | [`Value::Json`] | `json` |
//! | `Option<T>` | `None` → [`Value::Null`], `Some(t)` → `t`'s case | nullable columns |

use std::fmt;

/// A value of a column, one case per WIT `value` case.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL `NULL`: for nullable, non-key columns only.
    Null,
    /// A `bool` column's value.
    Bool(bool),
    /// An `s64` (`BIGINT`) column's value.
    S64(i64),
    /// An `f64` (`DOUBLE PRECISION`) column's value.
    F64(f64),
    /// A `text` column's value (no NUL characters).
    Text(String),
    /// A `decimal` (`NUMERIC`) column's value: `-?digits[.digits]`.
    Decimal(String),
    /// A `json` (`JSONB`) column's value: JSON text.
    Json(String),
    /// A `timestamp` (`TIMESTAMPTZ`) column's value: RFC 3339 text.
    Timestamp(String),
    /// A `uuid` column's value: hyphenated text.
    Uuid(String),
    /// A `bytes` (`BYTEA`) column's value.
    Bytes(Vec<u8>),
}

impl Value {
    /// A [`Value::Text`].
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }

    /// A [`Value::Decimal`] from its text, e.g. `"-12.50"`.
    pub fn decimal(text: impl Into<String>) -> Self {
        Self::Decimal(text.into())
    }

    /// A [`Value::Json`] from JSON text.
    pub fn json(text: impl Into<String>) -> Self {
        Self::Json(text.into())
    }

    /// A [`Value::Timestamp`] from RFC 3339 text, e.g. `"2026-11-26T12:00:00.000Z"`.
    pub fn timestamp(text: impl Into<String>) -> Self {
        Self::Timestamp(text.into())
    }

    /// A [`Value::Uuid`] from hyphenated text.
    pub fn uuid(text: impl Into<String>) -> Self {
        Self::Uuid(text.into())
    }
}

/// Declares a text-encoded value kind: a `String` newtype that converts into its `Value` case.
macro_rules! text_kind {
    ($(#[$doc:meta])* $name:ident => $case:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("A ", stringify!($name), " from its text (not validated: the host checks it).")]
            pub fn new(text: impl Into<String>) -> Self {
                Self(text.into())
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The text, by value.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                Self(text)
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                Self(text.to_owned())
            }
        }

        impl From<$name> for Value {
            fn from(value: $name) -> Self {
                Value::$case(value.0)
            }
        }

        impl From<&$name> for Value {
            fn from(value: &$name) -> Self {
                Value::$case(value.0.clone())
            }
        }
    };
}

text_kind!(
    /// A decimal number as text (`NUMERIC`), e.g. `"100.00"`.
    Decimal => Decimal
);
text_kind!(
    /// An RFC 3339 timestamp as text (`TIMESTAMPTZ`), e.g. `"2026-11-26T12:00:00.000Z"`.
    Timestamp => Timestamp
);
text_kind!(
    /// A hyphenated UUID as text (`UUID`).
    Uuid => Uuid
);
text_kind!(
    /// A JSON document as text (`JSONB`).
    Json => Json
);

impl Decimal {
    /// Whether the number is zero, judged on its text: it has no digit `1`–`9`, so `"0"`,
    /// `"0.00"` and `"-0"` are zero. Text that is not a decimal at all (which the host would
    /// refuse) has no such digit either and counts as zero.
    pub fn is_zero(&self) -> bool {
        !self.0.bytes().any(|b| (b'1'..=b'9').contains(&b))
    }

    /// The number with its sign flipped, on its text: a leading `-` is removed, otherwise one
    /// is added (`"0"` becomes `"-0"`, which PostgreSQL reads as zero).
    pub fn negated(&self) -> Decimal {
        match self.0.strip_prefix('-') {
            Some(positive) => Decimal(positive.to_owned()),
            None => Decimal(format!("-{}", self.0)),
        }
    }
}

impl Json {
    /// Parses the text.
    pub fn parse(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_str(&self.0)
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::Text(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::Text(text)
    }
}

impl From<&String> for Value {
    fn from(text: &String) -> Self {
        Value::Text(text.clone())
    }
}

impl From<i64> for Value {
    fn from(number: i64) -> Self {
        Value::S64(number)
    }
}

impl From<i32> for Value {
    fn from(number: i32) -> Self {
        Value::S64(number.into())
    }
}

impl From<u32> for Value {
    fn from(number: u32) -> Self {
        Value::S64(number.into())
    }
}

impl From<f64> for Value {
    fn from(number: f64) -> Self {
        Value::F64(number)
    }
}

impl From<bool> for Value {
    fn from(flag: bool) -> Self {
        Value::Bool(flag)
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Self {
        Value::Bytes(bytes)
    }
}

impl From<&[u8]> for Value {
    fn from(bytes: &[u8]) -> Self {
        Value::Bytes(bytes.to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_values_land_in_their_wit_cases() {
        assert_eq!(Value::from("a"), Value::Text("a".into()));
        assert_eq!(Value::from(String::from("a")), Value::Text("a".into()));
        assert_eq!(Value::from(7i64), Value::S64(7));
        assert_eq!(Value::from(7), Value::S64(7));
        assert_eq!(Value::from(7u32), Value::S64(7));
        assert_eq!(Value::from(1.5), Value::F64(1.5));
        assert_eq!(Value::from(true), Value::Bool(true));
        assert_eq!(Value::from(vec![1u8, 2]), Value::Bytes(vec![1, 2]));
        assert_eq!(Value::from(&b"ab"[..]), Value::Bytes(b"ab".to_vec()));
        assert_eq!(
            Value::from(Decimal::new("1.5")),
            Value::Decimal("1.5".into())
        );
        assert_eq!(
            Value::from(&Timestamp::new("t")),
            Value::Timestamp("t".into())
        );
        assert_eq!(Value::from(Uuid::new("u")), Value::Uuid("u".into()));
        assert_eq!(Value::from(Json::new("{}")), Value::Json("{}".into()));
        assert_eq!(Value::from(None::<&str>), Value::Null);
        assert_eq!(Value::from(Some("x")), Value::Text("x".into()));
        assert_eq!(Value::decimal("2"), Value::Decimal("2".into()));
        assert_eq!(Value::json("[]"), Value::Json("[]".into()));
        assert_eq!(Value::timestamp("t"), Value::Timestamp("t".into()));
        assert_eq!(Value::uuid("u"), Value::Uuid("u".into()));
        assert_eq!(Value::text("t"), Value::Text("t".into()));
    }

    #[test]
    fn decimals_are_zero_and_negated_on_their_text() {
        for zero in ["0", "0.00", "-0", "", "abc"] {
            assert!(Decimal::new(zero).is_zero(), "{zero}");
        }
        for non_zero in ["1", "0.01", "-10", "9"] {
            assert!(!Decimal::new(non_zero).is_zero(), "{non_zero}");
        }
        assert_eq!(Decimal::new("12.50").negated(), Decimal::new("-12.50"));
        assert_eq!(Decimal::new("-12.50").negated(), Decimal::new("12.50"));
        assert_eq!(Decimal::new("0").negated().as_str(), "-0");
    }

    #[test]
    fn text_kinds_show_their_text() {
        let id = Uuid::new("00000000-0000-0000-0000-000000000001");
        assert_eq!(id.to_string(), "00000000-0000-0000-0000-000000000001");
        assert_eq!(id.as_ref(), id.as_str());
        assert_eq!(Json::new(r#"{"a":1}"#).parse().unwrap()["a"], 1);
        assert_eq!(Timestamp::from("x").into_string(), "x");
    }
}
