use sdm_common::{PROG_CONNECT4, PROG_EGRESS, PROG_INGRESS};

use super::*;

const PER_TRANSACTION: Unit = Unit {
    what: "transaction",
    counted_by: PROG_EGRESS,
};

fn counts(v: &[(&'static str, u64, u64)]) -> Counts {
    v.iter().map(|&(n, c, t)| (n, (c, t))).collect()
}

#[test]
fn passes_are_differences_of_snapshots() {
    let mut s = Samples::default();
    s.add(
        &counts(&[(PROG_EGRESS, 10, 1_000), (PROG_CONNECT4, 3, 300)]),
        &counts(&[(PROG_EGRESS, 110, 6_000), (PROG_CONNECT4, 3, 300)]),
    );
    s.add(
        &counts(&[(PROG_EGRESS, 110, 6_000)]),
        &counts(&[(PROG_EGRESS, 130, 7_400), (PROG_INGRESS, 4, 400)]),
    );
    let (egress, runs) = &s.per_prog[PROG_EGRESS];
    assert_eq!(egress, &[50.0, 70.0]);
    assert_eq!(*runs, 120);
    // Counted from zero when the first snapshot did not list it.
    assert_eq!(s.per_prog[PROG_INGRESS], (vec![100.0], 4));
    assert_eq!(s.per_prog[PROG_CONNECT4], (vec![], 0));
}

#[test]
fn rows_for_programs_that_ran_and_a_note_for_the_rest() {
    let mut s = Samples::default();
    s.add(
        &counts(&[(PROG_EGRESS, 0, 0), (PROG_CONNECT4, 0, 0)]),
        &counts(&[(PROG_EGRESS, 4, 400), (PROG_CONNECT4, 0, 0)]),
    );
    let mut figs = vec![];
    // The unit's program never ran: no total row.
    let per_connect = Unit {
        what: "connect()",
        counted_by: PROG_CONNECT4,
    };
    s.figures(
        "udp_rr.10",
        "UDP request/response, 10 entries",
        per_connect,
        &mut figs,
    );
    assert_eq!(figs.len(), 1);
    let f = &figs[0];
    assert_eq!(f.section, 8);
    assert_eq!(f.key, "bpf_stats.udp_rr.10.sdm_egress");
    assert_eq!(f.summary.as_ref().map(|s| s.median), Some(100.0));
    assert_eq!(f.met, None, "a diagnostic row has no target to meet");
    let d = f.detail.as_deref().unwrap_or_default();
    assert!(
        d.contains("4 runs") && d.contains("did not run: sdm_connect4"),
        "{d}"
    );
    // Nothing ran: a row that says so, and no other workload's row is touched.
    let mut none = Samples::default();
    none.add(
        &counts(&[(PROG_CONNECT4, 0, 0)]),
        &counts(&[(PROG_CONNECT4, 0, 0)]),
    );
    none.figures("crr", "short TCP connections", PER_TRANSACTION, &mut figs);
    assert_eq!(figs.len(), 2);
    assert!(figs[1].summary.is_none() && figs[1].key == "bpf_stats.crr");
    assert!(!figs[0]
        .detail
        .as_deref()
        .unwrap_or_default()
        .contains("crr"));
}

#[test]
fn a_program_that_ran_once_per_pass_is_marked_cold() {
    let mut s = Samples::default();
    for i in 0..3 {
        s.add(
            &counts(&[
                (PROG_EGRESS, i * 100, i * 10_000),
                (PROG_CONNECT4, i, i * 3_000),
            ]),
            &counts(&[
                (PROG_EGRESS, (i + 1) * 100, (i + 1) * 10_000),
                (PROG_CONNECT4, i + 1, (i + 1) * 3_000),
            ]),
        );
    }
    let mut figs = vec![];
    s.figures(
        "udp_rr.fig2",
        "UDP request/response",
        PER_TRANSACTION,
        &mut figs,
    );
    assert_eq!(figs.len(), 3);
    let detail = |i: usize| figs[i].detail.clone().unwrap_or_default();
    // All programs per transaction: 100 ns of egress and 30 of connect4
    // (3,000 ns over 100 transactions) in each pass.
    assert_eq!(figs[0].key, "bpf_stats.udp_rr.fig2.all");
    assert_eq!(
        figs[0].summary.as_ref().map(|s| (s.median, s.n)),
        Some((130.0, 3))
    );
    assert_eq!(
        detail(0),
        "runs per transaction: sdm_egress 1.00, sdm_connect4 0.01"
    );
    let detail = |i: usize| figs[i + 1].detail.clone().unwrap_or_default();
    assert!(!detail(0).contains("cold"), "{}", detail(0));
    assert!(
        detail(1).contains("3 runs in 3 passes") && detail(1).contains("cold start"),
        "{}",
        detail(1)
    );
}

#[test]
fn the_sysctl_gets_its_previous_value_back_also_on_a_panic() {
    let dir = std::env::temp_dir().join(format!("sdm-bench-stats-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bpf_stats_enabled");
    fs::write(&file, "0\n").expect("write");
    {
        let _on = StatsOn::at(&file).expect("guard");
        assert_eq!(fs::read_to_string(&file).expect("read"), "1");
    }
    assert_eq!(fs::read_to_string(&file).expect("read"), "0");
    let unwound = std::panic::catch_unwind(|| {
        let _on = StatsOn::at(&file).expect("guard");
        panic!("a failing measurement");
    });
    assert!(unwound.is_err());
    assert_eq!(fs::read_to_string(&file).expect("read"), "0");
    assert!(StatsOn::at(&dir.join("missing")).is_err());
    let _ = fs::remove_dir_all(&dir);
}
