//! Paging, filtering and sorting of the status's long lists (rules,
//! hostnames, learned addresses): a gateway with 10,000 resources has
//! 10,000 of each, too many for one answer or one screen. The HTTP API,
//! `sdm-agent status` and the dashboard all page through [`PageQuery`].

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::{LearnedStatus, RuleStatus};
use crate::dns::resolver::HostReport;

/// Rows of a page when the client does not say.
pub const DEFAULT_PAGE_LIMIT: usize = 100;
/// The most rows of one page: 1,000 rules with a dozen addresses each are
/// about 500 KB of JSON.
pub const MAX_PAGE_LIMIT: usize = 1000;
/// The longest `q`: a search box, not a document.
pub const MAX_QUERY_LEN: usize = 256;

/// Which way a list is sorted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    Asc,
    Desc,
}

impl Order {
    pub fn name(self) -> &'static str {
        match self {
            Order::Asc => "asc",
            Order::Desc => "desc",
        }
    }
}

/// A parameter of a page that is not valid; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("{param}: {value:?} is not a whole number")]
    NotANumber { param: String, value: String },
    #[error("{param}: {value} is more than {MAX_PAGE_LIMIT}, the most rows of one page (page with offset)")]
    LimitTooLarge { param: String, value: usize },
    #[error("{param}: {value:?} is not one of {allowed}")]
    NotOneOf {
        param: String,
        value: String,
        allowed: String,
    },
    #[error("{param}: longer than {MAX_QUERY_LEN} characters")]
    QueryTooLong { param: String },
    #[error("{param}: unknown parameter (known: {known})")]
    Unknown { param: String, known: String },
}

/// A list that pages: its sort keys and what its filter looks at.
pub trait Pageable {
    /// The sort keys, the default first.
    const SORT_KEYS: &'static [&'static str];
    /// Whether every word (lower case) is in the row's searchable text.
    fn matches(&self, words: &[String]) -> bool;
    /// Compares by one of [`Self::SORT_KEYS`], ascending.
    fn compare(&self, other: &Self, key: &str) -> Ordering;
    /// Compares rows equal under the sort key: ascending, always.
    fn tie(&self, _other: &Self) -> Ordering {
        Ordering::Equal
    }
    /// Counts sort largest first unless the client says otherwise; names
    /// and the policy's order, smallest first.
    fn default_order(key: &str) -> Order;
}

/// Which rows of a list: the filter, the order and the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageQuery {
    pub offset: usize,
    /// `None`: every row that matches (the CLI's `--all`, `status --json`).
    pub limit: Option<usize>,
    /// Words separated by spaces, each a case-insensitive substring.
    pub q: String,
    pub sort: &'static str,
    pub order: Order,
}

/// What a page is of: the response carries it so a client can page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageInfo {
    /// Rows in the list.
    pub total: usize,
    /// Rows that match `q`.
    pub matched: usize,
    pub offset: usize,
    /// `None`: no limit.
    pub limit: Option<usize>,
    pub sort: String,
    pub order: Order,
    pub q: String,
}

/// The raw values of one list's parameters, as a client gave them.
#[derive(Clone, Debug, Default)]
pub struct PageParams<'a> {
    pub offset: Option<&'a str>,
    pub limit: Option<&'a str>,
    pub q: Option<&'a str>,
    pub sort: Option<&'a str>,
    pub order: Option<&'a str>,
}

/// The parameter names of one list: `offset`, or `rules_offset` with a
/// prefix.
pub const PARAMS: [&str; 5] = ["offset", "limit", "q", "sort", "order"];

impl<'a> PageParams<'a> {
    /// Takes `<prefix>offset`, ... from `get`.
    pub fn from_fn(prefix: &str, get: impl Fn(&str) -> Option<&'a str>) -> Self {
        let g = |name: &str| get(&format!("{prefix}{name}")).filter(|v| !v.is_empty());
        Self {
            offset: g("offset"),
            limit: g("limit"),
            q: g("q"),
            sort: g("sort"),
            order: g("order"),
        }
    }
}

impl PageQuery {
    /// Checks `params` for a list of `T`; the errors name each parameter
    /// with `prefix`. Without a limit, [`DEFAULT_PAGE_LIMIT`].
    pub fn parse<T: Pageable>(prefix: &str, params: &PageParams<'_>) -> Result<Self, PageError> {
        let name = |p: &str| format!("{prefix}{p}");
        let number = |p: &str, v: Option<&str>| -> Result<Option<usize>, PageError> {
            v.map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| PageError::NotANumber {
                        param: name(p),
                        value: v.to_string(),
                    })
            })
            .transpose()
        };
        let offset = number("offset", params.offset)?.unwrap_or(0);
        let limit = number("limit", params.limit)?.unwrap_or(DEFAULT_PAGE_LIMIT);
        if limit > MAX_PAGE_LIMIT {
            return Err(PageError::LimitTooLarge {
                param: name("limit"),
                value: limit,
            });
        }
        let q = params.q.unwrap_or("");
        if q.chars().count() > MAX_QUERY_LEN {
            return Err(PageError::QueryTooLong { param: name("q") });
        }
        let sort = match params.sort {
            None => T::SORT_KEYS[0],
            Some(s) => T::SORT_KEYS
                .iter()
                .copied()
                .find(|k| *k == s)
                .ok_or_else(|| PageError::NotOneOf {
                    param: name("sort"),
                    value: s.to_string(),
                    allowed: T::SORT_KEYS.join(", "),
                })?,
        };
        let order = match params.order {
            None => T::default_order(sort),
            Some("asc") => Order::Asc,
            Some("desc") => Order::Desc,
            Some(o) => {
                return Err(PageError::NotOneOf {
                    param: name("order"),
                    value: o.to_string(),
                    allowed: "asc, desc".into(),
                })
            }
        };
        Ok(Self {
            offset,
            limit: Some(limit),
            q: q.to_string(),
            sort,
            order,
        })
    }

    /// Every row, in the list's default order: what `status --json` prints.
    pub fn all<T: Pageable>() -> Self {
        Self {
            offset: 0,
            limit: None,
            q: String::new(),
            sort: T::SORT_KEYS[0],
            order: T::default_order(T::SORT_KEYS[0]),
        }
    }

    /// Filters, sorts and cuts `rows` to the page; ties keep the list's
    /// order (the policy's, for rules).
    pub fn apply<T: Pageable>(&self, rows: Vec<T>) -> (Vec<T>, PageInfo) {
        let total = rows.len();
        let words: Vec<String> = self.q.split_whitespace().map(str::to_lowercase).collect();
        let mut rows: Vec<T> = if words.is_empty() {
            rows
        } else {
            rows.into_iter().filter(|r| r.matches(&words)).collect()
        };
        let matched = rows.len();
        // A stable sort: rows equal under the key keep their order.
        rows.sort_by(|a, b| {
            let by_key = a.compare(b, self.sort);
            let by_key = match self.order {
                Order::Asc => by_key,
                Order::Desc => by_key.reverse(),
            };
            by_key.then_with(|| a.tie(b))
        });
        let start = self.offset.min(matched);
        let end = self
            .limit
            .map_or(matched, |l| start.saturating_add(l).min(matched));
        let page: Vec<T> = rows.drain(start..end).collect();
        let info = PageInfo {
            total,
            matched,
            offset: self.offset,
            limit: self.limit,
            sort: self.sort.to_string(),
            order: self.order,
            q: self.q.clone(),
        };
        (page, info)
    }
}

/// Whether every word is in one of `fields` (lower-cased).
fn all_words_in<'a>(words: &[String], fields: impl Iterator<Item = &'a str>) -> bool {
    let hay: String = fields.map(str::to_lowercase).collect::<Vec<_>>().join("\n");
    words.iter().all(|w| hay.contains(w.as_str()))
}

fn hits(r: &RuleStatus) -> u64 {
    r.egress.packets.saturating_add(r.ingress.packets)
}

fn rule_bytes(r: &RuleStatus) -> u64 {
    r.egress.bytes.saturating_add(r.ingress.bytes)
}

impl Pageable for RuleStatus {
    /// `policy`: the order of the policy (the Ports Guide's rules, then
    /// resources and `[[allow]]` entries as the config lists them); `hits`:
    /// egress and ingress packets together.
    const SORT_KEYS: &'static [&'static str] = &[
        "policy",
        "name",
        "hits",
        "bytes",
        "egress",
        "ingress",
        "direction",
    ];

    /// The name, the targets (hostnames and CIDRs, as configured) and the
    /// addresses the maps hold.
    fn matches(&self, words: &[String]) -> bool {
        all_words_in(
            words,
            std::iter::once(self.name.as_str())
                .chain(self.targets.iter().map(String::as_str))
                .chain(self.addresses.iter().map(String::as_str)),
        )
    }

    fn compare(&self, other: &Self, key: &str) -> Ordering {
        match key {
            "name" => self.name.cmp(&other.name),
            "hits" => hits(self).cmp(&hits(other)),
            "bytes" => rule_bytes(self).cmp(&rule_bytes(other)),
            "egress" => self.egress.packets.cmp(&other.egress.packets),
            "ingress" => self.ingress.packets.cmp(&other.ingress.packets),
            "direction" => self.direction.cmp(&other.direction),
            // "policy": the list comes in the policy's order.
            _ => Ordering::Equal,
        }
    }

    fn default_order(key: &str) -> Order {
        match key {
            "hits" | "bytes" | "egress" | "ingress" => Order::Desc,
            _ => Order::Asc,
        }
    }
}

impl Pageable for HostReport {
    /// `failures` first: the hostnames that fail to resolve are the ones
    /// to look at.
    const SORT_KEYS: &'static [&'static str] =
        &["failures", "hostname", "addresses", "next_refresh"];

    fn matches(&self, words: &[String]) -> bool {
        let addrs: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        all_words_in(
            words,
            std::iter::once(self.hostname.as_str())
                .chain(addrs.iter().map(String::as_str))
                .chain(self.last_error.as_deref()),
        )
    }

    fn compare(&self, other: &Self, key: &str) -> Ordering {
        match key {
            "failures" => self.failures.cmp(&other.failures),
            "addresses" => self.addresses.len().cmp(&other.addresses.len()),
            "next_refresh" => self.next_refresh_secs.cmp(&other.next_refresh_secs),
            _ => self.hostname.cmp(&other.hostname),
        }
    }

    fn tie(&self, other: &Self) -> Ordering {
        self.hostname.cmp(&other.hostname)
    }

    fn default_order(key: &str) -> Order {
        match key {
            "failures" | "addresses" => Order::Desc,
            _ => Order::Asc,
        }
    }
}

impl Pageable for LearnedStatus {
    const SORT_KEYS: &'static [&'static str] = &["hostname", "address", "expires"];

    fn matches(&self, words: &[String]) -> bool {
        let addr = self.address.to_string();
        all_words_in(
            words,
            std::iter::once(addr.as_str()).chain(self.hostname.as_deref()),
        )
    }

    fn compare(&self, other: &Self, key: &str) -> Ordering {
        match key {
            "address" => self.address.cmp(&other.address),
            "expires" => self.expires_in_secs.cmp(&other.expires_in_secs),
            _ => self.hostname.cmp(&other.hostname),
        }
    }

    fn tie(&self, other: &Self) -> Ordering {
        (&self.hostname, self.address).cmp(&(&other.hostname, other.address))
    }

    fn default_order(_key: &str) -> Order {
        Order::Asc
    }
}

#[cfg(test)]
mod tests;
