//! The file as read: private structs that keep the span of every value
//! (`toml::Spanned`), so that validation can name the line of an error.

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) role: Option<Spanned<OneOrMany>>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) cgroup: Option<Spanned<String>>,
    pub(super) optional: Option<bool>,
    pub(super) loopback: Option<Spanned<String>>,
    pub(super) fail: Option<Spanned<String>>,
    pub(super) gateways: Option<Spanned<OneOrMany>>,
    pub(super) hosts: Option<RawHosts>,
    pub(super) gateway: Option<RawGateway>,
    pub(super) client: Option<RawClient>,
    #[serde(default)]
    pub(super) resource: Vec<Spanned<RawResource>>,
    #[serde(default)]
    pub(super) secret_store: Vec<Spanned<RawResource>>,
    #[serde(default)]
    pub(super) allow: Vec<Spanned<RawAllow>>,
    pub(super) dns: Option<RawDns>,
    pub(super) http: Option<RawHttp>,
    pub(super) state: Option<RawState>,
    pub(super) audit: Option<RawAudit>,
    pub(super) backstop: Option<RawBackstop>,
    pub(super) xdp: Option<RawBackstop>,
    pub(super) metrics: Option<RawMetrics>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHosts {
    pub(super) app: Option<Spanned<String>>,
    pub(super) login: Option<Spanned<String>>,
    pub(super) downloads: Option<Spanned<String>>,
    pub(super) checkip: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub(super) advertised_port: Option<Spanned<i64>>,
    pub(super) sources: Option<Spanned<OneOrMany>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) loopback_ports: Option<Spanned<PortsValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResource {
    pub(super) name: Spanned<String>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) cidr: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) ports: Option<Spanned<PortsValue>>,
    pub(super) proto: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAllow {
    pub(super) name: Spanned<String>,
    pub(super) direction: Spanned<String>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) ports: Option<Spanned<PortsValue>>,
    pub(super) proto: Option<Spanned<String>>,
    pub(super) from: Option<Spanned<OneOrMany>>,
    pub(super) to: Option<Spanned<OneOrMany>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    pub(super) servers: Option<Spanned<OneOrMany>>,
    pub(super) fallback: Option<Spanned<String>>,
    pub(super) ttl_min: Option<Spanned<DurationValue>>,
    pub(super) ttl_max: Option<Spanned<DurationValue>>,
    pub(super) grace: Option<Spanned<DurationValue>>,
    pub(super) max_qps: Option<Spanned<i64>>,
    pub(super) concurrency: Option<Spanned<i64>>,
    pub(super) queries: Option<Spanned<String>>,
    pub(super) search: Option<Spanned<OneOrMany>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) token: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) dir: Option<Spanned<String>>,
    pub(super) retention: Option<Spanned<DurationValue>>,
    pub(super) max_bytes: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) log: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// `[backstop]`, and `[xdp]` whose only key is the same `interfaces`.
pub(super) struct RawBackstop {
    pub(super) interfaces: Option<Spanned<OneOrMany>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) per_resource: Option<bool>,
}

/// A string, or an array of strings (each with its own span).
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}

/// The items of a [`OneOrMany`], each with its span (a single string has
/// the span of the value).
pub(super) fn items(v: &Spanned<OneOrMany>) -> Vec<(&str, Range<usize>)> {
    match v.get_ref() {
        OneOrMany::One(s) => vec![(s.as_str(), v.span())],
        OneOrMany::Many(list) => list
            .iter()
            .map(|s| (s.get_ref().as_str(), s.span()))
            .collect(),
    }
}

/// `ports`: a string `"80,443,8000-8100"`, or an array of integers and
/// such strings.
pub(super) enum PortsValue {
    Text(String),
    List(Vec<Spanned<PortItem>>),
}

pub(super) enum PortItem {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for PortsValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PortsValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string such as \"80,443,8000-8100\" or an array of ports")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortsValue, E> {
                Ok(PortsValue::Text(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PortsValue, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<PortItem>>()? {
                    items.push(item);
                }
                Ok(PortsValue::List(items))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for PortItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a string such as \"8000-8100\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortItem, E> {
                Ok(PortItem::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortItem, E> {
                Ok(PortItem::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortItem, E> {
                Ok(PortItem::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration: an integer (seconds) or a string such as "30s".
pub(super) enum DurationValue {
    Seconds(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"10m\", \"1h\", \"500ms\", or seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationValue, E> {
                Ok(DurationValue::Seconds(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationValue, E> {
                Ok(DurationValue::Seconds(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationValue, E> {
                Ok(DurationValue::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
