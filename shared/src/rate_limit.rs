//! A route's rate limit: a token bucket per key (client IP, a header's value, or the route as a
//! whole), per node or for the whole fleet.

use serde::{Deserialize, Serialize};

use crate::validate::{Result, ValidationError};

/// The highest rate a limit may set.
pub const MAX_RATE: u32 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second each key may make, on average.
    pub requests_per_s: u32,
    /// How many requests a key may make at once after a quiet spell (the bucket's size);
    /// default: `requests_per_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "is_default_key")]
    pub key: RateLimitKey,
    /// With `key: header`: the header whose value is the key (requests without it share one bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The rate is the whole fleet's: each node of the listener's group takes an equal share,
    /// as the control plane counts the group's connected nodes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fleet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    #[default]
    ClientIp,
    Header,
    Route,
}

fn is_default_key(k: &RateLimitKey) -> bool {
    *k == RateLimitKey::ClientIp
}

impl RateLimit {
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_s)
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_RATE).contains(&self.requests_per_s) {
            return Err(ValidationError::invalid("requests_per_s", format!("1 to {MAX_RATE}")));
        }
        if let Some(b) = self.burst {
            if !(1..=MAX_RATE).contains(&b) {
                return Err(ValidationError::invalid("burst", format!("1 to {MAX_RATE}")));
            }
        }
        match (&self.key, &self.header) {
            (RateLimitKey::Header, None) => {
                Err(ValidationError::invalid("header", "key header needs the header's name"))
            }
            (RateLimitKey::Header, Some(h)) if !crate::validate::is_token(h) => {
                Err(ValidationError::invalid("header", format!("{h:?} is not a header name")))
            }
            (RateLimitKey::ClientIp | RateLimitKey::Route, Some(_)) => {
                Err(ValidationError::invalid("header", "only with key header"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::parse_json;

    fn field(json: &str) -> Option<String> {
        parse_json::<RateLimit>(json.as_bytes()).unwrap().validate().err().and_then(|e| e.field)
    }

    #[test]
    fn limits_name_the_field_at_fault() {
        assert_eq!(field(r#"{"requests_per_s":100}"#), None);
        assert_eq!(field(r#"{"requests_per_s":5,"burst":20,"key":"header","header":"x-api-key","fleet":true}"#), None);
        assert_eq!(field(r#"{"requests_per_s":0}"#).as_deref(), Some("requests_per_s"));
        assert_eq!(field(r#"{"requests_per_s":1,"burst":0}"#).as_deref(), Some("burst"));
        assert_eq!(field(r#"{"requests_per_s":1,"key":"header"}"#).as_deref(), Some("header"));
        assert_eq!(field(r#"{"requests_per_s":1,"key":"header","header":"a b"}"#).as_deref(), Some("header"));
        assert_eq!(field(r#"{"requests_per_s":1,"header":"x"}"#).as_deref(), Some("header"));
        assert!(parse_json::<RateLimit>(br#"{"requests_per_s":1,"key":"cookie"}"#).is_err());
    }
}
