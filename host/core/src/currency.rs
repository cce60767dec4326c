//! ISO 4217 currencies: the codes the API accepts and how many fractional digits each allows.
//!
//! Why it exists: a wallet's currency must be a real, active ISO 4217 alphabetic code, and an
//! amount in it may not be finer than the currency's minor unit (JPY has none, USD cents, BHD
//! fils): this is the one table of both, from ISO 4217's list one (SIX, as of 2026).

/// Default currency of a new wallet.
pub const DEFAULT_CURRENCY: &str = "USD";

/// Active ISO 4217 alphabetic codes (including funds and precious-metal codes), sorted, with
/// their minor units: the fractional digits an amount may have. `None` where ISO 4217 gives
/// none ("N.A.": gold, silver, the SDR, bond-market units), so only the host's general limit
/// ([`crate::wallet::MAX_AMOUNT_SCALE`]) applies.
#[rustfmt::skip] // five codes a row: a table to read, not 175 lines
const CURRENCIES: &[(&str, Option<u32>)] = &[
    ("AED", Some(2)), ("AFN", Some(2)), ("ALL", Some(2)), ("AMD", Some(2)), ("AOA", Some(2)),
    ("ARS", Some(2)), ("AUD", Some(2)), ("AWG", Some(2)), ("AZN", Some(2)), ("BAM", Some(2)),
    ("BBD", Some(2)), ("BDT", Some(2)), ("BHD", Some(3)), ("BIF", Some(0)), ("BMD", Some(2)),
    ("BND", Some(2)), ("BOB", Some(2)), ("BOV", Some(2)), ("BRL", Some(2)), ("BSD", Some(2)),
    ("BTN", Some(2)), ("BWP", Some(2)), ("BYN", Some(2)), ("BZD", Some(2)), ("CAD", Some(2)),
    ("CDF", Some(2)), ("CHE", Some(2)), ("CHF", Some(2)), ("CHW", Some(2)), ("CLF", Some(4)),
    ("CLP", Some(0)), ("CNY", Some(2)), ("COP", Some(2)), ("COU", Some(2)), ("CRC", Some(2)),
    ("CUP", Some(2)), ("CVE", Some(2)), ("CZK", Some(2)), ("DJF", Some(0)), ("DKK", Some(2)),
    ("DOP", Some(2)), ("DZD", Some(2)), ("EGP", Some(2)), ("ERN", Some(2)), ("ETB", Some(2)),
    ("EUR", Some(2)), ("FJD", Some(2)), ("FKP", Some(2)), ("GBP", Some(2)), ("GEL", Some(2)),
    ("GHS", Some(2)), ("GIP", Some(2)), ("GMD", Some(2)), ("GNF", Some(0)), ("GTQ", Some(2)),
    ("GYD", Some(2)), ("HKD", Some(2)), ("HNL", Some(2)), ("HTG", Some(2)), ("HUF", Some(2)),
    ("IDR", Some(2)), ("ILS", Some(2)), ("INR", Some(2)), ("IQD", Some(3)), ("IRR", Some(2)),
    ("ISK", Some(0)), ("JMD", Some(2)), ("JOD", Some(3)), ("JPY", Some(0)), ("KES", Some(2)),
    ("KGS", Some(2)), ("KHR", Some(2)), ("KMF", Some(0)), ("KPW", Some(2)), ("KRW", Some(0)),
    ("KWD", Some(3)), ("KYD", Some(2)), ("KZT", Some(2)), ("LAK", Some(2)), ("LBP", Some(2)),
    ("LKR", Some(2)), ("LRD", Some(2)), ("LSL", Some(2)), ("LYD", Some(3)), ("MAD", Some(2)),
    ("MDL", Some(2)), ("MGA", Some(2)), ("MKD", Some(2)), ("MMK", Some(2)), ("MNT", Some(2)),
    ("MOP", Some(2)), ("MRU", Some(2)), ("MUR", Some(2)), ("MVR", Some(2)), ("MWK", Some(2)),
    ("MXN", Some(2)), ("MXV", Some(2)), ("MYR", Some(2)), ("MZN", Some(2)), ("NAD", Some(2)),
    ("NGN", Some(2)), ("NIO", Some(2)), ("NOK", Some(2)), ("NPR", Some(2)), ("NZD", Some(2)),
    ("OMR", Some(3)), ("PAB", Some(2)), ("PEN", Some(2)), ("PGK", Some(2)), ("PHP", Some(2)),
    ("PKR", Some(2)), ("PLN", Some(2)), ("PYG", Some(0)), ("QAR", Some(2)), ("RON", Some(2)),
    ("RSD", Some(2)), ("RUB", Some(2)), ("RWF", Some(0)), ("SAR", Some(2)), ("SBD", Some(2)),
    ("SCR", Some(2)), ("SDG", Some(2)), ("SEK", Some(2)), ("SGD", Some(2)), ("SHP", Some(2)),
    ("SLE", Some(2)), ("SOS", Some(2)), ("SRD", Some(2)), ("SSP", Some(2)), ("STN", Some(2)),
    ("SVC", Some(2)), ("SYP", Some(2)), ("SZL", Some(2)), ("THB", Some(2)), ("TJS", Some(2)),
    ("TMT", Some(2)), ("TND", Some(3)), ("TOP", Some(2)), ("TRY", Some(2)), ("TTD", Some(2)),
    ("TWD", Some(2)), ("TZS", Some(2)), ("UAH", Some(2)), ("UGX", Some(0)), ("USD", Some(2)),
    ("USN", Some(2)), ("UYI", Some(0)), ("UYU", Some(2)), ("UYW", Some(4)), ("UZS", Some(2)),
    ("VED", Some(2)), ("VES", Some(2)), ("VND", Some(0)), ("VUV", Some(0)), ("WST", Some(2)),
    ("XAF", Some(0)), ("XAG", None), ("XAU", None), ("XBA", None), ("XBB", None), ("XBC", None),
    ("XBD", None), ("XCD", Some(2)), ("XCG", Some(2)), ("XDR", None), ("XOF", Some(0)),
    ("XPD", None), ("XPF", Some(0)), ("XPT", None), ("XSU", None), ("XUA", None), ("YER", Some(2)),
    ("ZAR", Some(2)), ("ZMW", Some(2)), ("ZWG", Some(2)),
];

/// Whether `code` is an active ISO 4217 alphabetic code (exact, upper case).
pub fn is_iso_4217(code: &str) -> bool {
    find(code).is_some()
}

/// ISO 4217's minor units of `code`: `Some(digits)`, or `None` when the currency has none
/// ("N.A.") or `code` is not an active code.
pub fn minor_units(code: &str) -> Option<u32> {
    find(code).and_then(|(_, units)| *units)
}

fn find(code: &str) -> Option<&'static (&'static str, Option<u32>)> {
    CURRENCIES
        .binary_search_by(|(known, _)| known.cmp(&code))
        .ok()
        .map(|at| &CURRENCIES[at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_so_binary_search_works() {
        assert!(CURRENCIES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn accepts_real_codes_only() {
        assert!(is_iso_4217("USD"));
        assert!(is_iso_4217("EUR"));
        assert!(is_iso_4217("XCG"));
        assert!(!is_iso_4217("usd"));
        assert!(!is_iso_4217("XXX1"));
        assert!(!is_iso_4217("ABC"));
    }

    #[test]
    fn minor_units_follow_iso_4217() {
        assert_eq!(minor_units("JPY"), Some(0));
        assert_eq!(minor_units("KRW"), Some(0));
        assert_eq!(minor_units("USD"), Some(2));
        assert_eq!(minor_units("EUR"), Some(2));
        assert_eq!(minor_units("BHD"), Some(3));
        assert_eq!(minor_units("KWD"), Some(3));
        assert_eq!(minor_units("CLF"), Some(4));
        assert_eq!(minor_units("XAU"), None);
        assert_eq!(minor_units("XDR"), None);
        assert_eq!(minor_units("ABC"), None);
    }
}
