use super::*;

fn args(f: impl FnOnce(&mut StatusArgs)) -> StatusArgs {
    let mut a = StatusArgs::default();
    f(&mut a);
    a
}

#[test]
fn human_view_shows_the_top_rules_by_hits() {
    let p = args(|_| {}).pages().unwrap().expect("the human view pages");
    assert_eq!(p.rules.limit, Some(HUMAN_LIMIT));
    assert_eq!(p.rules.sort, "hits");
    assert_eq!(p.rules.order, status::Order::Desc);
    assert_eq!(p.dns.limit, Some(HUMAN_LIMIT));
    assert_eq!(p.dns.sort, "failures");
    let all = args(|a| a.all = true).pages().unwrap().unwrap();
    assert_eq!(all.rules.limit, None);
    assert_eq!(all.dns.limit, None);
}

#[test]
fn json_is_whole_unless_paging_flags_are_given() {
    assert_eq!(args(|a| a.json = true).pages().unwrap(), None);
    let p = args(|a| {
        a.json = true;
        a.filter = Some("db".into());
    })
    .pages()
    .unwrap()
    .expect("a filter pages");
    assert_eq!(p.rules.limit, None, "every match without --limit");
    assert_eq!(p.rules.sort, "policy", "the policy's order in JSON");
    assert_eq!(p.rules.q, "db");
    let p = args(|a| {
        a.json = true;
        a.limit = Some(5);
        a.offset = Some(10);
    })
    .pages()
    .unwrap()
    .unwrap();
    assert_eq!((p.rules.limit, p.rules.offset), (Some(5), 10));
}

#[test]
fn bad_flags_are_named() {
    let e = args(|a| a.sort = Some("size".into())).pages().unwrap_err();
    assert!(
        e.to_string()
            .starts_with("--sort: \"size\" is not one of policy, name, hits"),
        "{e}"
    );
    let e = args(|a| a.order = Some("up".into())).pages().unwrap_err();
    assert!(e.to_string().starts_with("--order:"), "{e}");
    let e = args(|a| a.limit = Some(5000)).pages().unwrap_err();
    assert!(
        e.to_string().starts_with("--limit: 5000 is more than 1000"),
        "{e}"
    );
}
