use super::{fetch::*, report::*, *};

#[test]
fn finds_the_mirror_in_deb822_and_one_line_sources() {
    let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\n\
                  Types: deb\nURIs: http://deb.debian.org/debian-security\n";
    assert_eq!(
        mirror_from_sources(&[deb822.to_owned()]).as_deref(),
        Some("http://deb.debian.org/debian")
    );
    let list = "deb [arch=amd64] http://mirror.example/debian/ bookworm main\n";
    assert_eq!(
        mirror_from_sources(&[list.to_owned()]).as_deref(),
        Some("http://mirror.example/debian")
    );
    assert_eq!(mirror_from_sources(&["# nothing\n".to_owned()]), None);
}

#[test]
fn picks_the_newest_kernel_by_its_numbers() {
    let names = [
        "linux-image-6.12.9+deb12-cloud-amd64",
        "linux-image-6.12.74+deb12-cloud-amd64",
        "linux-image-6.12.43+deb12-cloud-amd64",
    ];
    let newest = names.iter().max_by_key(|n| version_key(n));
    assert_eq!(newest, Some(&"linux-image-6.12.74+deb12-cloud-amd64"));
    assert!(
        version_key("linux-image-5.10.0-32-cloud-amd64")
            > version_key("linux-image-5.10.0-30-cloud-amd64")
    );
}

#[test]
fn reads_checks_and_verifier_lines_off_a_console() {
    let console = "[  1.0] random kernel line\n\
        test every_program_passes_this_kernels_verifier ... verifier: sdm_egress ok=true insns=39929 ms=40\n\
        verifier: sdm_refused ok=false insns=3230 ms=20\n\
        ok\n\
        test check_names_the_program_the_verifier_refuses_and_fails ... ok\n\
        test smoke_lab ... smoke: attach: ok programs loaded\n\
        smoke: allowed: ok \n\
        smoke: denied-eperm: FAILED\n";
    let row = parse_results(
        "6.1.0-50-cloud-amd64",
        "pkg".into(),
        console,
        false,
        Duration::ZERO,
    );
    assert_eq!(row.checks["attach"], "ok");
    assert_eq!(row.checks["allowed"], "ok");
    assert_eq!(row.checks["denied-eperm"], "FAILED");
    assert_eq!(row.checks["check-refuses"], "ok");
    assert_eq!(
        row.checks["verifier"], "FAILED",
        "a REFUSED program fails the verifier check"
    );
    assert_eq!(row.verifier["sdm_egress"], "39929 insns, 40 ms");
    assert_eq!(
        row.stats["sdm_egress"],
        ProgramStat {
            insns: Some(39929),
            ms: Some(40),
            ok: true
        }
    );
    assert!(!row.stats["sdm_refused"].ok);
    let json = verifier_json(std::slice::from_ref(&row), "abc", false);
    assert_eq!(json["commit"], "abc");
    assert_eq!(json["kernels"][0]["release"], "6.1.0-50-cloud-amd64");
    assert_eq!(json["kernels"][0]["programs"][0]["program"], "sdm_egress");
    assert_eq!(json["kernels"][0]["programs"][0]["insns"], 39929);
    assert!(row.failure().is_some());
    let table = render(&[row]);
    assert!(table.contains("| denied-eperm | FAILED |"), "{table}");
}
