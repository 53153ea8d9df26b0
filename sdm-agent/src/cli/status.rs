//! `sdm-agent status`: read from the pinned maps, so it works while the
//! agent is down. The human view shows the top rules (by hits) and the
//! hostnames that fail first, [`HUMAN_LIMIT`] of each, and says how many
//! more there are: a gateway with 10,000 resources would print 10,000
//! lines. `--json` prints every row unless paging flags are given.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;
use sdm_agent::{
    api::status::{self, LearnedStatus, PageParams, PageQuery, RuleStatus, StatusPages},
    dns::resolver::HostReport,
    kernel::dataplane::{Layout, Maps},
};

/// Rows of each list the human view shows without `--limit` or `--all`.
pub const HUMAN_LIMIT: usize = 20;

#[derive(Args, Debug, Default, Clone)]
pub struct StatusArgs {
    /// JSON: every rule, hostname and learned address unless --limit,
    /// --offset, --filter or --sort is given.
    #[arg(long)]
    pub json: bool,
    /// Every row of every list.
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
    /// Rows of each list (rules, hostnames, learned addresses) to show
    /// (default 20 in the human view; at most 1000).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Rows of each list to skip (after filtering and sorting).
    #[arg(long)]
    pub offset: Option<usize>,
    /// Only rows with every word of TEXT (case-insensitive) in a rule's
    /// name, targets or addresses, a hostname or its addresses.
    #[arg(long, short = 'q', value_name = "TEXT")]
    pub filter: Option<String>,
    /// Sort the rules by: policy, name, hits, bytes, egress, ingress or
    /// direction (default: hits in the human view, policy in JSON).
    #[arg(long)]
    pub sort: Option<String>,
    /// asc or desc (default: desc for counts, asc for names and policy).
    #[arg(long)]
    pub order: Option<String>,
}

impl StatusArgs {
    fn paged(&self) -> bool {
        self.limit.is_some()
            || self.offset.is_some()
            || self.filter.is_some()
            || self.sort.is_some()
            || self.order.is_some()
    }

    /// The pages to show; `None`: every row, unpaged (`--json` alone).
    pub fn pages(&self) -> Result<Option<StatusPages>> {
        if self.json && !self.paged() {
            return Ok(None);
        }
        let offset = self.offset.map(|o| o.to_string());
        let limit = self.limit.map(|l| l.to_string());
        let human_limit = HUMAN_LIMIT.to_string();
        let limit = limit
            .as_deref()
            .or((!self.json).then_some(human_limit.as_str()));
        let base = PageParams {
            offset: offset.as_deref(),
            limit,
            q: self.filter.as_deref(),
            sort: None,
            order: None,
        };
        let rule_sort = self.sort.as_deref().or((!self.json).then_some("hits"));
        let rules = PageParams {
            sort: rule_sort,
            order: self.order.as_deref(),
            ..base.clone()
        };
        let parse = |e: status::PageError| anyhow::anyhow!("--{e}");
        let mut pages = StatusPages {
            rules: PageQuery::parse::<RuleStatus>("", &rules).map_err(parse)?,
            dns: PageQuery::parse::<HostReport>("", &base).map_err(parse)?,
            learned: PageQuery::parse::<LearnedStatus>("", &base).map_err(parse)?,
        };
        if self.all || (self.json && self.limit.is_none()) {
            pages.rules.limit = None;
            pages.dns.limit = None;
            pages.learned.limit = None;
        }
        Ok(Some(pages))
    }
}

pub fn run(layout: &Layout, args: &StatusArgs) -> Result<ExitCode> {
    let pages = args.pages()?;
    let mut maps = Maps::open(layout)?;
    let mut s = status::snapshot(layout, &mut maps)?;
    status::add_bypass_capable(&mut s);
    if let Some(p) = &pages {
        s.paginate(p);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).context("status to JSON")?
        );
    } else {
        print!("{}", status::render(&s));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
