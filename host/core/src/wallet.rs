//! The wallet domain: the create-wallet command, its validation, the snapshot and its JSON form.
//!
//! Why it exists: the rules of what a valid wallet is live in one place, independent of HTTP and
//! of storage. Money is `rust_decimal`, parsed exactly from the request's JSON text (never through
//! `f64`) and rendered back with the same digits.

use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::currency::{is_iso_4217, minor_units, DEFAULT_CURRENCY};

/// One invalid field of a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON Pointer to the field (RFC 6901), e.g. `#/initialBalance`.
    pub pointer: String,
    /// The field's name (empty for the body as a whole).
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

impl FieldError {
    /// The error of top-level field `field`, with its pointer derived from the name.
    pub fn new(field: &str, detail: impl Into<String>) -> Self {
        Self {
            pointer: format!("#/{field}"),
            field: field.to_owned(),
            detail: detail.into(),
        }
    }
}

/// Longest wallet or owner id.
pub const MAX_ID_LEN: usize = 128;
/// Most fractional digits an amount may have in any currency (what the `wallets.balance` column
/// keeps); a currency with a minor unit allows only its own digits ([`check_minor_units`]).
pub const MAX_AMOUNT_SCALE: u32 = 8;
/// Largest amount (1e15).
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(0xA4C6_8000, 0x0003_8D7E, 0, false, 0);
/// Event type of a wallet's creation.
pub const WALLET_CREATED: &str = "WalletCreated";

/// A validated request to create a wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateWallet {
    /// The new wallet's id, chosen by the client; also names its event stream.
    pub wallet_id: String,
    /// Who the wallet belongs to.
    pub owner_id: String,
    /// Opening balance: not negative, at most [`MAX_AMOUNT`], with no more fractional digits
    /// than the currency's minor unit allows ([`check_minor_units`]), with the digits the client
    /// sent.
    pub initial_balance: Decimal,
    /// ISO 4217 code; [`DEFAULT_CURRENCY`] when the body has none.
    pub currency: String,
}

const CREATE_FIELDS: [&str; 4] = ["walletId", "ownerId", "initialBalance", "currency"];

impl CreateWallet {
    /// Validates a JSON body, collecting every field error rather than stopping at the first.
    pub fn from_json(body: &Value) -> Result<Self, Vec<FieldError>> {
        let (object, mut errors) = body_object(body, &CREATE_FIELDS)?;
        let wallet_id = required_id(object, "walletId", &mut errors);
        let owner_id = required_id(object, "ownerId", &mut errors);
        let initial_balance = match object.get("initialBalance") {
            None => {
                errors.push(FieldError::new("initialBalance", "is required"));
                None
            }
            Some(value) => match parse_amount(value) {
                Ok(amount) => Some(amount),
                Err(detail) => {
                    errors.push(FieldError::new("initialBalance", detail));
                    None
                }
            },
        };
        let currency = match object.get("currency") {
            None => Some(DEFAULT_CURRENCY.to_owned()),
            Some(Value::String(code)) if is_iso_4217(code) => Some(code.clone()),
            Some(Value::String(_)) => {
                errors.push(FieldError::new(
                    "currency",
                    "must be an active ISO 4217 code in upper case, e.g. \"USD\"",
                ));
                None
            }
            Some(_) => {
                errors.push(FieldError::new("currency", "must be a string"));
                None
            }
        };
        if let (Some(amount), Some(code)) = (initial_balance, &currency) {
            if let Err(detail) = check_minor_units(amount, code) {
                errors.push(FieldError::new("initialBalance", detail));
            }
        }
        match (wallet_id, owner_id, initial_balance, currency) {
            (Some(wallet_id), Some(owner_id), Some(initial_balance), Some(currency))
                if errors.is_empty() =>
            {
                Ok(Self {
                    wallet_id,
                    owner_id,
                    initial_balance,
                    currency,
                })
            }
            _ => Err(errors),
        }
    }
}

/// A body's fields, and the errors found so far.
pub(crate) type BodyFields<'a> = (&'a Map<String, Value>, Vec<FieldError>);

/// A request body as a JSON object, with an "unknown field" error for each field not in
/// `allowed` (the caller adds its own); not an object, the one error about the body.
pub(crate) fn body_object<'a>(
    body: &'a Value,
    allowed: &[&str],
) -> Result<BodyFields<'a>, Vec<FieldError>> {
    let Some(object) = body.as_object() else {
        return Err(vec![FieldError {
            pointer: "#".into(),
            field: String::new(),
            detail: "the body must be a JSON object".into(),
        }]);
    };
    let errors = object
        .keys()
        .filter(|name| !allowed.contains(&name.as_str()))
        .map(|name| FieldError::new(name, "unknown field"))
        .collect();
    Ok((object, errors))
}

/// A required id field (a wallet's or an owner's), checked by [`validate_id`]; `None` with its
/// error added when it is missing or invalid.
pub(crate) fn required_id(
    object: &Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match object.get(field) {
        None => errors.push(FieldError::new(field, "is required")),
        Some(Value::String(id)) => match validate_id(id) {
            Ok(()) => return Some(id.clone()),
            Err(detail) => errors.push(FieldError::new(field, detail)),
        },
        Some(_) => errors.push(FieldError::new(field, "must be a string")),
    }
    None
}

/// Checks a wallet or owner id: 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn validate_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err("must be 1 to 128 characters long");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err("may only contain letters, digits, '.', '_', ':' and '-'");
    }
    Ok(())
}

/// Parses an amount from a JSON number or string, exactly.
pub fn parse_amount(value: &Value) -> Result<Decimal, String> {
    let text = match value {
        // With serde_json's arbitrary_precision, a number keeps its source text.
        Value::Number(number) => number.to_string(),
        Value::String(text) => text.clone(),
        _ => return Err("must be a number or a decimal string".into()),
    };
    let amount = parse_decimal_text(&text)?;
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err("must not be negative".into());
    }
    if amount.scale() > MAX_AMOUNT_SCALE {
        return Err(format!(
            "must have at most {MAX_AMOUNT_SCALE} fractional digits"
        ));
    }
    if amount > MAX_AMOUNT {
        return Err("must not exceed 1000000000000000 (1e15)".into());
    }
    // "-0" is zero.
    Ok(if amount.is_zero() {
        Decimal::new(0, amount.scale())
    } else {
        amount
    })
}

/// Checks that `amount` is no finer than `currency`'s minor unit (ISO 4217: JPY 0 fractional
/// digits, USD 2, BHD 3), counting the digits as sent: `100.00` is two. Currencies without a minor
/// unit (gold, the SDR) allow [`MAX_AMOUNT_SCALE`], which [`parse_amount`] has checked already.
pub fn check_minor_units(amount: Decimal, currency: &str) -> Result<(), String> {
    match minor_units(currency) {
        Some(0) if amount.scale() > 0 => Err(format!(
            "must be a whole number in {currency}, which has no minor unit (ISO 4217)"
        )),
        Some(digits) if amount.scale() > digits => Err(format!(
            "must have at most {digits} fractional digits in {currency} (its ISO 4217 minor unit)"
        )),
        _ => Ok(()),
    }
}

/// Accepts the JSON number grammar (`-?digits[.digits][e[+-]digits]`), nothing else.
fn parse_decimal_text(text: &str) -> Result<Decimal, String> {
    const INVALID: &str = "must be a decimal number, e.g. 100.00";
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((int_part, frac_part)) => (int_part, Some(frac_part)),
        None => (mantissa, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    if !digits(int_part) || !frac_part.is_none_or(digits) || !exponent_ok {
        return Err(INVALID.into());
    }
    let parsed = if exponent.is_some() {
        Decimal::from_scientific(text)
    } else {
        Decimal::from_str(text)
    };
    parsed.map_err(|_| "is out of range".into())
}

/// A wallet as stored in the write model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletSnapshot {
    /// The wallet's id.
    pub id: String,
    /// Who the wallet belongs to.
    pub owner_id: String,
    /// Current balance, exact, in units of `currency`.
    pub balance: Decimal,
    /// ISO 4217 code of the balance.
    pub currency: String,
    /// Version of the wallet's event stream this snapshot reflects; 1 after the creation.
    pub version: i64,
    /// When the wallet was created, to the millisecond.
    pub created_at: DateTime<Utc>,
    /// When the wallet last changed, to the millisecond.
    pub updated_at: DateTime<Utc>,
}

/// The snapshot's JSON form: balance as a JSON number with its exact digits, times in RFC 3339
/// with milliseconds and `Z`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WalletJson<'a> {
    id: &'a str,
    owner_id: &'a str,
    balance: Box<RawValue>,
    currency: &'a str,
    version: i64,
    created_at: String,
    updated_at: String,
}

/// Formats a timestamp as the API does: `2026-11-26T12:00:00.000Z`.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl WalletSnapshot {
    /// The response body bytes.
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let body = WalletJson {
            id: &self.id,
            owner_id: &self.owner_id,
            balance: RawValue::from_string(self.balance.to_string())?,
            currency: &self.currency,
            version: self.version,
            created_at: format_timestamp(self.created_at),
            updated_at: format_timestamp(self.updated_at),
        };
        serde_json::to_vec(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn amount(text: &str) -> Result<Decimal, String> {
        parse_amount(&serde_json::from_str(text).expect("test JSON"))
    }

    #[test]
    fn max_amount_is_1e15() {
        assert_eq!(
            MAX_AMOUNT,
            Decimal::from_str("1000000000000000").expect("literal")
        );
    }

    #[test]
    fn amounts_keep_their_digits() {
        assert_eq!(amount("100.00").map(|d| d.to_string()), Ok("100.00".into()));
        assert_eq!(
            amount("\"0.12345678\"").map(|d| d.to_string()),
            Ok("0.12345678".into())
        );
        assert_eq!(amount("1e3").map(|d| d.to_string()), Ok("1000".into()));
        assert_eq!(amount("-0").map(|d| d.to_string()), Ok("0".into()));
        assert_eq!(
            amount("1000000000000000").map(|d| d.to_string()),
            Ok("1000000000000000".into())
        );
        // 0.1 + 0.2 style values stay exact.
        assert_eq!(
            amount("0.30000000").map(|d| d.to_string()),
            Ok("0.30000000".into())
        );
    }

    #[test]
    fn amounts_out_of_rules_are_rejected() {
        assert!(amount("-1").is_err());
        assert!(amount("0.123456789").is_err());
        assert!(amount("1000000000000000.01").is_err());
        assert!(amount("1e16").is_err());
        assert!(amount("\"abc\"").is_err());
        assert!(amount("\"1_000\"").is_err());
        assert!(amount("\" 1\"").is_err());
        assert!(amount("\"\"").is_err());
        assert!(amount("true").is_err());
        assert!(amount("\"1e999\"").is_err());
    }

    #[test]
    fn ids_follow_the_alphabet() {
        assert!(validate_id("wallet-001").is_ok());
        assert!(validate_id("a.b_c:d-E9").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id(&"a".repeat(129)).is_err());
        assert!(validate_id(&"a".repeat(128)).is_ok());
        assert!(validate_id("wallet 1").is_err());
        assert!(validate_id("wallet/1").is_err());
        assert!(validate_id("wålet").is_err());
    }

    #[test]
    fn every_field_error_is_reported() {
        let errors =
            CreateWallet::from_json(&json!({"walletId": 7, "extra": 1})).expect_err("invalid");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["extra", "walletId", "ownerId", "initialBalance"]);
    }

    #[test]
    fn amounts_are_no_finer_than_the_currency_minor_unit() {
        let create = |balance: &str, currency: &str| {
            CreateWallet::from_json(&json!({
                "walletId": "w", "ownerId": "o",
                "initialBalance": serde_json::from_str::<Value>(balance).expect("test JSON"),
                "currency": currency,
            }))
        };
        assert!(create("100", "JPY").is_ok());
        assert!(create("1e3", "JPY").is_ok());
        assert!(create("1.00", "USD").is_ok());
        assert!(create("1.234", "BHD").is_ok());
        assert!(create("0.12345678", "XAU").is_ok());
        for (balance, currency) in [
            ("1.5", "JPY"),
            ("100.0", "JPY"),
            ("\"1.005\"", "USD"),
            ("1.2345", "BHD"),
        ] {
            let errors = create(balance, currency).expect_err(balance);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].pointer, "#/initialBalance");
            assert!(errors[0].detail.contains(currency), "{errors:?}");
        }
    }

    #[test]
    fn currency_defaults_to_usd() {
        let command = CreateWallet::from_json(
            &serde_json::from_str(r#"{"walletId":"w","ownerId":"o","initialBalance":1}"#)
                .expect("test JSON"),
        )
        .expect("valid");
        assert_eq!(command.currency, "USD");
    }
}
