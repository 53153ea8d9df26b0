//! `sdm-agent suggest`: config that would allow the flows seen in audit
//! mode, checked to still load when appended.

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use sdm_agent::{
    app,
    flows::{
        self,
        store::{self, Store, StoreError},
        FlowQuery,
    },
    policy::{compile, config::Config},
};

use super::load_config;

pub fn run(config: Option<&Path>, since: Duration) -> Result<ExitCode> {
    let cfg = load_config(config)?;
    let path = store::db_path(&cfg.state.dir);
    let mut q = FlowQuery::within(since);
    q.verdict = Some("audit".into());
    let found = match Store::open_existing(&path) {
        Ok(s) => s.query(&q)?,
        Err(StoreError::Missing { .. }) => {
            eprintln!(
                "no flows recorded yet: {} does not exist (the agent creates it)",
                path.display()
            );
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    // Leave out what the config already allows, where it compiles.
    let resolvers = app::resolvers(&cfg).unwrap_or_default();
    let policy = compile::compile(&cfg, &resolvers).ok();
    let suggestion = flows::suggest(&found, &cfg, policy.as_ref(), flows::DEFAULT_COLLAPSE);
    print!("{suggestion}");
    // Check that the config with the suggestion appended still loads and
    // compiles (rule limits, name clashes), so a paste does not fail at the
    // next restart.
    if let Some(p) = config {
        let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
        let combined = format!("{text}\n{suggestion}");
        let checked = Config::from_toml_str(&combined, p)
            .map_err(anyhow::Error::from)
            .and_then(|c| compile::compile(&c, &resolvers).map_err(anyhow::Error::from));
        if let Err(e) = checked {
            eprintln!(
                "sdm-agent: the config with these suggestions appended would not load: {e:#}"
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
