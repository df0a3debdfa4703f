//! The runtime on real SQLite and PostgreSQL, with time as an argument: enrollments wake at
//! their `wake_at`, events move them, a crashed worker's lease expires and its work is redone
//! once, and every send is queued exactly once.

use std::path::Path;

use autofunnel::domain::{Consent, Email, LeadId};
use autofunnel::domain::{Event, EventKind};
use autofunnel::funnel::{self, Funnel, Outcome, Sink};
use autofunnel::runtime::{Enrolled, LEASE, Runtime, effects};
use autofunnel::store::{LeadInput, Store};
use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::util::on_both_backends;
use crate::util::root;

fn cart() -> Funnel {
    let file = "funnels/abandoned-cart.yaml";
    let mut sink = Sink::new(Path::new(file));
    let f = funnel::parse_text(
        Path::new(file),
        &std::fs::read_to_string(root().join(file)).unwrap(),
        &mut sink,
    );
    assert!(sink.diagnostics.is_empty());
    f.unwrap()
}

fn t0() -> DateTime<Utc> {
    // Tuesday 15:00 in Berlin: inside any send window.
    Utc.with_ymd_and_hms(2026, 11, 24, 14, 0, 0).unwrap()
}

async fn lead(store: &Store, email: &str) -> LeadId {
    let input = LeadInput {
        timezone: Some(chrono_tz::Europe::Berlin),
        ..Default::default()
    };
    store
        .upsert_lead(&Email::parse(email).unwrap(), input, t0())
        .await
        .unwrap()
        .id
}

fn templates(rows: &[autofunnel::store::OutboxRow]) -> Vec<String> {
    rows.iter()
        .map(|r| r.template.clone().unwrap_or_default())
        .collect()
}

async fn timers_wake_and_events_move(store: Store) {
    store.migrate().await.unwrap();
    let rt = Runtime::new(store.clone(), vec![cart()], "node-a", t0())
        .await
        .unwrap();
    let anna = lead(&store, "anna@example.com").await;
    let Enrolled::New(id) = rt
        .enroll(anna, &crate::util::fid("abandoned-cart"), t0())
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        rt.enroll(anna, &crate::util::fid("abandoned-cart"), t0())
            .await
            .unwrap(),
        Enrolled::AlreadyIn(id)
    );
    assert_eq!(
        store.next_wake().await.unwrap(),
        Some(t0() + Duration::hours(1))
    );
    assert_eq!(
        rt.tick(t0() + Duration::minutes(59)).await.unwrap(),
        0,
        "woke before its time"
    );
    assert_eq!(rt.tick(t0() + Duration::hours(1)).await.unwrap(), 1);
    assert_eq!(
        templates(&store.outbox_of(anna).await.unwrap()),
        ["cart-reminder"]
    );
    let purchase = Event {
        product: Some("green-tea".into()),
        ..Event::of(EventKind::Purchase)
    };
    let at = t0() + Duration::hours(2);
    assert_eq!(
        rt.event(anna, purchase.clone(), Some("order-1".into()), at)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        rt.event(anna, purchase, Some("order-1".into()), at)
            .await
            .unwrap(),
        0,
        "the same order counted twice"
    );
    let e = &store
        .enrollments_of(anna, &crate::util::fid("abandoned-cart"))
        .await
        .unwrap()[0];
    assert_eq!(
        e.state.status,
        autofunnel::domain::RunStatus::Exited(Outcome::Converted)
    );
    assert_eq!(e.state.wake_at, None);
    assert_eq!(store.next_wake().await.unwrap(), None);
    let history = store.stage_history(id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].stage, "cart");
    assert_eq!(history[0].exited_at, Some(at));
    assert_eq!(history[0].exit_reason.as_deref(), Some("exit: converted"));
    // Nothing more is due, ever.
    assert_eq!(rt.tick(t0() + Duration::days(30)).await.unwrap(), 0);
    assert_eq!(store.outbox_of(anna).await.unwrap().len(), 1);
    // re_entry: after 7d.
    assert_eq!(
        rt.enroll(
            anna,
            &crate::util::fid("abandoned-cart"),
            t0() + Duration::days(1)
        )
        .await
        .unwrap(),
        Enrolled::NotAgain
    );
    assert!(matches!(
        rt.enroll(
            anna,
            &crate::util::fid("abandoned-cart"),
            t0() + Duration::days(8)
        )
        .await
        .unwrap(),
        Enrolled::New(_)
    ));
    // The cart abandoned again gets its own reminder, the same step of a later run.
    let again = t0() + Duration::days(8) + Duration::hours(1);
    assert_eq!(rt.tick(again).await.unwrap(), 1);
    let mails = store.outbox_of(anna).await.unwrap();
    let templates: Vec<_> = mails.iter().map(|m| m.template.as_deref()).collect();
    assert_eq!(
        templates,
        [Some("cart-reminder"), Some("cart-reminder")],
        "{mails:?}"
    );
}

/// The cart funnel's timer step for the claimed run `c` at `due`, as a round would commit it.
async fn timer_update(
    rt: &Runtime,
    c: &autofunnel::store::EnrollmentRow,
    due: chrono::DateTime<chrono::Utc>,
) -> autofunnel::store::RunUpdate {
    let facts = rt.lead_facts(c.lead, due).await.unwrap();
    let f = cart();
    let t = autofunnel::engine::step(
        &f,
        &autofunnel::runtime::facts::resume(&f, c),
        &facts,
        &autofunnel::engine::Input::Timer,
        due,
    );
    autofunnel::store::RunUpdate {
        id: c.id,
        lead: c.lead,
        funnel: c.funnel.clone(),
        version: 1,
        events_seen: c.events_seen,
        state: effects::state_row(&f, &t.state),
        writes: effects::writes(
            c.lead,
            &c.funnel,
            (1, c.entered_at),
            "lead0@example.com",
            &t.effects,
        ),
        before: c.before(),
    }
}

/// A worker that stalled past its lease and then claimed the same run again (its own owner
/// name both times) commits only through its new claim: the end of the lease is the token, so
/// the stalled round's transition is refused and the new one applied, once.
async fn a_stalled_round_cannot_commit_over_its_own_later_claim(store: Store) {
    store.migrate().await.unwrap();
    let a = Runtime::new(store.clone(), vec![cart()], "node-a", t0())
        .await
        .unwrap();
    let l = lead(&store, "lead0@example.com").await;
    a.enroll(l, &crate::util::fid("abandoned-cart"), t0())
        .await
        .unwrap();
    let due = t0() + Duration::hours(1);
    let first = store.claim_due("node-a", due, LEASE, 500).await.unwrap();
    assert_eq!(first.len(), 1);
    let stalled = timer_update(&a, &first[0], due).await;
    // The round stalls past its lease; the same worker claims the run again.
    let later = due + LEASE + Duration::seconds(1);
    let second = store.claim_due("node-a", later, LEASE, 500).await.unwrap();
    assert_eq!(second.len(), 1);
    let fresh = timer_update(&a, &second[0], later).await;
    assert_eq!(
        store
            .commit_many("node-a", due + LEASE, &[stalled], &[l], due)
            .await
            .unwrap(),
        0,
        "the stalled round's claim is over"
    );
    assert_eq!(
        store
            .commit_many("node-a", later + LEASE, &[fresh], &[l], later)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        templates(&store.outbox_of(l).await.unwrap()),
        ["cart-reminder"]
    );
}

async fn a_crashed_worker_loses_its_lease_and_nothing_is_done_twice(store: Store) {
    store.migrate().await.unwrap();
    let a = Runtime::new(store.clone(), vec![cart()], "node-a", t0())
        .await
        .unwrap();
    let b = Runtime::new(store.clone(), vec![cart()], "node-b", t0())
        .await
        .unwrap();
    let mut leads = Vec::new();
    for i in 0..20 {
        let l = lead(&store, &format!("lead{i}@example.com")).await;
        a.enroll(l, &crate::util::fid("abandoned-cart"), t0())
            .await
            .unwrap();
        leads.push(l);
    }
    let due = t0() + Duration::hours(1);
    // Worker A claims the whole batch and dies before committing any of it.
    let claimed = store.claim_due("node-a", due, LEASE, 500).await.unwrap();
    assert_eq!(claimed.len(), 20);
    // While the lease holds, B finds nothing: never two workers on one lead.
    assert_eq!(b.tick(due + Duration::seconds(10)).await.unwrap(), 0);
    // Once it expired, B redoes all of it.
    let later = due + LEASE + Duration::seconds(1);
    assert_eq!(b.tick(later).await.unwrap(), 20);
    // A comes back and tries to commit its stale claim: refused, nothing written.
    let c = &claimed[0];
    let stale = timer_update(&a, c, due).await;
    assert_eq!(
        store
            .commit_many("node-a", due + LEASE, &[stale], &[c.lead], due)
            .await
            .unwrap(),
        0
    );
    for l in leads {
        assert_eq!(
            templates(&store.outbox_of(l).await.unwrap()),
            ["cart-reminder"],
            "lead {l}"
        );
    }
}

const CART_HEADER: &str =
    "name: Cart\nfrom: \"Shop <shop@example.com>\"\nentry: { event: checkout_started }\n";

/// The cart funnel edited: another send where `wait-2` stood, so `wait-2` is now step #4.
fn edited_cart() -> Funnel {
    parse_inline(
        "funnels/abandoned-cart.yaml",
        &format!(
            "{CART_HEADER}stages:\n  - id: cart\n    steps:\n      - wait: 2h\n      - send: cart-reminder\n      - send: cart-last-call\n      - wait: 2d\n      - exit: not_converted\n"
        ),
    )
}

fn parse_inline(file: &str, yaml: &str) -> Funnel {
    let mut sink = Sink::new(Path::new(file));
    let f = funnel::parse_text(Path::new(file), yaml, &mut sink);
    assert!(sink.diagnostics.is_empty(), "{:#?}", sink.diagnostics);
    f.unwrap()
}

async fn plan_shows_what_an_edit_does_to_leads_in_flight(store: Store) {
    store.migrate().await.unwrap();
    let rt = Runtime::new(store.clone(), vec![cart()], "node-a", t0())
        .await
        .unwrap();
    for i in 0..3 {
        let l = lead(&store, &format!("waiting{i}@example.com")).await;
        rt.enroll(l, &crate::util::fid("abandoned-cart"), t0())
            .await
            .unwrap();
    }
    let later = lead(&store, "reminded@example.com").await;
    rt.enroll(
        later,
        &crate::util::fid("abandoned-cart"),
        t0() - Duration::hours(2),
    )
    .await
    .unwrap();
    assert_eq!(rt.tick(t0()).await.unwrap(), 1); // sent the reminder, now on wait-2

    let unchanged = autofunnel::plan::plan(&store, &[cart()]).await.unwrap();
    let (text, affected) = autofunnel::plan::render(&unchanged);
    assert_eq!(
        text,
        "abandoned-cart: unchanged since version 1, 4 leads in flight\n0 leads affected\n"
    );
    assert_eq!(affected, 0);

    let edited = edited_cart();
    let (text, affected) =
        autofunnel::plan::render(&autofunnel::plan::plan(&store, &[edited]).await.unwrap());
    assert_eq!(
        text,
        "abandoned-cart: changed since version 1, 4 leads in flight\n  1 lead at cart/wait-2: step moved from #3 to #4; they stay on it\n1 lead affected\n"
    );
    assert_eq!(affected, 1);

    let renamed = parse_inline(
        "funnels/abandoned-cart.yaml",
        &format!(
            "{CART_HEADER}stages:\n  - id: basket\n    steps:\n      - wait: 1h\n      - exit: not_converted\n"
        ),
    );
    let (text, affected) =
        autofunnel::plan::render(&autofunnel::plan::plan(&store, &[renamed]).await.unwrap());
    assert_eq!(
        text,
        "abandoned-cart: changed since version 1, 4 leads in flight\n  \
         3 leads at cart/wait-1: stage \"cart\" is gone; they stay stranded until an event moves them\n  \
         1 lead at cart/wait-2: stage \"cart\" is gone; they stay stranded until an event moves them\n4 leads affected\n"
    );
    assert_eq!(affected, 4);
}

async fn reload_resumes_leads_by_step_id(store: Store) {
    store.migrate().await.unwrap();
    let rt = Runtime::new(store.clone(), vec![cart()], "node-a", t0())
        .await
        .unwrap();
    let l = lead(&store, "reminded@example.com").await;
    rt.enroll(l, &crate::util::fid("abandoned-cart"), t0())
        .await
        .unwrap();
    assert_eq!(rt.tick(t0() + Duration::hours(1)).await.unwrap(), 1); // reminder sent; on wait-2 (#3)
    // The edit puts another send where wait-2 stood; wait-2 is now step #4.
    let edited = edited_cart();
    rt.reload(vec![edited], t0() + Duration::hours(2))
        .await
        .unwrap();
    assert_eq!(rt.funnels()["abandoned-cart"].version, 2);
    // wait-2 (23h) runs out: the lead goes on after wait-2, not with the send now at #3.
    assert_eq!(rt.tick(t0() + Duration::days(1)).await.unwrap(), 1);
    assert_eq!(
        templates(&store.outbox_of(l).await.unwrap()),
        ["cart-reminder"]
    );
    let e = &store
        .enrollments_of(l, &crate::util::fid("abandoned-cart"))
        .await
        .unwrap()[0];
    assert_eq!(
        e.state.status,
        autofunnel::domain::RunStatus::Exited(Outcome::NotConverted)
    );
    assert_eq!(e.version, 2);
}

async fn an_event_for_a_busy_enrollment_is_fed_by_the_next_round(store: Store) {
    store.migrate().await.unwrap();
    let a = Runtime::new(store.clone(), vec![cart()], "node-a", t0())
        .await
        .unwrap();
    let b = Runtime::new(store.clone(), vec![cart()], "node-b", t0())
        .await
        .unwrap();
    let l = lead(&store, "busy@example.com").await;
    a.enroll(l, &crate::util::fid("abandoned-cart"), t0())
        .await
        .unwrap();
    let due = t0() + Duration::hours(1);
    // Node A holds the enrollment (and then dies) when the purchase arrives at node B.
    assert_eq!(
        store
            .claim_due("node-a", due, LEASE, 500)
            .await
            .unwrap()
            .len(),
        1
    );
    let purchase = Event {
        product: Some("green-tea".into()),
        ..Event::of(EventKind::Purchase)
    };
    assert_eq!(
        b.event(l, purchase, Some("order-7".into()), due)
            .await
            .unwrap(),
        0
    );
    // Once A's lease is gone, the next round feeds the stored event before the timer.
    assert_eq!(b.tick(due + LEASE + Duration::seconds(1)).await.unwrap(), 1);
    let e = &store
        .enrollments_of(l, &crate::util::fid("abandoned-cart"))
        .await
        .unwrap()[0];
    assert_eq!(
        e.state.status,
        autofunnel::domain::RunStatus::Exited(Outcome::Converted)
    );
    assert!(
        store.outbox_of(l).await.unwrap().is_empty(),
        "mailed a cart reminder after the purchase"
    );
}

async fn unsubscribing_stops_mail_from_every_funnel(store: Store) {
    store.migrate().await.unwrap();
    // A funnel with no `unsubscribed` transition of its own.
    let plain = parse_inline(
        "funnels/plain.yaml",
        &format!(
            "{CART_HEADER}stages:\n  - id: drip\n    steps:\n      - wait: 1h\n      - send: one\n      - wait: 1h\n      - send: two\n      - exit: completed\n"
        ),
    );
    let rt = Runtime::new(store.clone(), vec![plain], "node-a", t0())
        .await
        .unwrap();
    let l = lead(&store, "leaving@example.com").await;
    rt.enroll(l, &crate::util::fid("plain"), t0())
        .await
        .unwrap();
    assert_eq!(rt.tick(t0() + Duration::hours(1)).await.unwrap(), 1);
    rt.event(
        l,
        Event::of(EventKind::Unsubscribed),
        None,
        t0() + Duration::minutes(90),
    )
    .await
    .unwrap();
    rt.tick(t0() + Duration::hours(2)).await.unwrap();
    assert_eq!(templates(&store.outbox_of(l).await.unwrap()), ["one"]);
}

async fn an_event_is_fed_once_and_its_mark_cleared(store: Store) {
    store.migrate().await.unwrap();
    let scored = parse_inline(
        "funnels/scored.yaml",
        &format!(
            "{CART_HEADER}scoring:\n  rules:\n    - {{ event: click, points: 3 }}\nstages:\n  - id: drip\n    steps:\n      - wait: 7d\n      - exit: completed\n"
        ),
    );
    let rt = Runtime::new(store.clone(), vec![scored], "node-a", t0())
        .await
        .unwrap();
    let l = lead(&store, "clicker@example.com").await;
    rt.enroll(l, &crate::util::fid("scored"), t0())
        .await
        .unwrap();
    let click = Event {
        template: Some("one".into()),
        link: Some("offer".into()),
        ..Event::of(EventKind::Click)
    };
    assert_eq!(
        rt.event(l, click, None, t0() + Duration::minutes(1))
            .await
            .unwrap(),
        1
    );
    // Nothing is left to do: later rounds neither claim the enrollment nor feed the click again.
    for m in [2, 3, 60] {
        assert_eq!(rt.tick(t0() + Duration::minutes(m)).await.unwrap(), 0);
    }
    let email = Email::parse("clicker@example.com").unwrap();
    assert_eq!(store.lead_by_email(&email).await.unwrap().unwrap().score, 3);
    let e = &store
        .enrollments_of(l, &crate::util::fid("scored"))
        .await
        .unwrap()[0];
    assert!(e.events_seen > 0, "the event cursor did not move");
}

fn course() -> Funnel {
    let file = "funnels/relationships-course.yaml";
    parse_inline(file, &std::fs::read_to_string(root().join(file)).unwrap())
}

async fn double_opt_in_asks_only_leads_not_yet_confirmed(store: Store) {
    store.migrate().await.unwrap();
    let rt = Runtime::new(store.clone(), vec![course()], "node-a", t0())
        .await
        .unwrap();
    let input = LeadInput {
        timezone: Some(chrono_tz::Europe::Berlin),
        ..Default::default()
    };
    let known = Email::parse("known@example.com").unwrap();
    let new = Email::parse("new@example.com").unwrap();
    let [known_id] = store
        .import_leads(&[(known.clone(), input.clone())], Consent::Confirmed, t0())
        .await
        .unwrap()[..]
    else {
        panic!()
    };
    let new_id = store.upsert_lead(&new, input, t0()).await.unwrap().id;
    // One call for both, the new lead given twice: it is enrolled once.
    let got = rt
        .enroll_many(
            &[known_id, new_id, new_id],
            &crate::util::fid("relationships-course"),
            t0(),
        )
        .await
        .unwrap();
    assert!(matches!(got[0], Enrolled::New(_)));
    let Enrolled::New(new_run) = got[1] else {
        panic!("{got:?}")
    };
    assert_eq!(got[1], got[2]);
    assert_eq!(
        templates(&store.outbox_of(known_id).await.unwrap()),
        ["book-delivery"]
    );
    assert_eq!(
        templates(&store.outbox_of(new_id).await.unwrap()),
        ["confirm"]
    );
    // The report: two entered, one of them still waiting for the click and in no stage.
    let report = |now| {
        let store = store.clone();
        async move {
            let rows = store
                .report_rows(
                    &crate::util::fid("relationships-course"),
                    now,
                    autofunnel::store::ReportNeeds::ALL,
                )
                .await
                .unwrap();
            let r = autofunnel::report::funnel_report(
                &course(),
                &rows,
                autofunnel::report::Cohort::Entry,
                t0() - Duration::days(1),
                now,
                now,
            )
            .unwrap();
            (r.entered, r.awaiting_confirmation, r.stages[0].leads_in)
        }
    };
    assert_eq!(report(t0() + Duration::minutes(1)).await, (2, 1, 1));
    rt.event(
        new_id,
        Event::of(EventKind::Confirmed),
        None,
        t0() + Duration::minutes(5),
    )
    .await
    .unwrap();
    assert_eq!(report(t0() + Duration::minutes(10)).await, (2, 0, 2));
    assert_eq!(
        templates(&store.outbox_of(new_id).await.unwrap()),
        ["confirm", "book-delivery"]
    );
    let lead = store.lead_by_email(&new).await.unwrap().unwrap();
    assert_eq!(lead.consent, Consent::Confirmed);
    // Asked again later (another form), the confirmed lead is not asked to confirm.
    assert_eq!(
        rt.enroll(
            new_id,
            &crate::util::fid("relationships-course"),
            t0() + Duration::hours(1)
        )
        .await
        .unwrap(),
        Enrolled::AlreadyIn(new_run)
    );
    // The known lead never buys: book → webinar offer → deadline → nurture, which tags and
    // exits in the same transition that enters it.
    for h in 1..=24 * 7 {
        rt.tick(t0() + Duration::hours(h)).await.unwrap();
    }
    let Enrolled::New(run) = got[0] else {
        panic!("{got:?}")
    };
    let visits: Vec<(String, Option<String>, Option<String>)> = store
        .stage_history(run)
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.stage, v.exit_reason, v.next_stage))
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        visits,
        [
            ("lead_magnet".into(), s("goto: tripwire"), s("tripwire")),
            ("tripwire".into(), s("goto: nurture"), s("nurture")),
            ("nurture".into(), s("exit: not_converted"), None),
        ]
    );
    assert_eq!(store.lead_tags(known_id).await.unwrap().len(), 1);
}

async fn the_frequency_cap_holds_across_funnels_stepped_in_one_round(store: Store) {
    store.migrate().await.unwrap();
    let capped = |id: &str| {
        parse_inline(
            &format!("funnels/{id}.yaml"),
            &format!(
                "{CART_HEADER}frequency_cap: 1 per 24h\nstages:\n  - id: drip\n    steps:\n      - wait: 1h\n      - send: one\n      - wait: 7d\n      - exit: completed\n"
            ),
        )
    };
    let rt = Runtime::new(
        store.clone(),
        vec![capped("first"), capped("second")],
        "node-a",
        t0(),
    )
    .await
    .unwrap();
    let l = lead(&store, "capped@example.com").await;
    rt.enroll(l, &crate::util::fid("first"), t0())
        .await
        .unwrap();
    rt.enroll(l, &crate::util::fid("second"), t0())
        .await
        .unwrap();
    // Both timers fall due in the same round: the second funnel sees the first one's send.
    assert_eq!(rt.tick(t0() + Duration::hours(1)).await.unwrap(), 2);
    assert_eq!(store.outbox_of(l).await.unwrap().len(), 1);
    // A day later the held one goes out.
    rt.tick(t0() + Duration::hours(26)).await.unwrap();
    assert_eq!(store.outbox_of(l).await.unwrap().len(), 2);
}

/// A cap over six weeks counts every send of those six weeks in the runtime as in
/// `simulate` (tests/engine/long-cap.timeline): two emails on day 0 and day 20 hold the third,
/// due on day 35, until day 42.
async fn a_long_frequency_cap_counts_every_send_of_its_period(store: Store) {
    store.migrate().await.unwrap();
    let f = parse_inline(
        "funnels/slow.yaml",
        &format!(
            "{CART_HEADER}frequency_cap: 2 per 6w\nstages:\n  - id: slow\n    steps:\n      - send: one\n      - wait: 20d\n      - send: two\n      - wait: 15d\n      - send: three\n      - wait: 30d\n      - exit: completed\n"
        ),
    );
    let rt = Runtime::new(store.clone(), vec![f], "node-a", t0())
        .await
        .unwrap();
    let l = lead(&store, "slow@example.com").await;
    rt.enroll(l, &crate::util::fid("slow"), t0()).await.unwrap();
    let day = |d: i64| t0() + Duration::days(d);
    for d in [20, 35] {
        while rt.tick(day(d)).await.unwrap() > 0 {}
    }
    assert_eq!(store.outbox_of(l).await.unwrap().len(), 2, "held on day 35");
    while rt.tick(day(42) - Duration::minutes(1)).await.unwrap() > 0 {}
    assert_eq!(store.outbox_of(l).await.unwrap().len(), 2, "still held");
    while rt.tick(day(42)).await.unwrap() > 0 {}
    assert_eq!(store.outbox_of(l).await.unwrap().len(), 3, "out on day 42");
}

async fn a_lead_is_stepped_by_one_worker_at_a_time(store: Store) {
    store.migrate().await.unwrap();
    let drip = |id: &str| {
        parse_inline(
            &format!("funnels/{id}.yaml"),
            &format!(
                "{CART_HEADER}stages:\n  - id: drip\n    steps:\n      - wait: 1h\n      - send: one\n      - wait: 7d\n      - exit: completed\n"
            ),
        )
    };
    let funnels = || vec![drip("first"), drip("second")];
    let a = Runtime::new(store.clone(), funnels(), "node-a", t0())
        .await
        .unwrap();
    let b = Runtime::new(store.clone(), funnels(), "node-b", t0())
        .await
        .unwrap();
    let l = lead(&store, "shared@example.com").await;
    a.enroll(l, &crate::util::fid("first"), t0()).await.unwrap();
    a.enroll(l, &crate::util::fid("second"), t0())
        .await
        .unwrap();
    let due = t0() + Duration::hours(1);
    // Node A takes the lead: both of its due enrollments, though it asked for one lead only.
    let held = store.claim_due("node-a", due, LEASE, 1).await.unwrap();
    assert_eq!(held.len(), 2);
    // Node B gets nothing of that lead, by timer or by event, while A holds it.
    assert!(
        store
            .claim_due("node-b", due, LEASE, 500)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        b.event(l, Event::of(EventKind::Open), None, due)
            .await
            .unwrap(),
        0
    );
    assert_eq!(b.tick(due + Duration::seconds(1)).await.unwrap(), 0);
    // A dies; once its lease is over, B steps both funnels and feeds the waiting event.
    assert_eq!(b.tick(due + LEASE + Duration::seconds(1)).await.unwrap(), 2);
    assert_eq!(store.outbox_of(l).await.unwrap().len(), 2);
    for f in ["first", "second"] {
        let e = &store.enrollments_of(l, &crate::util::fid(f)).await.unwrap()[0];
        assert!(e.events_seen > 0, "{f} did not see the event");
    }
    // And the lead is free again for whoever comes next.
    assert_eq!(
        a.event(l, Event::of(EventKind::Open), None, due + LEASE * 2)
            .await
            .unwrap(),
        2
    );
}

/// A run claimed again and again without ever being committed (its round keeps failing, or
/// its worker keeps dying) is parked after `MAX_CLAIMS` claims; the other leads' runs go on,
/// and a commit would have reset the count.
async fn a_run_that_never_commits_is_parked(store: Store) {
    use autofunnel::store::MAX_CLAIMS;
    store.migrate().await.unwrap();
    let rt = Runtime::new(store.clone(), vec![cart()], "node-a", t0())
        .await
        .unwrap();
    let stuck = lead(&store, "stuck@example.com").await;
    rt.enroll(stuck, &crate::util::fid("abandoned-cart"), t0())
        .await
        .unwrap();
    let mut due = t0() + Duration::hours(1);
    for claim in 1..=MAX_CLAIMS {
        let claimed = store.claim_due("dies", due, LEASE, 500).await.unwrap();
        assert_eq!(claimed.len(), 1, "claim {claim}");
        due += LEASE + Duration::seconds(1);
    }
    assert!(
        store
            .claim_due("dies", due, LEASE, 500)
            .await
            .unwrap()
            .is_empty()
    );
    // Another lead's run, due at the same time, is stepped as usual.
    let fine = lead(&store, "fine@example.com").await;
    rt.enroll(fine, &crate::util::fid("abandoned-cart"), t0())
        .await
        .unwrap();
    assert_eq!(rt.tick(due).await.unwrap(), 1);
    assert_eq!(
        templates(&store.outbox_of(fine).await.unwrap()),
        ["cart-reminder"]
    );
    assert!(store.outbox_of(stuck).await.unwrap().is_empty());
}

/// A funnel's score decay in the real runtime: the points lost since the score last changed
/// (kept with the lead) are taken off before new ones are added, and an MQL is emitted only
/// when the decayed score crosses the threshold upward.
async fn score_decays_between_rounds(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = crate::util::project_of(
        dir.path(),
        &[(
            "funnels/decay.yaml",
            "name: Decay\nentry: { api: true }\n\
             scoring:\n  rules:\n    - { event: click, points: 10 }\n  decay: { points: 5, every: 7d }\n  mql: 15\n\
             stages:\n  - id: warm\n    steps:\n      - wait: 60d\n      - exit: completed\n",
        )],
    );
    let t0 = Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap();
    let rt = crate::util::engine(&store, &p, t0).await;
    let email = Email::parse("cool@example.com").unwrap();
    let id = store
        .import_leads(
            &[(email.clone(), LeadInput::default())],
            Consent::Confirmed,
            t0,
        )
        .await
        .unwrap()[0];
    rt.enroll(id, &crate::util::fid("decay"), t0).await.unwrap();
    let click = |at: DateTime<Utc>, n: u32| {
        let rt = rt.clone();
        async move {
            rt.event(
                id,
                Event::of(EventKind::Click),
                Some(format!("click-{n}")),
                at,
            )
            .await
            .unwrap();
            rt.tick(at).await.unwrap();
        }
    };
    let score = || {
        let (store, email) = (store.clone(), email.clone());
        async move { store.lead_by_email(&email).await.unwrap().unwrap() }
    };
    click(t0 + Duration::hours(1), 1).await;
    click(t0 + Duration::hours(2), 2).await;
    let l = score().await;
    assert_eq!((l.score, l.scored_at), (20, Some(t0 + Duration::hours(2))));
    // Twenty days on: two periods lost (20 → 10), then 10 more: 20, a second upward crossing.
    click(t0 + Duration::days(20), 3).await;
    assert_eq!(score().await.score, 20);
    // Ten days on: one period (20 → 15), at the threshold already: no crossing.
    click(t0 + Duration::days(30), 4).await;
    assert_eq!(score().await.score, 25);
    let mqls = store
        .lead_events(id)
        .await
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k == "mql")
        .count();
    let record = store.export_lead(id).await.unwrap().unwrap();
    let milestones = record["milestones"].as_array().unwrap();
    assert_eq!((mqls, milestones.len()), (0, 2), "{milestones:?}");
    assert_eq!(milestones[1]["kind"], "mql");
}

on_both_backends! {
    score_decay => score_decays_between_rounds,
    parked_run => a_run_that_never_commits_is_parked,
    one_worker_per_lead => a_lead_is_stepped_by_one_worker_at_a_time,
    cap_across_funnels_in_one_round => the_frequency_cap_holds_across_funnels_stepped_in_one_round,
    long_cap => a_long_frequency_cap_counts_every_send_of_its_period,
    event_fed_once => an_event_is_fed_once_and_its_mark_cleared,
    double_opt_in_once => double_opt_in_asks_only_leads_not_yet_confirmed,
    timers_wake_and_events_move => timers_wake_and_events_move,
    crashed_worker => a_crashed_worker_loses_its_lease_and_nothing_is_done_twice,
    stalled_round => a_stalled_round_cannot_commit_over_its_own_later_claim,
    plan_of_an_edit => plan_shows_what_an_edit_does_to_leads_in_flight,
    reload_by_step_id => reload_resumes_leads_by_step_id,
    event_for_busy_enrollment => an_event_for_a_busy_enrollment_is_fed_by_the_next_round,
    unsubscribe_stops_all_mail => unsubscribing_stops_mail_from_every_funnel,
}
