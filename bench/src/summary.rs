//! What the run prints at its end, and the verifier statistics section of
//! BENCHMARKS.md (moved out of main.rs to keep it short).

use std::path::PathBuf;

use crate::report::Results;

pub fn print_summary(r: &Results) {
    println!(
        "\nsdm-bench results ({}):",
        if r.smoke {
            "smoke: timings mean nothing"
        } else {
            "full"
        }
    );
    for f in &r.figures {
        let value = match &f.summary {
            Some(s) => format!(
                "{:.*} {} ({:.*}–{:.*}, n={})",
                f.decimals, s.median, f.unit, f.decimals, s.min, f.decimals, s.max, s.n
            ),
            None => f.detail.clone().unwrap_or_default(),
        };
        let met = match f.met {
            Some(true) => " [target met]",
            Some(false) => " [target MISSED]",
            None => "",
        };
        println!("  [{}] {}: {}{}", f.section, f.name, value.trim(), met);
    }
    println!();
}

/// The verifier's statistics per kernel, from the last run of the kernel
/// matrix (`cargo xtask kernels`, which `cargo xtask test` runs); the path
/// comes from xtask in SDM_KERNEL_MATRIX_REPORT.
pub fn kernel_matrix_section() -> String {
    let mut o = String::from(
        "## Verifier statistics per kernel

",
    );
    let report = std::env::var_os("SDM_KERNEL_MATRIX_REPORT")
        .map(PathBuf::from)
        .and_then(|p| std::fs::read_to_string(p).ok());
    match report {
        Some(text) => {
            o.push_str(
                "From the last run of the kernel matrix (`cargo xtask kernels`): every \
                 program loaded into Debian's 5.10, 6.1 and 6.12 cloud kernels booted under \
                 qemu, and into this machine's kernel; instructions the verifier processed \
                 and the time of the load.\n",
            );
            // The report's headings are one level below this section's.
            o.push_str(&text.replace("\n### ", "\n#### "));
            o.push('\n');
        }
        None => o.push_str(
            "Not available: run `cargo xtask kernels` (or `cargo xtask test`) before \
             `cargo xtask bench` to include them.\n\n",
        ),
    }
    o
}
