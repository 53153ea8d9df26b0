//! `sdm-agent status`: read from the pinned maps, so it works while the
//! agent is down.

use std::process::ExitCode;

use anyhow::Result;
use sdm_agent::{
    api::status,
    kernel::dataplane::{Layout, Maps},
};

pub fn run(layout: &Layout, json: bool) -> Result<ExitCode> {
    let mut maps = Maps::open(layout)?;
    let mut s = status::snapshot(layout, &mut maps)?;
    status::add_bypass_capable(&mut s);
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", status::render(&s));
    }
    Ok(ExitCode::SUCCESS)
}
