//! Money is integer minor units plus an ISO 4217 code; floats never appear.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Upper bound for any single amount: keeps sums of 100 lines × 10 000 units far from `i64::MAX`.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Money {
    /// Amount in minor units (cents for USD, yen for JPY).
    pub amount: i64,
    /// ISO 4217 alphabetic code.
    #[schema(value_type = String, example = "USD")]
    pub currency: Currency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

/// Active ISO 4217 codes. Kept as data rather than an enum: the list changes, the code does not.
const ISO_4217: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB \
BRL BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD \
FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR \
KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR \
MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK \
SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES \
VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG";

/// The codes `Currency::parse` takes, for the API document.
pub fn currency_schema() -> utoipa::openapi::schema::Object {
    let codes: Vec<&str> = ISO_4217.split_ascii_whitespace().collect();
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(codes))
        .examples(["USD"])
        .build()
}

impl Currency {
    pub fn parse(code: &str) -> Option<Currency> {
        let b = code.as_bytes();
        if b.len() != 3 || !b.iter().all(u8::is_ascii_uppercase) {
            return None;
        }
        ISO_4217.split_ascii_whitespace().any(|c| c == code).then(|| Currency([b[0], b[1], b[2]]))
    }

    pub fn as_str(&self) -> &str {
        // Constructed only from validated ASCII.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown ISO 4217 currency code {s:?}")))
    }
}

impl Money {
    pub fn new(amount: i64, currency: Currency) -> Money {
        Money { amount, currency }
    }

    /// Price of `qty` units; `None` when the product would leave the allowed range.
    pub fn times(&self, qty: i64) -> Option<Money> {
        let amount = self.amount.checked_mul(qty)?;
        (amount <= MAX_AMOUNT).then_some(Money::new(amount, self.currency))
    }

    /// Sum of amounts in one currency; `None` on a currency mix or overflow.
    pub fn sum<'a>(currency: Currency, items: impl IntoIterator<Item = &'a Money>) -> Option<Money> {
        let mut total: i64 = 0;
        for m in items {
            if m.currency != currency {
                return None;
            }
            total = total.checked_add(m.amount)?;
        }
        (total <= MAX_AMOUNT).then_some(Money::new(total, currency))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    #[test]
    fn parses_only_known_uppercase_codes() {
        assert!(Currency::parse("EUR").is_some());
        assert!(Currency::parse("JPY").is_some());
        assert!(Currency::parse("usd").is_none());
        assert!(Currency::parse("ZZZ").is_none());
        assert!(Currency::parse("US").is_none());
        assert!(Currency::parse("USDX").is_none());
    }

    #[test]
    fn times_multiplies_and_guards_overflow() {
        let p = Money::new(1999, usd());
        assert_eq!(p.times(3), Some(Money::new(5997, usd())));
        assert_eq!(p.times(0), Some(Money::new(0, usd())));
        assert_eq!(Money::new(MAX_AMOUNT, usd()).times(2), None);
        assert_eq!(Money::new(i64::MAX / 2 + 1, usd()).times(2), None);
    }

    #[test]
    fn sum_refuses_mixed_currencies() {
        let eur = Currency::parse("EUR").unwrap();
        let a = [Money::new(100, usd()), Money::new(250, usd())];
        assert_eq!(Money::sum(usd(), &a), Some(Money::new(350, usd())));
        let b = [Money::new(100, usd()), Money::new(250, eur)];
        assert_eq!(Money::sum(usd(), &b), None);
        assert_eq!(Money::sum(usd(), &[]), Some(Money::new(0, usd())));
    }

    #[test]
    fn serializes_as_plain_code() {
        let m = Money::new(42, usd());
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"amount":42,"currency":"USD"}"#);
        let back: Money = serde_json::from_str(r#"{"amount":42,"currency":"USD"}"#).unwrap();
        assert_eq!(back, m);
        assert!(serde_json::from_str::<Money>(r#"{"amount":42,"currency":"XYZ"}"#).is_err());
    }
}
