//! Funnel reports over data seeded through the real runtime and store, compared with reports
//! worked out by hand (`tests/report/*`; `UPDATE_EXPECT=1` rewrites them).

use autofunnel::domain::{Consent, Email, Event, EventKind, LeadId};
use autofunnel::funnel::Funnel;
use autofunnel::report::request::FunnelAnswer;
use autofunnel::report::request::{Answer, Params, Request, What, answer};
use autofunnel::report::{Cohort, SliceKey, funnel_report, render, sliced_reports};
use autofunnel::store::{
    BatchEvent, Counted, Grouping, LeadInput, LeadRef, ReportData, ReportNeeds, ReportRead,
    ReportRows, Store,
};
use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::util::{expect_file, fid, on_both_backends, project_of, root};

const B2B: &str = r#"name: Applications to payment
from: "Sales <sales@example.com>"
entry: { api: true }
products:
  service: { price: 1000, currency: EUR }
stages:
  - id: application
    on: [{ event: offer_made, goto: offer }]
    steps:
      - wait: 30d
      - exit: not_converted
  - id: offer
    on: [{ event: invoiced, goto: invoice }]
    steps:
      - wait: 30d
      - exit: not_converted
  - id: invoice
    kind: main_product
    offer: service
    on: [{ event: purchase, product: service, goto: paid }]
    steps:
      - wait: 30d
      - exit: not_converted
  - id: paid
    steps:
      - exit: converted
"#;

/// The funnel report `req` asks for, made from the rows and from what the store reads for it
/// (its counters, where they answer): the two agree to the byte.
async fn funnel_both(
    store: &Store,
    f: &Funnel,
    rows: &ReportRows,
    req: &Request,
    now: DateTime<Utc>,
) -> FunnelAnswer {
    match both(store, f, rows, req, now).await {
        Answer::Funnel(a) => *a,
        _ => unreachable!(),
    }
}

/// Any report from the rows and as the store makes it (its counters, or its rows read three
/// lead ids at a time, so the range reads are crossed), compared.
async fn both(
    store: &Store,
    f: &Funnel,
    rows: &ReportRows,
    req: &Request,
    now: DateTime<Utc>,
) -> Answer {
    let from_rows = answer(f, &ReportData::Rows(rows.clone()), req, now).unwrap();
    let ranged = store.clone().with_lead_range(3);
    let stored = autofunnel::runtime::report::make(&ranged, f, req, now)
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&stored).unwrap(),
        serde_json::to_value(&from_rows).unwrap(),
        "counters and rows disagree on {req:?}"
    );
    from_rows
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap()
}

/// `n` confirmed leads `{prefix}{i}@example.com`, without fields.
async fn confirmed_leads(store: &Store, prefix: &str, n: usize) -> Vec<LeadId> {
    let leads: Vec<(Email, LeadInput)> = (0..n)
        .map(|i| {
            let email = Email::parse(&format!("{prefix}{i}@example.com")).unwrap();
            (email, LeadInput::default())
        })
        .collect();
    store
        .import_leads(&leads, Consent::Confirmed, t0())
        .await
        .unwrap()
}

/// Confirmed leads `{prefix}{i}@example.com`, each with the `region` field given (or none).
async fn leads_in_regions(store: &Store, prefix: &str, regions: &[Option<&str>]) -> Vec<LeadId> {
    let leads: Vec<(Email, LeadInput)> = regions
        .iter()
        .enumerate()
        .map(|(i, region)| {
            let mut fields = serde_json::Map::new();
            if let Some(r) = region {
                fields.insert("region".into(), (*r).into());
            }
            let input = LeadInput {
                fields,
                ..LeadInput::default()
            };
            (
                Email::parse(&format!("{prefix}{i}@example.com")).unwrap(),
                input,
            )
        })
        .collect();
    store
        .import_leads(&leads, Consent::Confirmed, t0())
        .await
        .unwrap()
}

/// A purchase of `product` for `amount` EUR.
fn purchase(product: &str, amount: f64) -> Event {
    Event {
        product: Some(product.into()),
        amount: autofunnel::domain::Money::of_units(amount),
        currency: Some("EUR".into()),
        ..Event::of(EventKind::Purchase)
    }
}

/// The textbook funnel: 1,000 applications → 520 offers → 215 invoices → 130 paid, one day
/// apart. Stage conversions 52.0 %, 41.3 %, 60.5 %; 13.0 % overall; 130 × 1,000 EUR.
async fn the_textbook_funnel(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(dir.path(), &[("funnels/b2b.yaml", B2B)]);
    let rt = crate::util::engine(&store, &p, t0()).await;
    // The first 500 are in the north (and make every sale), the rest in the south.
    let regions: Vec<Option<&str>> = (0..1000)
        .map(|i| Some(if i < 500 { "north" } else { "south" }))
        .collect();
    let ids = leads_in_regions(&store, "a", &regions).await;
    rt.enroll_many(&ids, &fid("b2b"), t0()).await.unwrap();
    let step = |ids: &[LeadId], kind: EventKind, at: DateTime<Utc>| {
        let batch: Vec<BatchEvent> = ids
            .iter()
            .map(|l| BatchEvent {
                fields: Default::default(),
                who: LeadRef::Id(*l),
                event: match kind {
                    EventKind::Purchase => purchase("service", 1000.0),
                    ref k => Event::of(k.clone()),
                },
                idempotency_key: Some(format!("{kind}:{}", l.0)),
                occurred_at: at,
                touch: None,
            })
            .collect();
        let rt = rt.clone();
        async move { rt.record_batch(batch, at).await.unwrap() }
    };
    let custom = |n: &str| EventKind::parse(n).unwrap();
    step(&ids[..520], custom("offer_made"), t0() + Duration::days(1)).await;
    step(&ids[..215], custom("invoiced"), t0() + Duration::days(2)).await;
    step(&ids[..130], EventKind::Purchase, t0() + Duration::days(3)).await;
    // Whatever the event path left pending is fed by a round.
    while rt.tick(t0() + Duration::days(3)).await.unwrap() > 0 {}
    let now = t0() + Duration::days(10);
    let rows = store
        .report_rows(&fid("b2b"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let f = &p.funnels[0];
    let from = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let to = Utc.with_ymd_and_hms(2026, 11, 8, 0, 0, 0).unwrap();
    let r = funnel_report(f, &rows, Cohort::Entry, from, to, now).unwrap();
    let pct: Vec<Option<f64>> = r
        .stages
        .iter()
        .map(|s| s.to_next.and_then(|t| t.percent))
        .collect();
    assert_eq!(pct, [Some(52.0), Some(41.3), Some(60.5), None]);
    assert_eq!(r.converted.percent, Some(13.0));
    expect_file(
        &root().join("tests/report/textbook.table"),
        &render::table(&r),
    );
    expect_file(&root().join("tests/report/textbook.csv"), &render::csv(&r));
    // The week after: nobody entered, so the entry cohort is empty, while the calendar view
    // sees the offers, invoices and payments made that week.
    let (from2, to2) = (to, to + Duration::days(7));
    let entry = funnel_report(f, &rows, Cohort::Entry, from2, to2, now).unwrap();
    assert_eq!((entry.entered, entry.stages[1].leads_in), (0, 0));
    let calendar = funnel_report(f, &rows, Cohort::Calendar, from, to, now).unwrap();
    let ins: Vec<u64> = calendar.stages.iter().map(|s| s.leads_in).collect();
    assert_eq!(ins, [1000, 520, 215, 130]);
    assert!(funnel_report(f, &rows, Cohort::Entry, to, from, now).is_err());

    // Sliced by a lead field: the north made every offer but 20, every invoice and sale.
    let region = SliceKey::parse("field:region").unwrap();
    let slices = sliced_reports(f, &rows, &region, Cohort::Entry, from, to, now).unwrap();
    /// A slice's value, its leads per stage and its stage conversions.
    type Row<'a> = (&'a str, Vec<u64>, Vec<Option<f64>>);
    let by: Vec<Row> = slices
        .iter()
        .map(|s| {
            let ins = s.report.stages.iter().map(|x| x.leads_in).collect();
            let pct = s
                .report
                .stages
                .iter()
                .map(|x| x.to_next.and_then(|t| t.percent))
                .collect();
            (s.value.as_str(), ins, pct)
        })
        .collect();
    assert_eq!(
        by,
        [
            (
                "north",
                vec![500, 500, 215, 130],
                vec![Some(100.0), Some(43.0), Some(60.5), None]
            ),
            (
                "south",
                vec![500, 20, 0, 0],
                vec![Some(4.0), Some(0.0), None, None]
            ),
        ]
    );
    // A conversion window of 36 hours: the offers (day 1) count, the invoices (day 2) and
    // payments (day 3) do not, so the offers are still there; with 3 days everything counts.
    let ask = |what, f: &dyn Fn(&mut Params)| {
        let mut p = Params {
            from: Some("2026-11-01".into()),
            to: Some("2026-11-08".into()),
            ..Params::default()
        };
        f(&mut p);
        Request::parse(what, &p, now).unwrap()
    };
    let funnel_of = async |req: &Request| funnel_both(&store, f, &rows, req, now).await;
    // The plain report from the counters is the one from the rows.
    let plain = funnel_of(&ask(What::Funnel, &|_| {})).await;
    assert_eq!(plain.report, r);
    let calendar_answer =
        funnel_of(&ask(What::Funnel, &|p| p.cohort = Some("calendar".into()))).await;
    assert_eq!(calendar_answer.report, calendar);
    let short = funnel_of(&ask(What::Funnel, &|p| p.window = Some("36h".into()))).await;
    let ins: Vec<u64> = short.report.stages.iter().map(|s| s.leads_in).collect();
    assert_eq!(ins, [1000, 520, 0, 0]);
    assert_eq!(short.report.stages[1].still_there, 520);
    assert_eq!(short.report.converted.part, 0);
    assert_eq!(short.window_seconds, Some(36 * 3600));
    let long = funnel_of(&ask(What::Funnel, &|p| p.window = Some("3d".into()))).await;
    assert_eq!(long.report.stages, r.stages);
    // By day in the calendar view: each stage's entries on the day they happened.
    let daily = funnel_of(&ask(What::Funnel, &|p| {
        p.by = Some("day".into());
        p.cohort = Some("calendar".into());
    }))
    .await;
    let sliced = funnel_of(&ask(What::Funnel, &|p| {
        p.by = Some("week".into());
        p.slice = vec!["utm_source".into(), "channel".into()];
    }))
    .await;
    assert_eq!(sliced.slices.as_ref().map(Vec::len), Some(2));
    // The slice by a lead field made by the store, three leads at a time, is the one above.
    let by_region = funnel_of(&ask(What::Funnel, &|p| {
        p.slice = vec!["field:region".into()]
    }))
    .await;
    assert_eq!(by_region.slices.as_ref(), Some(&slices));
    let typo = ask(What::Funnel, &|p| p.slice = vec!["field:regon".into()]);
    let ranged = store.clone().with_lead_range(3);
    match autofunnel::runtime::report::make(&ranged, f, &typo, now).await {
        Err(autofunnel::runtime::report::ReportFailed::Report(e)) => {
            assert_eq!(e.param(), "slice", "{e}")
        }
        other => panic!("a field no lead has is refused: {other:?}"),
    }
    let days: Vec<(String, Vec<u64>)> = daily
        .periods
        .iter()
        .flatten()
        .map(|p| {
            let ins = p.stages.iter().map(|s| s.leads_in).collect();
            (p.from.format("%m-%d").to_string(), ins)
        })
        .collect();
    let z = vec![0, 0, 0, 0];
    assert_eq!(
        days,
        [
            ("11-01".into(), z.clone()),
            ("11-02".into(), vec![1000, 0, 0, 0]),
            ("11-03".into(), vec![0, 520, 0, 0]),
            ("11-04".into(), vec![0, 0, 215, 0]),
            ("11-05".into(), vec![0, 0, 0, 130]),
            ("11-06".into(), z.clone()),
            ("11-07".into(), z),
        ]
    );
    expect_file(
        &root().join("tests/report/textbook-by-day.table"),
        &render::funnel_table(&daily),
    );
    // Weekly entry cohorts: the whole cohort and its progress in the week it entered.
    let weekly = funnel_of(&ask(What::Funnel, &|p| p.by = Some("week".into()))).await;
    let weeks: Vec<(u64, u64)> = weekly
        .periods
        .iter()
        .flatten()
        .map(|p| (p.entered, p.converted.part))
        .collect();
    assert_eq!(weeks, [(0, 0), (1000, 130)]);

    // The forecast from these rates, 100 a day for 30 days, at day 10. Times in stage by
    // Kaplan–Meier: application 1 day (520 of 1,000 left after a day), offer not known yet (215
    // of 520 left after a day, 305 still there after 9): at least 9 days, invoice 1 day, paid 0.
    // New arrivals (3,000) reach the offer on a + 1, the invoice on a + 10, payment on a + 11:
    // 3,000 × 0.52 × 29/30 = 1,508 offers, 3,000 × 0.215 × 20/30 = 430 invoices,
    // 3,000 × 0.13 × 19/30 = 247 paid. The leads in flight go on from where they stand, all
    // past their stage's median: the 480 applications give 249.6 offers, 103.2 invoices and
    // 62.4 payments; the 305 offers 126.1 invoices and 76.25 payments; the 85 invoices 51.4
    // payments. Paid: 247 + 62.4 + 76.25 + 51.395 = 437.045; as many orders of 1,000 EUR and
    // conversions. `invoice=+10%` lifts every payment by a tenth: 480.7.
    // From the rows and from the store's counters (with the runs in flight), the same
    // forecast.
    let asked = ask(What::Forecast, &|p| {
        *p = Params {
            inflow: Some("100/day".into()),
            set: vec!["invoice=+10%".into()],
            ..Params::default()
        }
    });
    assert!(matches!(
        asked.read(now, chrono_tz::UTC),
        autofunnel::store::ReportRead::Forecast(_)
    ));
    let fc = match both(&store, f, &rows, &asked, now).await {
        Answer::Forecast(fc) => fc,
        _ => unreachable!(),
    };
    expect_file(
        &root().join("tests/report/textbook-forecast.table"),
        &render::forecast_table(&fc).replace(&now.format("%Y-%m-%d %H:%M").to_string(), "NOW"),
    );
    let leads: Vec<f64> = fc
        .stages
        .iter()
        .map(|s| s.leads.baseline.expected)
        .collect();
    assert_eq!(leads, [3000.0, 1757.6, 659.3, 437.0]);
    let in_flight: Vec<u64> = fc.stages.iter().map(|s| s.in_flight).collect();
    assert_eq!(in_flight, [480, 305, 85, 0]);
    let days: Vec<f64> = fc.stages.iter().map(|s| s.days_in_stage).collect();
    assert_eq!(days, [1.0, 9.0, 1.0, 0.0]);
    assert_eq!(fc.stages[2].orders.baseline.expected, 437.0);
    assert_eq!(fc.conversions.baseline.expected, 437.0);
    assert_eq!(fc.revenue[0].revenue.baseline.expected, 437_045.35);
    assert_eq!(fc.stages[3].leads.scenario.expected, 480.7);
    assert_eq!(fc.revenue[0].revenue.scenario.expected, 480_749.88);
    // Without `--inflow`, the inflow is observed over the funnel's life (10 days), not the 90
    // days of history asked for: 1,000 / 10 a day.
    let observed = match both(
        &store,
        f,
        &rows,
        &ask(What::Forecast, &|p| *p = Params::default()),
        now,
    )
    .await
    {
        Answer::Forecast(fc) => fc,
        _ => unreachable!(),
    };
    assert_eq!(
        (observed.inflow_per_day, observed.inflow_source),
        (100.0, "observed")
    );
    let paid = fc.stages[3].leads.baseline;
    assert!(
        paid.low < paid.expected && paid.expected < paid.high,
        "{paid:?}"
    );

    // A field no lead has is refused, with the fields there are.
    let typo = SliceKey::parse("field:regon").unwrap();
    let err = sliced_reports(f, &rows, &typo, Cohort::Entry, from, to, now).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no lead of this funnel has the field \"regon\" (did you mean \"region\"?) \
         (their fields are: region)"
    );
    assert_eq!(err.param(), "slice");

    // Nobody came through a form here: one group without a source.
    let source = SliceKey::parse("utm_source").unwrap();
    let slices = sliced_reports(f, &rows, &source, Cohort::Entry, from, to, now).unwrap();
    assert_eq!(slices.len(), 1);
    assert_eq!(
        (slices[0].value.as_str(), slices[0].report.entered),
        ("(none)", 1000)
    );
}

on_both_backends! {
    textbook => the_textbook_funnel,
}

const NEWS: &str = r#"name: Welcome and offer
from: "Shop <shop@example.com>"
entry: { api: true }
products:
  course: { price: 100, currency: EUR }
stages:
  - id: welcome
    steps:
      - send: hello
      - wait: 2d
      - goto: offer
  - id: offer
    offer: course
    on: [{ event: purchase, product: course, goto: bought }]
    steps:
      - send: pitch
      - wait: 3d
      - exit: not_converted
  - id: bought
    steps:
      - exit: converted
"#;

/// Per email, through the real runtime and sender: ten leads get `hello`; six open it, three
/// of them click (two `buy`, one `read`), one unsubscribes; all ten go on to the offer (the
/// funnel has no exit on unsubscribing), the nine still mailable get `pitch`, one bounces, two
/// buy. Per link: the `read` clicker also clicks `buy` in `hello` once in the offer stage (a
/// click after its run moved on counts toward the move); two click `pay` in `pitch`, one of
/// them buys after (a move after the click counts toward it).
async fn the_email_report(store: Store) {
    use autofunnel::delivery::{Sender, Transport};
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(
        dir.path(),
        &[
            ("funnels/news.yaml", NEWS),
            ("templates/news/hello.subject", "Hello"),
            ("templates/news/hello.html", "<p>Hello</p>"),
            ("templates/news/pitch.subject", "The course"),
            ("templates/news/pitch.html", "<p>Buy it</p>"),
        ],
    );
    let rt = crate::util::engine(&store, &p, t0()).await;
    let ids = confirmed_leads(&store, "n", 10).await;
    rt.enroll_many(&ids, &fid("news"), t0()).await.unwrap();
    let outbox = dir.path().join("outbox");
    std::fs::create_dir(&outbox).unwrap();
    let sender = Sender::new(
        store.outbox(),
        p.clone(),
        Transport::Folder(outbox),
        "http://127.0.0.1:1",
        b"report test secret",
    );
    assert_eq!(sender.drain(t0()).await.unwrap().sent, 10);
    let at = |h: i64| t0() + Duration::hours(h);
    let ev = |kind: EventKind, template: &str, link: Option<&str>| Event {
        template: Some(template.into()),
        link: link.map(String::from),
        ..Event::of(kind)
    };
    for lead in &ids[..6] {
        rt.event(*lead, ev(EventKind::Open, "hello", None), None, at(1))
            .await
            .unwrap();
    }
    for (i, link) in [(0, "buy"), (1, "buy"), (2, "read")] {
        rt.event(
            ids[i],
            ev(EventKind::Click, "hello", Some(link)),
            None,
            at(2),
        )
        .await
        .unwrap();
    }
    rt.event(ids[9], Event::of(EventKind::Unsubscribed), None, at(3))
        .await
        .unwrap();
    // Two days on: the nine still subscribed move to the offer and get the pitch.
    while rt.tick(at(49)).await.unwrap() > 0 {}
    assert_eq!(sender.drain(at(49)).await.unwrap().sent, 9);
    rt.event(ids[8], ev(EventKind::Bounced, "pitch", None), None, at(50))
        .await
        .unwrap();
    for (lead, template, link) in [
        (2, "hello", "buy"),
        (0, "pitch", "pay"),
        (4, "pitch", "pay"),
    ] {
        rt.event(
            ids[lead],
            ev(EventKind::Click, template, Some(link)),
            None,
            at(50),
        )
        .await
        .unwrap();
    }
    for (i, lead) in ids[..2].iter().enumerate() {
        let buy = purchase("course", 100.0);
        rt.event(*lead, buy, Some(format!("order-{i}")), at(51))
            .await
            .unwrap();
    }
    let now = at(60);
    let rows = store
        .report_rows(&fid("news"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let params = Params {
        from: Some("2026-11-01".into()),
        to: Some("2026-11-08".into()),
        ..Params::default()
    };
    let req = Request::parse(What::Emails, &params, now).unwrap();
    assert!(matches!(
        req.read(now, chrono_tz::UTC),
        ReportRead::Counts(_)
    ));
    let Answer::Emails(r) = both(&store, &p.funnels[0], &rows, &req, now).await else {
        unreachable!()
    };
    expect_file(
        &root().join("tests/report/emails.table"),
        &render::email_table(&r),
    );
    let hello = &r.emails[0];
    assert_eq!(
        (hello.queued, hello.accepted, hello.unsubscribed),
        (10, 10, 1)
    );
    assert_eq!(
        (
            hello.opened.percent,
            hello.clicked.percent,
            hello.click_to_open.percent
        ),
        (Some(60.0), Some(30.0), Some(50.0))
    );
    assert_eq!(hello.next_stage.and_then(|n| n.percent), Some(100.0));
    let pitch = &r.emails[1];
    assert_eq!((pitch.queued, pitch.bounced), (9, 1));
    assert_eq!(pitch.next_stage.and_then(|n| n.percent), Some(22.2));
    let link = |e: &autofunnel::report::emails::EmailFigures, name: &str| {
        let l = &e.links[name];
        (l.clicked, l.next_stage.map(|r| r.part))
    };
    assert_eq!(
        link(hello, "buy"),
        (3, Some(3)),
        "a click after the move counts"
    );
    assert_eq!(link(hello, "read"), (1, Some(1)));
    assert_eq!(
        link(pitch, "pay"),
        (2, Some(1)),
        "a move after the click counts"
    );
}

on_both_backends! {
    emails => the_email_report,
}

const SPLIT: &str = r#"name: Split test
from: "Shop <shop@example.com>"
entry: { api: true }
products:
  course: { price: 100, currency: EUR }
stages:
  - id: pitch
    offer: course
    on: [{ event: purchase, product: course, goto: bought }]
    steps:
      - send:
          split: [offer-a, offer-b, offer-c]
      - wait: 5d
      - exit: not_converted
  - id: bought
    steps:
      - exit: converted
"#;

/// A split step with three variants through the real runtime: 600 leads, each given a
/// variant by the engine; 30 % of those who got `offer-a` buy, 10 % of `offer-b` and 20 % of
/// `offer-c`; 20 of A's leads click their email (the link names it) and 10 of B's click naming
/// only the template. Each variant is judged against the first and all three together by a
/// chi-square test; the verdict names A, significant. The table is the worked example of
/// docs/reading-your-funnel.md (`tests/report/ab.table`).
async fn the_ab_verdict(store: Store) {
    use autofunnel::report::ab::{chi_square_p, two_proportion_p};
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(
        dir.path(),
        &[
            ("funnels/split.yaml", SPLIT),
            ("templates/split/offer-a.subject", "A"),
            ("templates/split/offer-a.html", "<p>A</p>"),
            ("templates/split/offer-b.subject", "B"),
            ("templates/split/offer-b.html", "<p>B</p>"),
            ("templates/split/offer-c.subject", "C"),
            ("templates/split/offer-c.html", "<p>C</p>"),
        ],
    );
    let rt = crate::util::engine(&store, &p, t0()).await;
    let ids = confirmed_leads(&store, "s", 600).await;
    rt.enroll_many(&ids, &fid("split"), t0()).await.unwrap();
    let mut got: std::collections::BTreeMap<String, Vec<(LeadId, i64)>> = Default::default();
    let queued = store
        .report_rows(&fid("split"), t0() + Duration::seconds(1), ReportNeeds::ALL)
        .await
        .unwrap();
    for e in &queued.emails {
        got.entry(e.template.clone())
            .or_default()
            .push((e.lead, e.id));
    }
    let (a, b, c) = (&got["offer-a"], &got["offer-b"], &got["offer-c"]);
    let share = |v: &[(LeadId, i64)], pct: usize| v.len() * pct / 100;
    let buyers: Vec<LeadId> = a
        .iter()
        .take(share(a, 30))
        .chain(b.iter().take(share(b, 10)))
        .chain(c.iter().take(share(c, 20)))
        .map(|(l, _)| *l)
        .collect();
    let later = t0() + Duration::hours(1);
    for (l, m) in a.iter().take(20) {
        let click = Event {
            message: Some(*m),
            template: Some("offer-a".into()),
            link: Some("buy".into()),
            ..Event::of(EventKind::Click)
        };
        rt.event(*l, click, None, later).await.unwrap();
    }
    for (l, _) in b.iter().take(10) {
        let click = Event {
            template: Some("offer-b".into()),
            ..Event::of(EventKind::Click)
        };
        rt.event(*l, click, None, later).await.unwrap();
    }
    let batch = buyers
        .iter()
        .map(|l| BatchEvent {
            fields: Default::default(),
            who: LeadRef::Id(*l),
            event: purchase("course", 100.0),
            idempotency_key: Some(format!("o-{}", l.0)),
            occurred_at: t0() + Duration::days(1),
            touch: None,
        })
        .collect();
    rt.record_batch(batch, t0() + Duration::days(1))
        .await
        .unwrap();
    while rt.tick(t0() + Duration::days(1)).await.unwrap() > 0 {}
    let now = t0() + Duration::days(2);
    let rows = store
        .report_rows(&fid("split"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let to = Utc.with_ymd_and_hms(2026, 11, 8, 0, 0, 0).unwrap();
    // From the A/B counters, and the same from the rows.
    let params = Params {
        from: Some("2026-11-01".into()),
        to: Some("2026-11-08".into()),
        ..Params::default()
    };
    let req = Request::parse(What::Ab, &params, now).unwrap();
    assert!(matches!(req.read(now, store.zone()), ReportRead::Counts(_)));
    let Answer::Ab(r) = both(&store, &p.funnels[0], &rows, &req, now).await else {
        unreachable!()
    };
    assert_eq!(r.splits.len(), 1);
    // A period starting inside a day reads the counters of the whole days and, for the hours
    // before, the counters by the hour (on the hour) or the rows of the runs that entered then
    // (off it): the same runs.
    for (from, hourly) in [
        ("2026-11-02T08:00:00Z", true),
        ("2026-11-02T08:00:30Z", false),
    ] {
        let params = Params {
            from: Some(from.into()),
            to: Some("2026-11-08".into()),
            ..Params::default()
        };
        let req = Request::parse(What::Ab, &params, now).unwrap();
        let read = req.read(now, store.zone());
        assert!(
            match hourly {
                true => matches!(read, ReportRead::Counts(c) if !c.hours.is_empty()),
                false => matches!(read, ReportRead::Parts { .. }),
            },
            "{from}"
        );
        let Answer::Ab(inside) = both(&store, &p.funnels[0], &rows, &req, now).await else {
            unreachable!()
        };
        assert_eq!(inside.splits, r.splits, "{from}");
    }
    let s = &r.splits[0];
    let names: Vec<&str> = s.variants.iter().map(|v| v.template.as_str()).collect();
    assert_eq!(names, ["offer-a", "offer-b", "offer-c"]);
    let n = |v: &[(LeadId, i64)]| v.len() as u64;
    let x = [share(a, 30), share(b, 10), share(c, 20)].map(|x| x as u64);
    for (v, (runs, conv, clicks)) in
        s.variants
            .iter()
            .zip([(n(a), x[0], 20), (n(b), x[1], 10), (n(c), x[2], 0)])
    {
        assert_eq!((v.sends, v.leads), (runs, runs), "{}", v.template);
        assert_eq!(v.converted, autofunnel::report::Rate::of(conv, runs));
        assert_eq!(v.clicked.part, clicks, "{}", v.template);
    }
    let va = &s.variants[0];
    assert_eq!(
        va.revenue_per_lead,
        [("EUR".to_string(), x[0] as f64 * 100.0 / n(a) as f64)]
    );
    assert_eq!(va.p_value, None, "the first is the reference");
    assert_eq!(
        s.variants[1].p_value,
        two_proportion_p(x[1], n(b), x[0], n(a))
    );
    assert_eq!(
        s.variants[2].p_value,
        two_proportion_p(x[2], n(c), x[0], n(a))
    );
    assert_eq!(s.test, "chi-square across 3 variants, 2 df");
    assert_eq!(
        s.p_value,
        chi_square_p(&[(x[0], n(a)), (x[1], n(b)), (x[2], n(c))])
    );
    assert!(s.p_value.unwrap() < 0.001);
    assert!(va.p_best.unwrap() > 0.95, "{va:?}");
    assert!(s.verdict.starts_with("offer-a converts "), "{}", s.verdict);
    assert!(
        s.verdict
            .ends_with("; the difference is significant (p < 0.001)"),
        "{}",
        s.verdict
    );
    expect_file(&root().join("tests/report/ab.table"), &render::ab_table(&r));
    let csv = render::ab_csv(&r);
    assert_eq!(
        csv.lines().count(),
        4,
        "a header and a row per variant: {csv}"
    );
    assert!(
        csv.contains(",pitch,split-offer-a,offer-b,201,201,10,20,10.0,"),
        "{csv}"
    );
    // The whole funnel per variant: each variant's runs and what they went on to do, from the
    // counters (each run's origin keeps the variant it got first).
    let params = Params {
        from: Some("2026-11-01".into()),
        slice: vec!["variant".into()],
        ..Params::default()
    };
    let req = Request::parse(What::Funnel, &params, now).unwrap();
    assert!(matches!(req.read(now, store.zone()), ReportRead::Counts(_)));
    let sliced = funnel_both(&store, &p.funnels[0], &rows, &req, now).await;
    let by: Vec<(&str, u64, u64)> = sliced
        .slices
        .iter()
        .flatten()
        .map(|s| {
            (
                s.value.as_str(),
                s.report.entered,
                s.report.stages[1].leads_in,
            )
        })
        .collect();
    assert_eq!(
        by,
        [
            ("offer-a", n(a), x[0]),
            ("offer-b", n(b), x[1]),
            ("offer-c", n(c), x[2])
        ]
    );
    // A period with no sends: no runs, no chance of being best, no verdict yet.
    let params = Params {
        from: Some("2026-11-08".into()),
        to: Some("2026-11-15".into()),
        cohort: Some("calendar".into()),
        ..Params::default()
    };
    let later = to + Duration::days(7);
    let req = Request::parse(What::Ab, &params, later).unwrap();
    let Answer::Ab(empty) = both(&store, &p.funnels[0], &rows, &req, later).await else {
        unreachable!()
    };
    let e = &empty.splits[0];
    assert!(
        e.variants
            .iter()
            .all(|v| v.leads == 0 && v.p_best.is_none())
    );
    assert!(
        e.verdict.starts_with("not enough data yet: 0, 0, 0 runs"),
        "{}",
        e.verdict
    );
}

/// One lead of the mixed funnel sent to the pitch (its split), back to the magnet, to the
/// pitch again, and buying the course: returns the time after.
async fn looped_back(
    store: &Store,
    p: &std::sync::Arc<autofunnel::project::Project>,
) -> DateTime<Utc> {
    let rt = crate::util::engine(store, p, t0()).await;
    let ids = confirmed_leads(store, "loop", 1).await;
    let lead = ids[0];
    rt.enroll_many(&ids, &fid("mixed"), t0()).await.unwrap();
    let kind = |n: &str| Event::of(EventKind::parse(n).unwrap());
    let at = |h: i64| t0() + Duration::hours(h);
    for (h, e) in [(1, kind("skip")), (2, kind("back")), (3, kind("skip"))] {
        rt.event(lead, e, None, at(h)).await.unwrap();
        while rt.tick(at(h)).await.unwrap() > 0 {}
    }
    let mut order = purchase("course", 100.0);
    order.currency = Some("USD".into());
    rt.event(lead, order, None, at(4)).await.unwrap();
    while rt.tick(at(4)).await.unwrap() > 0 {}
    at(5)
}

/// The A/B figures of the mixed funnel's split that have sends: (sends, runs, converted,
/// revenue per run), from the store (its counters over whole days).
async fn ab_figures(
    store: &Store,
    f: &Funnel,
    cohort: &str,
    now: DateTime<Utc>,
) -> Vec<(u64, u64, u64, Vec<(String, f64)>)> {
    let params = Params {
        from: Some("2026-11-02".into()),
        cohort: Some(cohort.into()),
        ..Params::default()
    };
    let req = Request::parse(What::Ab, &params, now).unwrap();
    assert!(matches!(req.read(now, store.zone()), ReportRead::Counts(_)));
    let Answer::Ab(r) = autofunnel::runtime::report::make(store, f, &req, now)
        .await
        .unwrap()
    else {
        unreachable!()
    };
    r.splits[0]
        .variants
        .iter()
        .filter(|v| v.sends > 0)
        .map(|v| {
            (
                v.sends,
                v.leads,
                v.converted.part,
                v.revenue_per_lead.clone(),
            )
        })
        .collect()
}

/// A run that loops back to a split step gets its variant again: two sends, one run. The
/// next stage counts once, after the first send; its order after the send counts once, for
/// the one run, however often the run was sent the variant. Counters and rows agree.
async fn a_run_sent_a_variant_twice_is_one_run(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = mixed_project(dir.path());
    let now = looped_back(&store, &p).await;
    let rows = store
        .report_rows(&fid("mixed"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let pitched = rows
        .emails
        .iter()
        .filter(|e| e.stage.as_deref() == Some("pitch"))
        .count();
    assert_eq!(pitched, 2, "the run was sent the split twice");
    for cohort in ["entry", "calendar"] {
        let params = Params {
            from: Some("2026-11-02".into()),
            cohort: Some(cohort.into()),
            ..Params::default()
        };
        let req = Request::parse(What::Ab, &params, now).unwrap();
        // Compared with the rows, to the byte.
        both(&store, &p.funnels[0], &rows, &req, now).await;
        assert_eq!(
            ab_figures(&store, &p.funnels[0], cohort, now).await,
            [(2, 1, 1, vec![("USD".to_string(), 100.0)])],
            "{cohort}"
        );
    }
}

/// A database from before the A/B counters: the migration that brings them marks the emails
/// of the steps that sent more than one template as a split's, and the recount makes each
/// run's first of them and the counters from the rows stored before; the report reads them.
#[tokio::test]
async fn ab_counters_are_made_on_upgrade() {
    use sea_orm::{ConnectionTrait as _, Database};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/old.db?mode=rwc", dir.path().display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let p = mixed_project(dir.path());
    let now = looped_back(&store, &p).await;
    // More leads sent to the split, so both variants have sends.
    let rt = crate::util::engine(&store, &p, t0()).await;
    let more = confirmed_leads(&store, "more", 8).await;
    rt.enroll_many(&more, &fid("mixed"), t0()).await.unwrap();
    for l in &more {
        let skip = Event::of(EventKind::parse("skip").unwrap());
        rt.event(*l, skip, None, t0() + Duration::hours(1))
            .await
            .unwrap();
    }
    while rt.tick(t0() + Duration::hours(1)).await.unwrap() > 0 {}
    let f = &p.funnels[0];
    let before = ab_figures(&store, f, "entry", now).await;
    assert_eq!(before.len(), 2, "both variants sent: {before:?}");
    assert!(
        before.contains(&(2, 1, 1, vec![("USD".to_string(), 100.0)]))
            || before.iter().any(|v| v.0 >= 2),
        "{before:?}"
    );
    // As it stood before: no A/B counters, no email marked a variant or a first, no record
    // of the migration.
    let raw = Database::connect(&url).await.unwrap();
    for sql in [
        "DELETE FROM report_counts WHERE metric LIKE 'ab' || char(31) || '%'",
        "UPDATE messages SET marks = marks & ~96",
        "DELETE FROM seaql_migrations WHERE version = 'm20261206_000017_ab_report_counts'",
    ] {
        raw.execute_unprepared(sql).await.unwrap();
    }
    raw.close().await.unwrap();
    assert_eq!(ab_figures(&store, f, "entry", now).await, []);
    let applied = store.migrate().await.unwrap();
    assert_eq!(applied, ["m20261206_000017_ab_report_counts"]);
    assert_eq!(ab_figures(&store, f, "entry", now).await, before);
}

on_both_backends! {
    ab => the_ab_verdict,
    ab_loop => a_run_sent_a_variant_twice_is_one_run,
}

/// Attribution through the store: Anna came from Google ten days before buying and from the
/// newsletter two days before; Boris came from Facebook 40 days before buying, outside the
/// 30-day lookback. Linear: Google and the newsletter half a sale (50 EUR) each, Boris's
/// purchase unattributed; last touch: the newsletter all of Anna's.
async fn attribution_credits_touches(store: Store) {
    use autofunnel::report::attribution::{Model, attribution_report};
    use autofunnel::store::NewTouch;
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(dir.path(), &[("funnels/b2b.yaml", B2B)]);
    let day = Duration::days(1);
    let rt = crate::util::engine(&store, &p, t0() - day * 50).await;
    let ids = confirmed_leads(&store, "t", 2).await;
    let (anna, boris) = (ids[0], ids[1]);
    rt.enroll_many(&ids, &fid("b2b"), t0() - day * 50)
        .await
        .unwrap();
    let touch = |source: &str| NewTouch {
        channel: if source == "newsletter" {
            "email"
        } else {
            "ads"
        }
        .into(),
        source: Some(source.into()),
        campaign: Some("spring".into()),
        ..NewTouch::default()
    };
    store
        .record_touch(anna, touch("google"), t0() - day * 10)
        .await
        .unwrap();
    store
        .record_touch(anna, touch("newsletter"), t0() - day * 2)
        .await
        .unwrap();
    store
        .record_touch(boris, touch("facebook"), t0() - day * 40)
        .await
        .unwrap();
    rt.event(anna, purchase("service", 100.0), Some("o-a".into()), t0())
        .await
        .unwrap();
    rt.event(boris, purchase("service", 50.0), Some("o-b".into()), t0())
        .await
        .unwrap();
    let now = t0() + day;
    let rows = store
        .report_rows(&fid("b2b"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let (from, to) = (t0() - day * 7, t0() + day);
    let run = |m| attribution_report(&p.funnels[0], &rows, m, day * 30, from, to, now).unwrap();
    let linear = run(Model::Linear);
    assert_eq!((linear.purchases, linear.unattributed), (2, 1));
    // Any lookback reads the counters, the rows agreeing. Worked out by hand: a touch is in a
    // lookback of `L` days when it came at most `L` days before the purchase — the newsletter
    // from 2 days, Google from 10, Facebook (Boris's) from 40.
    // (lookback, unattributed, (source, conversions, EUR) per source)
    type Credits = &'static [(&'static str, f64, f64)];
    let expected: [(&str, u64, Credits); 6] = [
        ("1", 2, &[]),
        ("2", 1, &[("newsletter", 1.0, 100.0)]),
        ("9", 1, &[("newsletter", 1.0, 100.0)]),
        ("10", 1, &[("google", 0.5, 50.0), ("newsletter", 0.5, 50.0)]),
        ("20", 1, &[("google", 0.5, 50.0), ("newsletter", 0.5, 50.0)]),
        (
            "40",
            0,
            &[
                ("facebook", 1.0, 50.0),
                ("google", 0.5, 50.0),
                ("newsletter", 0.5, 50.0),
            ],
        ),
    ];
    for (lookback, unattributed, credits) in expected {
        let params = Params {
            from: Some(from.to_rfc3339()),
            to: Some(to.to_rfc3339()),
            model: Some("linear".into()),
            lookback: Some(lookback.into()),
            ..Params::default()
        };
        let req = Request::parse(What::Attribution, &params, now).unwrap();
        assert!(
            matches!(req.read(now, store.zone()), ReportRead::Counts(_)),
            "lookback {lookback}"
        );
        let Answer::Attribution(got) = both(&store, &p.funnels[0], &rows, &req, now).await else {
            unreachable!()
        };
        let days: i32 = lookback.parse().unwrap();
        let direct = attribution_report(
            &p.funnels[0],
            &rows,
            Model::Linear,
            day * days,
            from,
            to,
            now,
        );
        assert_eq!(got, direct.unwrap());
        let mut by_source: Vec<(String, f64, f64)> = got
            .credits
            .iter()
            .map(|c| (c.source.clone().unwrap(), c.conversions, c.revenue["EUR"]))
            .collect();
        by_source.sort_by(|a, b| a.0.cmp(&b.0));
        let want: Vec<(String, f64, f64)> = credits
            .iter()
            .map(|(s, c, r)| (s.to_string(), *c, *r))
            .collect();
        assert_eq!(
            (got.purchases, got.unattributed, by_source),
            (2, unattributed, want),
            "lookback {lookback}"
        );
    }
    let got: Vec<(String, f64, f64)> = linear
        .credits
        .iter()
        .map(|c| (c.source.clone().unwrap(), c.conversions, c.revenue["EUR"]))
        .collect();
    assert_eq!(
        got,
        [
            ("google".to_string(), 0.5, 50.0),
            ("newsletter".to_string(), 0.5, 50.0)
        ]
    );
    // Per channel: Google is an ad, the newsletter an email; each half of the one attributed
    // purchase.
    let channels: Vec<(&str, f64, f64, f64)> = linear
        .channels
        .iter()
        .map(|c| (c.channel.as_str(), c.conversions, c.share, c.revenue["EUR"]))
        .collect();
    assert_eq!(
        channels,
        [("ads", 0.5, 50.0, 50.0), ("email", 0.5, 50.0, 50.0)]
    );
    assert_eq!(linear.revenue["EUR"], 100.0);
    let table = render::attribution_table(&linear);
    assert!(table.contains("revenue credited: 100.00 EUR"), "{table}");
    let csv = render::attribution_csv(&linear);
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .ends_with(",ads,google,spring,0.5000,50.00 EUR"),
        "{csv}"
    );
    let last = run(Model::LastTouch);
    assert_eq!(last.credits.len(), 2);
    assert_eq!(last.credits[0].source.as_deref(), Some("newsletter"));
    assert_eq!(
        (last.credits[0].conversions, last.credits[0].revenue["EUR"]),
        (1.0, 100.0)
    );
    assert_eq!(last.credits[1].conversions, 0.0);
}

on_both_backends! {
    attribution => attribution_credits_touches,
}

const SCORED: &str = r#"name: Webinar leads
from: "Sales <sales@example.com>"
entry: { api: true }
scoring:
  rules:
    - { event: webinar_attended, points: 30 }
    - { event: demo_requested, points: 40 }
  mql: 30
  sql: 60
stages:
  - id: nurture
    steps:
      - wait: 30d
      - exit: not_converted
"#;

/// Ten leads; six attend the webinar (30 points: MQL), two of them also ask for a demo (70
/// points: SQL) three days later. Entry cohort: MQL 6 of 10, SQL 2 of 10. The calendar view of
/// the first two days sees only the webinar's crossings.
async fn qualified_leads(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(dir.path(), &[("funnels/scored.yaml", SCORED)]);
    let rt = crate::util::engine(&store, &p, t0()).await;
    let ids = confirmed_leads(&store, "q", 10).await;
    rt.enroll_many(&ids, &fid("scored"), t0()).await.unwrap();
    let custom = |n: &str| Event::of(EventKind::parse(n).unwrap());
    for l in &ids[..6] {
        rt.event(
            *l,
            custom("webinar_attended"),
            None,
            t0() + Duration::days(1),
        )
        .await
        .unwrap();
    }
    for l in &ids[..2] {
        rt.event(*l, custom("demo_requested"), None, t0() + Duration::days(3))
            .await
            .unwrap();
    }
    while rt.tick(t0() + Duration::days(3)).await.unwrap() > 0 {}
    let now = t0() + Duration::days(5);
    let rows = store
        .report_rows(&fid("scored"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let f = &p.funnels[0];
    let from = t0() - Duration::days(1);
    let r = funnel_report(f, &rows, Cohort::Entry, from, now, now).unwrap();
    let q = r.qualified.unwrap();
    assert_eq!(
        (q.mql.unwrap().part, q.sql.unwrap().part, r.entered),
        (6, 2, 10)
    );
    assert_eq!(q.mql.unwrap().percent, Some(60.0));
    let early = t0() + Duration::days(2);
    let c = funnel_report(f, &rows, Cohort::Calendar, from, early, now).unwrap();
    let q = c.qualified.unwrap();
    assert_eq!((q.mql.unwrap().part, q.sql.unwrap().part), (6, 0));
    assert!(render::table(&r).contains("qualified: MQL 60.0% (6), SQL 20.0% (2)"));
    // A funnel without thresholds says nothing about them.
    let b2b = project_of(dir.path(), &[("funnels/b2b.yaml", B2B)]);
    let plain = funnel_report(&b2b.funnels[0], &rows, Cohort::Entry, from, now, now).unwrap();
    assert_eq!(plain.qualified, None);
}

on_both_backends! {
    qualified => qualified_leads,
}

const MIXED: &str = r#"name: Mixed
from: "Shop <shop@example.com>"
entry: { api: true, double_opt_in: confirm, re_entry: always }
products:
  book: { price: 10, currency: EUR }
  course: { price: 100, currency: USD }
scoring:
  rules:
    - { event: engaged, points: 30 }
    - { event: cooled, points: -30 }
  mql: 30
stages:
  - id: magnet
    offer: book
    on:
      - { event: purchase, product: book, goto: pitch }
      - { event: skip, goto: pitch }
    steps:
      - send: gift
      - wait: 1d
      - send: nudge
      - wait: 1d
      - goto: pitch
  - id: pitch
    kind: main_product
    offer: course
    on:
      - { event: purchase, product: course, goto: won }
      - { event: back, goto: magnet }
    steps:
      - send: { split: [offer, offer-b] }
      - wait: 3d
      - exit: not_converted
  - id: won
    steps:
      - exit: converted
"#;

/// Every counter the store keeps for a funnel, per day and origin, without the zeros; and
/// those kept by the hour, under the origin `@hour`.
async fn stored_counters(store: &Store) -> Vec<((i64, String), Vec<String>)> {
    let first = autofunnel::tally::day_of(t0()) - 1;
    let days = Grouping::Periods((first..first + 30).map(|d| (d, d + 1)).collect());
    let figs = store
        .report_figures(
            &fid("mixed"),
            first,
            first + 30,
            &days,
            Some(&autofunnel::tally::Apart::EVERY),
            None,
        )
        .await
        .unwrap();
    let mut out: Vec<((i64, String), Vec<String>)> = figs
        .into_iter()
        .map(|(k, f)| {
            let items = f
                .iter()
                .filter(|(_, _, _, s)| s.n != 0 || s.total.0 != 0)
                .map(|(v, st, m, s)| format!("{v:?} {st} {m} {} {}", s.n, s.total.0))
                .collect();
            (k, items)
        })
        .filter(|(_, items): &(_, Vec<String>)| !items.is_empty())
        .collect();
    let mut hours: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
    for row in store.table_text("report_hours").await.unwrap() {
        let col = |name: &str| row.iter().find(|(c, _)| c == name).unwrap().1.clone();
        if col("funnel_id") != "mixed" || (col("n") == "0" && col("total") == "0") {
            continue;
        }
        let item = ["view", "stage", "metric", "n", "total"].map(col).join(" ");
        hours
            .entry(col("day").parse().unwrap())
            .or_default()
            .push(item);
    }
    assert!(!hours.is_empty(), "counters are kept by the hour");
    out.extend(hours.into_iter().map(|(h, mut items)| {
        items.sort();
        ((h, "@hour".to_string()), items)
    }));
    out
}

/// One step of a random history of the mixed funnel (steps are 6 hours apart): what some
/// leads do, what becomes of the emails the step claims from the outbox and what their
/// leads do with them, a touch that comes after a lead entered, a lead erased.
#[derive(Debug, Clone)]
struct Step {
    /// (lead, what, amount): a purchase in one of two currencies or none, or without an
    /// amount, a move forward or back, a score up or down, a double opt-in click, an event no rule names.
    events: Vec<(usize, u8, u8)>,
    /// What becomes of each email claimed, in turn: sent, or failed, bounced, retried later,
    /// suppressed.
    outcomes: Vec<u8>,
    /// What the lead does with each email sent, in turn, minutes later, once or twice: an
    /// open or click naming the email, naming only its template or nothing, an unsubscribe,
    /// a complaint, a bounce.
    tracks: Vec<(u8, u16, bool)>,
    /// A late touch: (lead, source).
    touch: Option<(usize, u8)>,
    erase: Option<usize>,
}

const HISTORY_LEADS: usize = 60;

fn history() -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
    use proptest::prelude::*;
    let step = (
        prop::collection::vec((0..HISTORY_LEADS, 0u8..12, 1u8..80), 0..14),
        prop::collection::vec(0u8..10, 1..12),
        prop::collection::vec((0u8..12, 1u16..300, any::<bool>()), 1..12),
        prop::option::weighted(0.3, (0..HISTORY_LEADS, 0u8..3)),
        prop::option::weighted(0.08, 0..HISTORY_LEADS),
    )
        .prop_map(|(events, outcomes, tracks, touch, erase)| Step {
            events,
            outcomes,
            tracks,
            touch,
            erase,
        });
    prop::collection::vec(step, 14..40)
}

/// What a history left: its leads, the ones erased, and the time it ended.
struct Lived {
    ids: Vec<LeadId>,
    gone: std::collections::BTreeSet<LeadId>,
    now: DateTime<Utc>,
}

fn mixed_project(dir: &std::path::Path) -> std::sync::Arc<autofunnel::project::Project> {
    project_of(
        dir,
        &[
            ("funnels/mixed.yaml", MIXED),
            ("templates/mixed/confirm.subject", "Confirm"),
            ("templates/mixed/confirm.html", "<p>{{ confirm_url }}</p>"),
            ("templates/mixed/gift.subject", "Your gift"),
            ("templates/mixed/gift.html", "<p>Gift</p>"),
            ("templates/mixed/nudge.subject", "Still there?"),
            ("templates/mixed/nudge.html", "<p>Nudge</p>"),
            ("templates/mixed/offer.subject", "The course"),
            ("templates/mixed/offer.html", "<p>Offer</p>"),
            ("templates/mixed/offer-b.subject", "The course, again"),
            ("templates/mixed/offer-b.html", "<p>Offer B</p>"),
        ],
    )
}

/// Lives a history of the mixed funnel through the real runtime and outbox: 40 confirmed
/// leads and 20 waiting for the double opt-in click, two thirds of them with touches from
/// several sources; a third enters at each of the steps 0, 3 and 10 (on three days, at three
/// hours), and every lead is put in again on every tenth step (re-entry).
async fn live(
    store: &Store,
    p: &std::sync::Arc<autofunnel::project::Project>,
    steps: &[Step],
) -> Lived {
    let rt = crate::util::engine(store, p, t0()).await;
    let outbox = store.outbox();
    let mut ids = confirmed_leads(store, "m", 40).await;
    for i in 0..HISTORY_LEADS - 40 {
        let email = Email::parse(&format!("p{i}@example.com")).unwrap();
        let lead = store.upsert_lead(&email, LeadInput::default(), t0());
        ids.push(lead.await.unwrap().id);
    }
    let sources = [Some("google"), Some("facebook"), None];
    let touch = |i: usize, source: usize| autofunnel::store::NewTouch {
        channel: ["signup", "ads"][i % 2].into(),
        source: sources[source % 3].map(str::to_string),
        medium: None,
        campaign: Some(format!("c{}", i % 4)),
        term: None,
        content: None,
        referrer: None,
        landing_url: None,
        form: i.is_multiple_of(5).then(|| "optin".to_string()),
    };
    for (i, l) in ids.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
        let at = t0() - Duration::hours(1);
        store.record_touch(*l, touch(i, i), at).await.unwrap();
    }
    let custom = |n: &str| Event::of(EventKind::parse(n).unwrap());
    let mut gone = std::collections::BTreeSet::new();
    let mut now = t0();
    for (step, s) in steps.iter().enumerate() {
        now = t0() + Duration::hours(6 * step as i64 + 1);
        let here: Vec<LeadId> = ids.iter().filter(|l| !gone.contains(*l)).copied().collect();
        // At 10:00, 04:00 and 22:00 (UTC): hours around the days of other zones.
        if let Some(k) = [0, 3, 10].iter().position(|s| *s == step) {
            let third: Vec<LeadId> = ids[k * 20..k * 20 + 20]
                .iter()
                .filter(|l| !gone.contains(*l))
                .copied()
                .collect();
            rt.enroll_many(&third, &fid("mixed"), now).await.unwrap();
        }
        let mut batch = Vec::new();
        for (i, what, amount) in &s.events {
            let lead = ids[*i];
            if gone.contains(&lead) {
                continue;
            }
            let event = match what {
                0 => purchase("book", f64::from(*amount) * 0.5),
                1 => Event {
                    currency: Some("USD".into()),
                    ..purchase("course", f64::from(*amount) * 3.0 + 100.0)
                },
                2 => Event {
                    currency: None,
                    ..purchase("book", 5.0)
                },
                3 => custom("skip"),
                4 => custom("back"),
                5 => custom("engaged"),
                6 => custom("cooled"),
                7 => Event::of(EventKind::Confirmed),
                8 => Event {
                    amount: None,
                    ..purchase("course", 0.0)
                },
                // Refunds: part of a course in USD; a book's, naming no amount.
                9 => Event {
                    product: Some("course".into()),
                    currency: Some("USD".into()),
                    amount: autofunnel::domain::Money::of_units(f64::from(*amount)),
                    ..custom("refund")
                },
                10 => Event {
                    product: Some("book".into()),
                    ..custom("refund")
                },
                _ => custom("ignored"),
            };
            if event.kind == EventKind::Confirmed {
                rt.event(lead, event, None, now).await.unwrap();
                continue;
            }
            batch.push(BatchEvent {
                fields: Default::default(),
                who: LeadRef::Id(lead),
                event,
                idempotency_key: None,
                occurred_at: now,
                touch: None,
            });
        }
        rt.record_batch(batch, now).await.unwrap();
        while rt.tick(now).await.unwrap() > 0 {}
        let claimed = outbox
            .claim(3, now, Duration::minutes(5), 1_000)
            .await
            .unwrap();
        let mut went = Vec::new();
        for (m, o) in claimed.iter().zip(s.outcomes.iter().cycle()) {
            match o {
                0 => outbox.failed(m.id, "refused").await.unwrap(),
                1 => outbox.bounced(m, "no such user", now).await.unwrap(),
                2 => outbox
                    .retry(m.id, now + Duration::hours(5), "busy")
                    .await
                    .unwrap(),
                3 => outbox.suppressed(m.id).await.unwrap(),
                _ => went.push(m.id),
            }
        }
        outbox.sent(&went, now).await.unwrap();
        let sent = claimed.iter().filter(|m| went.contains(&m.id));
        for (m, (what, minutes, twice)) in sent.zip(s.tracks.iter().cycle()) {
            let named = |kind: EventKind, link: Option<&str>| Event {
                template: m.template.clone(),
                link: link.map(str::to_string),
                message: Some(m.id),
                ..Event::of(kind)
            };
            let event = match what {
                0..=2 => named(EventKind::Open, None),
                3 => named(
                    EventKind::Click,
                    Some(["buy", "read"][*minutes as usize % 2]),
                ),
                4 => Event {
                    message: None,
                    ..named(EventKind::Open, None)
                },
                5 => Event {
                    message: None,
                    ..named(EventKind::Click, Some("buy"))
                },
                6 => named(EventKind::Click, None),
                7 => Event::of(EventKind::Unsubscribed),
                8 => Event::of(EventKind::Complained),
                9 => Event {
                    message: None,
                    ..named(EventKind::Bounced, None)
                },
                _ => continue,
            };
            let later = now + Duration::minutes(i64::from(*minutes));
            // A second open or click of the same email is not a new one.
            for _ in 0..1 + usize::from(*twice) {
                rt.event(m.lead, event.clone(), None, later).await.unwrap();
            }
        }
        if let Some((i, source)) = s.touch
            && !gone.contains(&ids[i])
        {
            let t = touch(i, source as usize);
            store.record_touch(ids[i], t, now).await.unwrap();
        }
        if step % 10 == 9 {
            rt.enroll_many(&here, &fid("mixed"), now).await.unwrap();
        }
        if let Some(i) = s.erase
            && gone.insert(ids[i])
        {
            assert!(store.erase_lead(ids[i]).await.unwrap().is_some());
        }
    }
    Lived {
        ids,
        gone,
        now: now + Duration::hours(1),
    }
}

/// The counters kept as the history was written are the ones its rows make again when
/// replayed (`recount`), on random histories of a funnel that has everything: double opt-in,
/// re-entry, loops back to a stage, orders in two currencies and none, before and after a
/// stage, a score that crosses its threshold more than once, leads from several sources and
/// touches that come late, failures, bounces and retries, opens and clicks named by email,
/// by template or not at all, and leads erased along the way and at the end.
async fn counters_are_their_rows_replayed(backend: &str) {
    use proptest::strategy::{Strategy, ValueTree};
    let config = proptest::test_runner::Config {
        cases: 3,
        ..Default::default()
    };
    let rng = proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm);
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(config, rng);
    for case in 0..3 {
        let steps = history().new_tree(&mut runner).unwrap().current();
        let check = |mut store: Store| async move {
            store.migrate().await.unwrap();
            let dir = tempfile::tempdir().unwrap();
            let p = mixed_project(dir.path());
            let lived = live(&store, &p, &steps).await;
            let kept = stored_counters(&store).await;
            assert!(!kept.is_empty());
            store.recount(lived.now).await.unwrap();
            same_counters(stored_counters(&store).await, kept.clone());
            // Every run's origin made again from the rows (kept by a field, then by none
            // again): its first touch and the A/B variant it got first, as the writes made it.
            let utc = chrono_tz::UTC;
            let plan = ["plan".to_string()];
            assert!(store.count_in(utc, &plan, lived.now).await.unwrap());
            assert!(store.count_in(utc, &[], lived.now).await.unwrap());
            same_counters(stored_counters(&store).await, kept);
            for l in lived
                .ids
                .iter()
                .filter(|l| !lived.gone.contains(*l))
                .step_by(7)
            {
                assert!(store.erase_lead(*l).await.unwrap().is_some());
            }
            let kept = stored_counters(&store).await;
            store.recount(lived.now).await.unwrap();
            same_counters(stored_counters(&store).await, kept);
        };
        match backend {
            "sqlite" => crate::store::on_sqlite(check).await,
            _ => crate::store::on_postgres(&format!("replayed_{case}"), check).await,
        }
    }
}

#[tokio::test]
async fn counters_are_their_rows_replayed_on_sqlite() {
    counters_are_their_rows_replayed("sqlite").await;
}

#[tokio::test]
async fn counters_are_their_rows_replayed_on_postgres() {
    counters_are_their_rows_replayed("postgres").await;
}

/// Counters and rows give the same reports on the mixed funnel (see [`live`]) after a long
/// history: each report, both views, by day and by week, sliced by first touch, is made from
/// both and compared to the byte.
async fn counters_agree_with_rows(store: Store) {
    use proptest::strategy::{Strategy, ValueTree};
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = mixed_project(dir.path());
    let config = proptest::test_runner::Config::default();
    let rng = proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm);
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(config, rng);
    let mut steps = history().new_tree(&mut runner).unwrap().current();
    while steps.len() < 40 {
        steps.extend(history().new_tree(&mut runner).unwrap().current());
    }
    steps.truncate(40);
    for s in &mut steps {
        s.erase = None;
    }
    let now = live(&store, &p, &steps).await.now;
    let rows = store
        .report_rows(&fid("mixed"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    assert!(rows.runs.len() > 60, "some leads entered again");
    let f = &p.funnels[0];
    let mut seen = Vec::new();
    for cohort in ["entry", "calendar"] {
        for by in [None, Some("day"), Some("week")] {
            for slice in [
                vec![],
                vec![
                    "utm_source".to_string(),
                    "channel".into(),
                    "form".into(),
                    "variant".into(),
                ],
            ] {
                let params = Params {
                    from: Some("2026-11-01".into()),
                    cohort: Some(cohort.into()),
                    by: by.map(str::to_string),
                    slice,
                    ..Params::default()
                };
                let req = Request::parse(What::Funnel, &params, now).unwrap();
                assert!(matches!(
                    req.read(now, chrono_tz::UTC),
                    ReportRead::Counts(_)
                ));
                let a = funnel_both(&store, f, &rows, &req, now).await;
                seen.push((a.report.entered, a.report.stages[2].leads_in));
            }
        }
    }
    assert!(
        seen.iter().all(|(entered, won)| *entered > 60 && *won > 0),
        "{seen:?}"
    );
    // Conversion windows of whole days: entry cohorts sliced by every part of an origin read
    // the days after entry per origin; the calendar view (unsliced) its counters by the days
    // after entry, and the entry view's funnel-wide ones of the same window for its header.
    // Either way the windows cut off some of what the runs did.
    let origin_parts: Vec<String> = ["utm_source", "channel", "form", "variant"]
        .map(String::from)
        .into();
    for (cohort, slice) in [("entry", origin_parts), ("calendar", Vec::new())] {
        let mut windowed = std::collections::BTreeSet::new();
        for window in [None, Some("1d"), Some("2d"), Some("7d")] {
            for by in [None, Some("day")] {
                let params = Params {
                    from: Some("2026-11-01".into()),
                    cohort: Some(cohort.into()),
                    by: by.map(str::to_string),
                    window: window.map(str::to_string),
                    slice: slice.clone(),
                    ..Params::default()
                };
                let req = Request::parse(What::Funnel, &params, now).unwrap();
                assert!(
                    matches!(req.read(now, chrono_tz::UTC), ReportRead::Counts(_)),
                    "{cohort} {window:?}"
                );
                let a = funnel_both(&store, f, &rows, &req, now).await;
                let ins: Vec<u64> = a.report.stages.iter().map(|s| s.leads_in).collect();
                windowed.insert((ins, a.report.converted.part));
            }
        }
        assert!(
            windowed.len() > 1,
            "the windows change the figures ({cohort}): {windowed:?}"
        );
    }
    for cohort in ["entry", "calendar"] {
        let params = Params {
            from: Some("2026-11-01".into()),
            cohort: Some(cohort.into()),
            ..Params::default()
        };
        let req = Request::parse(What::Emails, &params, now).unwrap();
        assert!(matches!(
            req.read(now, chrono_tz::UTC),
            ReportRead::Counts(_)
        ));
        let Answer::Emails(r) = both(&store, f, &rows, &req, now).await else {
            unreachable!()
        };
        let sum = |g: fn(&autofunnel::report::emails::EmailFigures) -> u64| -> u64 {
            r.emails.iter().map(g).sum()
        };
        assert!(
            [
                sum(|e| e.failed),
                sum(|e| e.opened.part),
                sum(|e| e.clicked.part),
                sum(|e| e.unsubscribed),
                sum(|e| e.bounced),
                sum(|e| e.complained),
                sum(|e| e.links.values().map(|l| l.clicked).sum()),
                sum(|e| e.next_stage.map_or(0, |n| n.part)),
            ]
            .iter()
            .all(|n| *n > 0),
            "every figure is exercised: {r:#?}"
        );
    }
    // Per-email and A/B windows of whole days or hours read the counters: each email's figures
    // kept by the days and the hours after its run's entry that they happened.
    let mut by_window = Vec::new();
    let mut calendar = Vec::new();
    let windows = ["1h", "1d", "30h", "2d", "30d"].map(|w| ("entry", w));
    for (cohort, window) in windows
        .into_iter()
        .chain(["1d", "2d", "7d", "30d"].map(|w| ("calendar", w)))
    {
        let params = Params {
            from: Some("2026-11-01".into()),
            cohort: Some(cohort.into()),
            window: Some(window.into()),
            ..Params::default()
        };
        let ask = |what| Request::parse(what, &params, now).unwrap();
        for req in [ask(What::Emails), ask(What::Ab)] {
            assert!(matches!(
                req.read(now, chrono_tz::UTC),
                ReportRead::Counts(_)
            ));
        }
        let Answer::Emails(e) = both(&store, f, &rows, &ask(What::Emails), now).await else {
            unreachable!()
        };
        let Answer::Ab(ab) = both(&store, f, &rows, &ask(What::Ab), now).await else {
            unreachable!()
        };
        let mails: u64 = e
            .emails
            .iter()
            .map(|m| m.opened.part + m.clicked.part + m.next_stage.map_or(0, |n| n.part))
            .sum();
        let runs: u64 = ab.splits[0]
            .variants
            .iter()
            .map(|v| v.clicked.part + v.converted.part)
            .sum();
        match cohort {
            "entry" => by_window.push((mails, runs)),
            _ => calendar.push((mails, runs)),
        }
    }
    assert!(
        calendar[0] != calendar[3] && calendar.windows(2).all(|w| w[0].0 <= w[1].0),
        "a longer window sees more in the calendar view too: {calendar:?}"
    );
    assert!(
        by_window[0] != by_window[4]
            && by_window
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
        "a longer window sees more: {by_window:?}"
    );
    // Where the runs stand now, from the counters, is what a scan of the runs finds.
    let (open, unconfirmed) = store.standing(&fid("mixed")).await.unwrap();
    let waiting = store.waiting().await.unwrap();
    let scanned = |stage: Option<&str>, status: &str| -> i64 {
        waiting
            .iter()
            .filter(|w| w.funnel == "mixed" && w.status == status)
            .filter(|w| stage.is_none_or(|s| w.stage == s))
            .map(|w| w.runs)
            .sum()
    };
    for stage in ["magnet", "pitch", "won"] {
        assert_eq!(
            open.get(stage).copied().unwrap_or(0),
            scanned(Some(stage), "active"),
            "{stage}"
        );
    }
    assert_eq!(unconfirmed, scanned(None, "unconfirmed"));
    assert!(
        open.values().sum::<i64>() > 0 && unconfirmed > 0,
        "{open:?} {unconfirmed}"
    );
    // The A/B report of the split at `pitch`, which runs that loop back get again.
    for cohort in ["entry", "calendar"] {
        let params = Params {
            from: Some("2026-11-01".into()),
            cohort: Some(cohort.into()),
            ..Params::default()
        };
        let req = Request::parse(What::Ab, &params, now).unwrap();
        assert!(matches!(
            req.read(now, chrono_tz::UTC),
            ReportRead::Counts(_)
        ));
        let Answer::Ab(r) = both(&store, f, &rows, &req, now).await else {
            unreachable!()
        };
        let vs = &r.splits[0].variants;
        let sum =
            |g: fn(&autofunnel::report::ab::Variant) -> u64| -> u64 { vs.iter().map(g).sum() };
        assert!(
            sum(|v| v.sends) >= sum(|v| v.leads)
                && [
                    sum(|v| v.leads),
                    sum(|v| v.clicked.part),
                    sum(|v| v.converted.part),
                    sum(|v| v.revenue_per_lead.len() as u64),
                ]
                .iter()
                .all(|n| *n > 0),
            "every figure is exercised: {r:#?}"
        );
    }
    // A dashboard page's reports made from one read of the counters are the reports made
    // one by one.
    for cohort in ["entry", "calendar"] {
        let params = Params {
            from: Some("2026-11-01".into()),
            cohort: Some(cohort.into()),
            ..Params::default()
        };
        let reqs: Vec<Request> = [What::Funnel, What::Emails, What::Ab]
            .into_iter()
            .map(|w| Request::parse(w, &params, now).unwrap())
            .collect();
        let together = autofunnel::runtime::report::make_all(&store, f, &reqs, now)
            .await
            .unwrap();
        for (req, a) in reqs.iter().zip(&together) {
            let alone = autofunnel::runtime::report::make(&store, f, req, now)
                .await
                .unwrap();
            assert_eq!(
                serde_json::to_value(a).unwrap(),
                serde_json::to_value(&alone).unwrap(),
                "{cohort}: {req:?}"
            );
        }
    }
    // Reports over other hours than the counters' days — days of other zones (one a half
    // hour off), periods starting and ending within a day — are the counters of the whole
    // days within and the rows of the leads with something in the hours around them (entry
    // cohorts: runs that entered then; the calendar view: anything it files then): the same
    // reports as from the rows alone, every kind, both views, by period and sliced by first
    // touch.
    let hours = [
        ("Asia/Kolkata", "2026-11-01", None),
        ("America/New_York", "2026-11-01", None),
        (
            "UTC",
            "2026-11-01T07:30:00Z",
            Some(now - Duration::hours(30)),
        ),
        (
            "UTC",
            "2026-11-02T10:00:00Z",
            Some(now - Duration::hours(3)),
        ),
    ];
    // Reports where the hours around added runs the days left out, and took off runs the days
    // counted outside their period.
    let (mut parts, mut hourly, mut added, mut taken) = (0, 0, 0, 0);
    for ((tz, from, to), cohort) in hours
        .into_iter()
        .flat_map(|h| [(h, "entry"), (h, "calendar")])
    {
        for by in [None, Some("day"), Some("week")] {
            for slice in [vec![], vec!["utm_source".to_string(), "variant".into()]] {
                for what in [What::Funnel, What::Emails, What::Ab] {
                    if what != What::Funnel && (by.is_some() || !slice.is_empty()) {
                        continue;
                    }
                    let params = Params {
                        from: Some(from.into()),
                        to: to.map(|t: DateTime<Utc>| t.to_rfc3339()),
                        by: by.map(str::to_string),
                        slice: slice.clone(),
                        tz: Some(tz.into()),
                        cohort: Some(cohort.into()),
                        ..Params::default()
                    };
                    let req = Request::parse(what, &params, now).unwrap();
                    // The hours around from the rows, or (all runs together, hours beginning
                    // and ending on the hour) from the counters by the hour.
                    let counts = match req.read(now, chrono_tz::UTC) {
                        ReportRead::Parts { counts, .. } => {
                            parts += 1;
                            counts
                        }
                        ReportRead::Counts(c) if !c.hours.is_empty() => {
                            hourly += 1;
                            Counted {
                                hours: Vec::new(),
                                ..c
                            }
                        }
                        _ => panic!("{req:?} reads the counters and the hours around them"),
                    };
                    let a = both(&store, f, &rows, &req, now).await;
                    // The hours around the days hold runs: the counters alone miss them, or
                    // count runs outside the period.
                    let days = store.counted(&fid("mixed"), &counts).await.unwrap();
                    let days = answer(f, &ReportData::Counts(days), &req, now).unwrap();
                    if let (Answer::Funnel(a), Answer::Funnel(days)) = (a, days) {
                        let entered = |a: &FunnelAnswer| -> Vec<u64> {
                            let periods = a.periods.iter().flatten().map(|p| p.entered);
                            std::iter::once(a.report.entered).chain(periods).collect()
                        };
                        let pairs: Vec<(u64, u64)> =
                            entered(&days).into_iter().zip(entered(&a)).collect();
                        added += usize::from(pairs.iter().any(|(d, a)| d < a));
                        taken += usize::from(pairs.iter().any(|(d, a)| d > a));
                    }
                }
            }
        }
    }
    assert_eq!(parts + hourly, 4 * 8 * 2);
    assert!(
        parts >= 40 && hourly >= 10,
        "{parts} from rows, {hourly} by the hour"
    );
    // With a conversion window, in either view: the window's counters of the whole days and
    // the rows of the hours around them, counted within the window.
    for (cohort, what) in ["entry", "calendar"]
        .into_iter()
        .flat_map(|c| [What::Funnel, What::Emails, What::Ab].map(|w| (c, w)))
    {
        let params = Params {
            from: Some("2026-11-01".into()),
            tz: Some("Asia/Kolkata".into()),
            cohort: Some(cohort.into()),
            window: Some("2d".into()),
            ..Params::default()
        };
        let req = Request::parse(what, &params, now).unwrap();
        assert!(
            matches!(req.read(now, chrono_tz::UTC), ReportRead::Parts { .. }),
            "{cohort} {what:?}"
        );
        both(&store, f, &rows, &req, now).await;
    }
    // The forecast observed from a midnight of another zone: the counters of the whole days
    // and, the hours around beginning and ending on the hour, all runs' counters by the hour;
    // in a zone off the hour, the rows of the runs that entered in them. Each observes the runs
    // that entered since that midnight; some entered between it and the UTC midnight nearest
    // it (the hours around, added or taken off).
    // Per kind of read (by the hour, from rows): the runs in the hours around.
    let mut edge_runs = [0, 0];
    for observe in 1..=8 {
        for (tz, hourly) in [("America/New_York", true), ("Pacific/Marquesas", false)] {
            let params = Params {
                tz: Some(tz.into()),
                observe: Some(observe.to_string()),
                ..Params::default()
            };
            let req = Request::parse(What::Forecast, &params, now).unwrap();
            match req.read(now, chrono_tz::UTC) {
                ReportRead::Forecast(c) => assert!(hourly && !c.hours.is_empty(), "{tz}"),
                ReportRead::Parts { .. } => assert!(!hourly, "{tz}"),
                other => panic!("{tz}: {other:?}"),
            }
            let Answer::Forecast(fc) = both(&store, f, &rows, &req, now).await else {
                unreachable!()
            };
            let since = |t: DateTime<Utc>| rows.runs.iter().filter(|r| r.entered_at >= t).count();
            let before = fc.observed_from.date_naive().and_hms_opt(0, 0, 0).unwrap();
            let before = before.and_utc();
            let after = before + Duration::days(1);
            let nearest = match fc.observed_from - before <= after - fc.observed_from {
                true => before,
                false => after,
            };
            assert_eq!(fc.observed_entered, since(fc.observed_from) as u64, "{tz}");
            edge_runs[usize::from(!hourly)] +=
                since(fc.observed_from.min(nearest)) - since(fc.observed_from.max(nearest));
        }
    }
    assert!(
        edge_runs.iter().all(|n| *n > 0),
        "the hours around the days hold runs: {edge_runs:?}"
    );
    // A part of the history by variant (the counters and the hours around) and with a window
    // not of whole days (the rows): the same entries as the first-touch slice over it.
    let part = |slice: &str, window: Option<&str>| Params {
        from: Some((t0() + Duration::hours(20)).to_rfc3339()),
        to: Some((now - Duration::hours(40)).to_rfc3339()),
        slice: vec![slice.to_string()],
        window: window.map(str::to_string),
        ..Params::default()
    };
    let all = Request::parse(What::Funnel, &part("utm_source", None), now).unwrap();
    let Answer::Funnel(all) = both(&store, f, &rows, &all, now).await else {
        unreachable!()
    };
    for params in [part("variant", None), part("utm_source", Some("36h"))] {
        let req = Request::parse(What::Funnel, &params, now).unwrap();
        let rows_read = matches!(req.read(now, store.zone()), ReportRead::Rows(_));
        assert_eq!(rows_read, params.window.is_some(), "{req:?}");
        let Answer::Funnel(a) = both(&store, f, &rows, &req, now).await else {
            unreachable!()
        };
        assert_eq!(a.report.entered, all.report.entered, "{req:?}");
        let runs = rows.runs.len() as u64;
        assert!((1..runs).contains(&a.report.entered), "a part of the runs");
    }
    assert!(
        added >= 4 && taken >= 4,
        "the hours around the days added runs in {added} funnel reports, took runs off in {taken}"
    );
}

/// Two sets of counters are the same; the message lists only those that differ.
fn same_counters(made: Vec<((i64, String), Vec<String>)>, kept: Vec<((i64, String), Vec<String>)>) {
    let flat = |v: &Vec<((i64, String), Vec<String>)>| -> std::collections::BTreeSet<String> {
        v.iter()
            .flat_map(|((d, o), items)| items.iter().map(move |i| format!("{d} {o} {i}")))
            .collect()
    };
    let (made, kept) = (flat(&made), flat(&kept));
    let only_made: Vec<_> = made.difference(&kept).collect();
    let only_kept: Vec<_> = kept.difference(&made).collect();
    assert!(
        only_made.is_empty() && only_kept.is_empty(),
        "made again but not kept: {only_made:#?}\nkept but not made again: {only_kept:#?}"
    );
}

on_both_backends! {
    counters => counters_agree_with_rows,
}

const PASS: &str = r#"name: Pass
entry: { api: true, re_entry: always }
products:
  pass: { price: 500, currency: RUB }
stages:
  - id: pitch
    offer: pass
    on:
      - { event: leave, exit: not_converted }
      - { event: purchase, product: pass, goto: member }
    steps:
      - wait: 30d
      - exit: not_converted
  - id: member
    steps:
      - exit: converted
"#;

/// An order counts once: a lead of a `re_entry: always` funnel joins, leaves, joins again and
/// buys the 500 RUB pass once. The order is the second run's, credited under the stage that
/// run was in — once, not once for every run that had entered the stage. A second lead who
/// bought the pass for 300 RUB during its first run and came back later is credited to that
/// first run only. A third lead's order came without an amount: counted apart, not as a
/// zero pulling the average check down. Two orders, 800 RUB, and one without an amount; the
/// counters and the rows say the same.
async fn an_order_counts_once(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(dir.path(), &[("funnels/pass.yaml", PASS)]);
    let rt = crate::util::engine(&store, &p, t0()).await;
    let leads = confirmed_leads(&store, "pass", 3).await;
    let (ann, bob, cid) = (leads[0], leads[1], leads[2]);
    let custom = |n: &str| Event::of(EventKind::parse(n).unwrap());
    let at = |h: i64| t0() + Duration::hours(h);
    let rub = |amount: f64| Event {
        currency: Some("RUB".into()),
        ..purchase("pass", amount)
    };
    rt.enroll_many(&leads, &fid("pass"), at(0)).await.unwrap();
    rt.event(ann, custom("leave"), None, at(1)).await.unwrap();
    rt.event(bob, rub(300.0), None, at(1)).await.unwrap();
    while rt.tick(at(1)).await.unwrap() > 0 {}
    rt.enroll_many(&leads, &fid("pass"), at(2)).await.unwrap();
    rt.event(ann, rub(500.0), None, at(3)).await.unwrap();
    let unpriced = Event {
        amount: None,
        ..rub(0.0)
    };
    rt.event(cid, unpriced, None, at(3)).await.unwrap();
    // A product that is no stage's offer: the funnel's revenue, not a stage's.
    let merch = Event {
        currency: Some("RUB".into()),
        ..purchase("merch", 50.0)
    };
    rt.event(bob, merch, None, at(3)).await.unwrap();
    while rt.tick(at(3)).await.unwrap() > 0 {}
    let now = at(4);
    let rows = store
        .report_rows(&fid("pass"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    assert_eq!(
        rows.runs.len(),
        5,
        "ann and bob entered twice, the third lead once"
    );
    let params = Params {
        from: Some("2026-11-01".into()),
        ..Params::default()
    };
    let req = Request::parse(What::Funnel, &params, now).unwrap();
    let a = funnel_both(&store, &p.funnels[0], &rows, &req, now).await;
    let pitch = &a.report.stages[0];
    assert_eq!(pitch.leads_in, 5);
    assert_eq!(pitch.orders_without_amount, 1, "counted apart");
    assert_eq!(pitch.revenue.len(), 1, "{:?}", pitch.revenue);
    let r = &pitch.revenue[0];
    assert_eq!(
        (r.currency.as_str(), r.orders, r.total, r.average),
        ("RUB", 2, 800.0, 400.0),
        "one order of 500 RUB and one of 300 RUB, each counted once"
    );
    let table = render::table(&a.report);
    assert!(
        table.contains("800.00 RUB (2 × 400.00); 1 without an amount"),
        "{table}"
    );
    // The funnel's revenue: every order of its runs, the merch too, per run that entered.
    let f = &a.report;
    let total: Vec<(&str, u64, f64)> = f
        .revenue
        .iter()
        .map(|r| (r.currency.as_str(), r.orders, r.total))
        .collect();
    assert_eq!(total, [("RUB", 3, 850.0)]);
    assert_eq!(f.revenue_per_lead, [("RUB".to_string(), 170.0)]);
    let products: Vec<(&str, u64, f64)> = f
        .products
        .iter()
        .map(|p| (p.product.as_str(), p.orders, p.total))
        .collect();
    assert_eq!(products, [("pass", 2, 800.0), ("merch", 1, 50.0)]);
    assert_eq!(f.orders_without_amount, 1);
    assert!(
        table.contains("revenue 850.00 RUB (3 × 283.33); 1 without an amount; per lead 170.00 RUB"),
        "{table}"
    );
}

on_both_backends! {
    order_once => an_order_counts_once,
    refunds => a_refund_takes_its_money_back,
}

const AGAIN: &str = r#"name: Again
from: "Shop <shop@example.com>"
entry: { api: true, re_entry: always }
products:
  pass: { price: 500, currency: RUB }
stages:
  - id: pitch
    offer: pass
    on:
      - { event: leave, exit: not_converted }
      - { event: purchase, product: pass, goto: member }
    steps:
      - send:
          split: [offer-a, offer-b]
      - wait: 30d
      - exit: not_converted
  - id: member
    steps:
      - exit: converted
"#;

/// A conversion window counts from each run's own entry in every report. Ann enters, gets her
/// variant, leaves after an hour, enters again ten days later, clicks the email of her second
/// run an hour after that entry and buys the pass an hour later still; Bob enters once and
/// clicks his email four days on. With `--window 2d`: one click (Ann's, an hour into her
/// second run; Bob's is past his window), Ann's 500 RUB under the variant her second run got,
/// and the funnel report's 500 RUB from the counters — the same order, measured the same way.
/// Measured from a lead's first entry, Ann's click and order would both be ten days late.
async fn a_window_counts_from_each_run(store: Store) {
    use autofunnel::delivery::{Sender, Transport};
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(
        dir.path(),
        &[
            ("funnels/again.yaml", AGAIN),
            ("templates/again/offer-a.subject", "The pass"),
            ("templates/again/offer-a.html", "<p>Buy the pass</p>"),
            ("templates/again/offer-b.subject", "Your pass"),
            (
                "templates/again/offer-b.html",
                "<p>Your pass is waiting</p>",
            ),
        ],
    );
    let rt = crate::util::engine(&store, &p, t0()).await;
    let leads = confirmed_leads(&store, "again", 2).await;
    let (ann, bob) = (leads[0], leads[1]);
    let at = |h: i64| t0() + Duration::hours(h);
    let outbox = dir.path().join("outbox");
    std::fs::create_dir(&outbox).unwrap();
    let sender = Sender::new(
        store.outbox(),
        p.clone(),
        Transport::Folder(outbox),
        "http://127.0.0.1:1",
        b"report test secret",
    );
    rt.enroll_many(&leads, &fid("again"), at(0)).await.unwrap();
    while rt.tick(at(0)).await.unwrap() > 0 {}
    assert_eq!(sender.drain(at(0)).await.unwrap().sent, 2);
    let leave = Event::of(EventKind::parse("leave").unwrap());
    rt.event(ann, leave, None, at(1)).await.unwrap();
    while rt.tick(at(1)).await.unwrap() > 0 {}
    rt.enroll_many(&[ann], &fid("again"), at(240))
        .await
        .unwrap();
    while rt.tick(at(240)).await.unwrap() > 0 {}
    assert_eq!(sender.drain(at(240)).await.unwrap().sent, 1);
    let rows = store
        .report_rows(&fid("again"), at(241), ReportNeeds::ALL)
        .await
        .unwrap();
    let email_of = |lead: LeadId, after: i64| {
        let e = rows
            .emails
            .iter()
            .find(|e| e.lead == lead && e.created_at >= at(after))
            .unwrap();
        (e.id, e.template.clone())
    };
    let (second, second_variant) = email_of(ann, 240);
    let (bobs, _) = email_of(bob, 0);
    let click = |message: i64| Event {
        message: Some(message),
        link: Some("buy".into()),
        ..Event::of(EventKind::Click)
    };
    rt.event(ann, click(second), None, at(241)).await.unwrap();
    rt.event(bob, click(bobs), None, at(96)).await.unwrap();
    let rub = Event {
        currency: Some("RUB".into()),
        ..purchase("pass", 500.0)
    };
    rt.event(ann, rub, None, at(242)).await.unwrap();
    while rt.tick(at(242)).await.unwrap() > 0 {}
    let now = at(250);
    let rows = store
        .report_rows(&fid("again"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    assert_eq!(rows.runs.len(), 3, "Ann entered twice, Bob once");
    let f = &p.funnels[0];
    let ask = |what: What, window: Option<&str>| {
        let params = Params {
            from: Some("2026-11-01".into()),
            window: window.map(str::to_string),
            ..Params::default()
        };
        Request::parse(what, &params, now).unwrap()
    };
    let clicks = |a: Answer| match a {
        Answer::Emails(r) => r.emails.iter().map(|e| e.clicked.part).sum::<u64>(),
        _ => unreachable!(),
    };
    assert_eq!(
        clicks(both(&store, f, &rows, &ask(What::Emails, None), now).await),
        2,
        "without a window, both clicks"
    );
    assert_eq!(
        clicks(both(&store, f, &rows, &ask(What::Emails, Some("2d")), now).await),
        1,
        "within two days of its run's entry, Ann's click only"
    );
    let Answer::Ab(ab) = both(&store, f, &rows, &ask(What::Ab, Some("2d")), now).await else {
        unreachable!()
    };
    let paid: Vec<&autofunnel::report::ab::Variant> = ab.splits[0]
        .variants
        .iter()
        .filter(|v| !v.revenue_per_lead.is_empty())
        .collect();
    assert_eq!(paid.len(), 1, "one variant brought an order");
    let v = paid[0];
    assert_eq!(
        (
            v.template.as_str(),
            v.converted.part,
            v.revenue_per_lead.clone()
        ),
        (
            second_variant.as_str(),
            1,
            vec![("RUB".to_string(), 500.0 / v.leads as f64)]
        ),
        "Ann's order, under the variant of the run it came in"
    );
    let funnel = funnel_both(&store, f, &rows, &ask(What::Funnel, Some("2d")), now).await;
    let total: Vec<(&str, u64, f64)> = funnel
        .report
        .revenue
        .iter()
        .map(|r| (r.currency.as_str(), r.orders, r.total))
        .collect();
    assert_eq!(total, [("RUB", 1, 500.0)], "the counters count it so too");
}

on_both_backends! {
    window_per_run => a_window_counts_from_each_run,
}

/// A refund takes its money back off the order it gives back on: one lead buys the 500 RUB
/// pass and is refunded in full (the refund names no amount: the order's is given back),
/// another buys it for 300 RUB and gets 100 back. Entry cohort: 2 orders, 800 RUB bought,
/// 2 refunds of 600 → 200 RUB kept, 100.00 an order. The calendar view files each refund on
/// its own day: the day of the orders shows 800 RUB and no refund; the next day's no order and
/// the 600 given back. The counters and the rows agree on each.
async fn a_refund_takes_its_money_back(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(dir.path(), &[("funnels/pass.yaml", PASS)]);
    let rt = crate::util::engine(&store, &p, t0()).await;
    let leads = confirmed_leads(&store, "refund", 2).await;
    let (ann, bob) = (leads[0], leads[1]);
    let at = |h: i64| t0() + Duration::hours(h);
    let rub = |amount: f64| Event {
        currency: Some("RUB".into()),
        ..purchase("pass", amount)
    };
    let refund = |amount: Option<f64>| Event {
        product: Some("pass".into()),
        amount: amount.and_then(autofunnel::domain::Money::of_units),
        currency: amount.map(|_| "RUB".to_string()),
        ..Event::of(EventKind::parse("refund").unwrap())
    };
    rt.enroll_many(&leads, &fid("pass"), at(0)).await.unwrap();
    rt.event(ann, rub(500.0), None, at(1)).await.unwrap();
    rt.event(bob, rub(300.0), None, at(1)).await.unwrap();
    while rt.tick(at(1)).await.unwrap() > 0 {}
    rt.event(ann, refund(None), None, at(25)).await.unwrap();
    rt.event(bob, refund(Some(100.0)), None, at(25))
        .await
        .unwrap();
    while rt.tick(at(25)).await.unwrap() > 0 {}
    let now = at(30);
    let rows = store
        .report_rows(&fid("pass"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let report = async |from: &str, to: Option<&str>, cohort: &str| {
        let params = Params {
            from: Some(from.into()),
            to: to.map(str::to_string),
            cohort: Some(cohort.into()),
            ..Params::default()
        };
        let req = Request::parse(What::Funnel, &params, now).unwrap();
        funnel_both(&store, &p.funnels[0], &rows, &req, now)
            .await
            .report
    };
    type Line<'a> = (&'a str, u64, f64, f64, u64, f64);
    let lines =
        |revenue: &[autofunnel::report::Revenue]| -> Vec<(String, u64, f64, f64, u64, f64)> {
            revenue
                .iter()
                .map(|r| {
                    (
                        r.currency.clone(),
                        r.orders,
                        r.total,
                        r.average,
                        r.refunds,
                        r.refunded,
                    )
                })
                .collect()
        };
    let same = |got: Vec<(String, u64, f64, f64, u64, f64)>, want: Vec<Line>| {
        let want: Vec<(String, u64, f64, f64, u64, f64)> = want
            .into_iter()
            .map(|(c, o, t, a, n, r)| (c.to_string(), o, t, a, n, r))
            .collect();
        assert_eq!(got, want);
    };
    let entry = report("2026-11-01", None, "entry").await;
    let kept: Vec<Line> = vec![("RUB", 2, 200.0, 100.0, 2, 600.0)];
    same(lines(&entry.stages[0].revenue), kept.clone());
    same(lines(&entry.revenue), kept);
    let products: Vec<(&str, u64, f64, u64, f64)> = entry
        .products
        .iter()
        .map(|p| (p.product.as_str(), p.orders, p.total, p.refunds, p.refunded))
        .collect();
    assert_eq!(products, [("pass", 2, 200.0, 2, 600.0)]);
    let table = render::table(&entry);
    assert!(
        table.contains("200.00 RUB (2 × 100.00; 2 refunds of 600.00)"),
        "{table}"
    );
    assert!(render::csv(&entry).contains(",200.00 RUB,600.00 RUB,"));
    let bought = report("2026-11-02", Some("2026-11-03"), "calendar").await;
    same(
        lines(&bought.revenue),
        vec![("RUB", 2, 800.0, 400.0, 0, 0.0)],
    );
    let given_back = report("2026-11-03", Some("2026-11-04"), "calendar").await;
    same(
        lines(&given_back.revenue),
        vec![("RUB", 0, -600.0, 0.0, 2, 600.0)],
    );
    same(
        lines(&given_back.stages[0].revenue),
        vec![("RUB", 0, -600.0, 0.0, 2, 600.0)],
    );
}

/// An entry cohort keeps what its leads did after the period ended: 200 applications, and a
/// few seconds later 104 offers, 43 invoices and 26 payments. A report of the entry cohort up
/// to an instant between the applications and the offers (rows) shows the 200 and their
/// progress, as the whole day does (counters); with a 7-day window the same. The calendar view
/// of that short period sees only the applications.
async fn entry_cohorts_keep_their_progress(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(dir.path(), &[("funnels/b2b.yaml", B2B)]);
    let rt = crate::util::engine(&store, &p, t0()).await;
    let ids = confirmed_leads(&store, "c", 200).await;
    rt.enroll_many(&ids, &fid("b2b"), t0()).await.unwrap();
    let custom = |n: &str| Event::of(EventKind::parse(n).unwrap());
    let moves = [
        (104, custom("offer_made")),
        (43, custom("invoiced")),
        (26, purchase("service", 1000.0)),
    ];
    for (i, (n, event)) in moves.into_iter().enumerate() {
        let at = t0() + Duration::seconds(10 + i as i64);
        let batch = ids[..n]
            .iter()
            .map(|l| BatchEvent {
                fields: Default::default(),
                who: LeadRef::Id(*l),
                event: event.clone(),
                idempotency_key: None,
                occurred_at: at,
                touch: None,
            })
            .collect();
        rt.record_batch(batch, at).await.unwrap();
    }
    while rt.tick(t0() + Duration::seconds(20)).await.unwrap() > 0 {}
    let now = t0() + Duration::minutes(5);
    let rows = store
        .report_rows(&fid("b2b"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let f = &p.funnels[0];
    let ins =
        |a: &FunnelAnswer| -> Vec<u64> { a.report.stages.iter().map(|s| s.leads_in).collect() };
    let ask = |to: String, window: Option<&str>, cohort: &str| Params {
        from: Some("2026-11-02".into()),
        to: Some(to),
        window: window.map(str::to_string),
        cohort: Some(cohort.into()),
        ..Params::default()
    };
    let between = (t0() + Duration::seconds(5)).to_rfc3339();
    for window in [None, Some("7d")] {
        let req =
            Request::parse(What::Funnel, &ask(between.clone(), window, "entry"), now).unwrap();
        assert!(matches!(
            req.read(now, chrono_tz::UTC),
            ReportRead::Parts { .. }
        ));
        let a = funnel_both(&store, f, &rows, &req, now).await;
        assert_eq!(a.report.entered, 200);
        assert_eq!(ins(&a), [200, 104, 43, 26], "window {window:?}");
        assert_eq!(a.report.converted.part, 26);
    }
    let day = Request::parse(What::Funnel, &ask("2026-11-03".into(), None, "entry"), now).unwrap();
    assert!(matches!(
        day.read(now, chrono_tz::UTC),
        ReportRead::Counts(_)
    ));
    assert_eq!(
        ins(&funnel_both(&store, f, &rows, &day, now).await),
        [200, 104, 43, 26]
    );
    let req = Request::parse(What::Funnel, &ask(between, None, "calendar"), now).unwrap();
    assert_eq!(
        ins(&funnel_both(&store, f, &rows, &req, now).await),
        [200, 0, 0, 0]
    );
    // By day: the cohort's row carries each stage's share of its entries and its revenue.
    let by_day = Params {
        by: Some("day".into()),
        ..ask("2026-11-04".into(), None, "entry")
    };
    let req = Request::parse(What::Funnel, &by_day, now).unwrap();
    let table = render::funnel_table(&funnel_both(&store, f, &rows, &req, now).await);
    let row = table.lines().find(|l| l.starts_with("2026-11-02")).unwrap();
    let cells: Vec<&str> = row
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cells,
        [
            "2026-11-02",
            "200",
            "200 (100.0%)",
            "104 (52.0%)",
            "43 (21.5%)",
            "26 (13.0%)",
            "13.0% (26)",
            "26000.00 EUR"
        ],
        "{table}"
    );
}

on_both_backends! {
    entry_progress => entry_cohorts_keep_their_progress,
}

/// A conversion window of whole days reads the counters kept by the days after entry, and
/// they agree with the rows: 10 applications at 09:00, 6 offers exactly a day later (inside a
/// 1-day window: the window includes its end), 3 invoices a minute after that (outside it,
/// inside 2 days), 2 payments of 1,000 EUR seven days and an hour after entry (inside 8 days,
/// not 7). Windows of whole hours up to 999 read the counters kept by the hours after entry:
/// 36 hours gives the figures of 2 days here, 25 hours too (the invoices came 24 h 1 min after
/// entry); 169 hours, not whole days, counts the payments made 169 hours after entry, and so do
/// 200 and 999; 1,000 hours is past the hours kept: it reads the rows, with the same figures.
async fn whole_day_windows_read_counters(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(dir.path(), &[("funnels/b2b.yaml", B2B)]);
    let rt = crate::util::engine(&store, &p, t0()).await;
    let ids = confirmed_leads(&store, "w", 10).await;
    rt.enroll_many(&ids, &fid("b2b"), t0()).await.unwrap();
    let custom = |n: &str| Event::of(EventKind::parse(n).unwrap());
    let moves = [
        (6, custom("offer_made"), Duration::days(1)),
        (
            3,
            custom("invoiced"),
            Duration::days(1) + Duration::minutes(1),
        ),
        (
            2,
            purchase("service", 1000.0),
            Duration::days(7) + Duration::hours(1),
        ),
    ];
    for (n, event, after) in moves {
        let at = t0() + after;
        for l in &ids[..n] {
            rt.event(*l, event.clone(), None, at).await.unwrap();
        }
        while rt.tick(at).await.unwrap() > 0 {}
    }
    let now = t0() + Duration::days(10);
    let rows = store
        .report_rows(&fid("b2b"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let f = &p.funnels[0];
    let expected: [(&str, [u64; 4], u64, f64); 12] = [
        ("1d", [10, 6, 0, 0], 0, 0.0),
        ("2d", [10, 6, 3, 0], 0, 0.0),
        ("7d", [10, 6, 3, 0], 0, 0.0),
        ("8d", [10, 6, 3, 2], 2, 2000.0),
        ("90d", [10, 6, 3, 2], 2, 2000.0),
        ("36h", [10, 6, 3, 0], 0, 0.0),
        ("25h", [10, 6, 3, 0], 0, 0.0),
        ("168h", [10, 6, 3, 0], 0, 0.0),
        ("169h", [10, 6, 3, 2], 2, 2000.0),
        ("200h", [10, 6, 3, 2], 2, 2000.0),
        ("999h", [10, 6, 3, 2], 2, 2000.0),
        // Past what the hours after entry are kept for: the rows, the same figures.
        ("1000h", [10, 6, 3, 2], 2, 2000.0),
    ];
    for (window, ins, converted, revenue) in expected {
        let params = Params {
            from: Some("2026-11-02".into()),
            to: Some("2026-11-03".into()),
            window: Some(window.into()),
            ..Params::default()
        };
        let req = Request::parse(What::Funnel, &params, now).unwrap();
        let counted = matches!(req.read(now, chrono_tz::UTC), ReportRead::Counts(_));
        assert_eq!(counted, window != "1000h", "{window}");
        let a = funnel_both(&store, f, &rows, &req, now).await;
        let got: Vec<u64> = a.report.stages.iter().map(|s| s.leads_in).collect();
        assert_eq!(got, ins, "{window}");
        assert_eq!(a.report.converted.part, converted, "{window}");
        let invoice = &a.report.stages[2];
        let paid: f64 = invoice.revenue.iter().map(|r| r.total).sum();
        assert_eq!(paid, revenue, "{window}");
        // What is not yet moved on within the window is still there.
        assert_eq!(a.report.stages[1].still_there, ins[1] - ins[2], "{window}");
    }
}

on_both_backends! {
    whole_day_windows => whole_day_windows_read_counters,
}

/// The calendar view in its own terms: 10 applications on day 0, 4 offers on day 1; the other 6
/// applications time out after 30 days, on day 30, and the 4 offers on day 31. The view of day
/// 0 sees the 10 entries and nothing ended; the view of day 30 sees the 6 exits with their 30
/// days in the stage (filed on the day they ended, not the day the visits began), none of
/// them moving on (0 %), and no share of the funnel's entries; day 31 sees the offers' exits.
async fn calendar_view_in_its_own_terms(store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(dir.path(), &[("funnels/b2b.yaml", B2B)]);
    let rt = crate::util::engine(&store, &p, t0()).await;
    let ids = confirmed_leads(&store, "k", 10).await;
    rt.enroll_many(&ids, &fid("b2b"), t0()).await.unwrap();
    let day = |d: i64| t0() + Duration::days(d);
    for l in &ids[..4] {
        let offer = Event::of(EventKind::parse("offer_made").unwrap());
        rt.event(*l, offer, None, day(1)).await.unwrap();
    }
    for d in [1, 30, 31] {
        while rt.tick(day(d)).await.unwrap() > 0 {}
    }
    let now = day(32);
    let rows = store
        .report_rows(&fid("b2b"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let f = &p.funnels[0];
    let report = |d: i64| {
        let date = |t: DateTime<Utc>| t.format("%Y-%m-%d").to_string();
        let params = Params {
            from: Some(date(day(d))),
            to: Some(date(day(d + 1))),
            cohort: Some("calendar".into()),
            ..Params::default()
        };
        let req = Request::parse(What::Funnel, &params, now).unwrap();
        assert!(matches!(
            req.read(now, chrono_tz::UTC),
            ReportRead::Counts(_)
        ));
        let (store, rows) = (&store, &rows);
        async move { funnel_both(store, f, rows, &req, now).await.report }
    };
    let first = report(0).await;
    let app = &first.stages[0];
    assert_eq!(
        (first.entered, app.leads_in, app.still_there),
        (10, 10, 0),
        "all left by now"
    );
    assert!(app.exited.is_empty() && app.moved_on.is_empty());
    assert_eq!(
        app.to_next.unwrap().percent,
        None,
        "no visit ended that day"
    );
    assert_eq!(app.from_entry, None);
    let next = report(1).await;
    assert_eq!(next.stages[0].moved_on["offer"], 4);
    assert_eq!(next.stages[0].to_next.unwrap().percent, Some(100.0));
    let late = report(30).await;
    let app = &late.stages[0];
    assert_eq!((late.entered, app.leads_in), (0, 0));
    assert_eq!(app.exited["not_converted"], 6);
    assert_eq!(app.to_next.unwrap(), autofunnel::report::Rate::of(0, 6));
    assert_eq!(app.time_in_stage.p50_seconds, Some(30 * 86_400));
    assert_eq!((late.converted.part, late.converted.whole), (0, 6));
    let last = report(31).await;
    assert_eq!(last.stages[1].exited["not_converted"], 4);
    assert_eq!(last.stages[0].exited.get("not_converted"), None);
    let table = render::table(&late);
    assert!(
        table.contains("converted 0.0% (0) of the 6 runs that left the funnel in the period"),
        "{table}"
    );
}

on_both_backends! {
    calendar_terms => calendar_view_in_its_own_terms,
}

/// History across edits: after the funnel's file renames a stage (`offer` → `proposal`), drops
/// an email (`nudge`) and replaces a split's variant (`hi` → `hey`), a report made with the new
/// file still shows what the old stage, email and variant did, after the file's own, marked
/// removed — from the counters and from the rows alike.
async fn history_survives_an_edit(store: Store) {
    store.migrate().await.unwrap();
    let before = r#"name: Edited
from: "Shop <shop@example.com>"
entry: { api: true }
stages:
  - id: application
    on: [{ event: offer_made, goto: offer }]
    steps:
      - send:
          split: [hello, hi]
      - send: nudge
      - wait: 30d
      - exit: not_converted
  - id: offer
    steps:
      - wait: 30d
      - exit: not_converted
"#;
    let after = before
        .replace("goto: offer", "goto: proposal")
        .replace("id: offer", "id: proposal")
        .replace("      - send: nudge\n", "")
        .replace("[hello, hi]", "[hello, hey]");
    let templates = [
        ("templates/edited/hello.subject", "Hello"),
        ("templates/edited/hello.html", "<p>Hello</p>"),
        ("templates/edited/hi.subject", "Hi"),
        ("templates/edited/hi.html", "<p>Hi</p>"),
        ("templates/edited/hey.subject", "Hey"),
        ("templates/edited/hey.html", "<p>Hey</p>"),
        ("templates/edited/nudge.subject", "Nudge"),
        ("templates/edited/nudge.html", "<p>Nudge</p>"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![("funnels/edited.yaml", before)];
    files.extend(templates);
    let p = project_of(dir.path(), &files);
    let rt = crate::util::engine(&store, &p, t0()).await;
    let ids = confirmed_leads(&store, "e", 10).await;
    rt.enroll_many(&ids, &fid("edited"), t0()).await.unwrap();
    for l in &ids[..4] {
        let offer = Event::of(EventKind::parse("offer_made").unwrap());
        rt.event(*l, offer, None, t0() + Duration::hours(1))
            .await
            .unwrap();
    }
    while rt.tick(t0() + Duration::hours(1)).await.unwrap() > 0 {}
    let dir2 = tempfile::tempdir().unwrap();
    let mut files = vec![("funnels/edited.yaml", after.as_str())];
    files.extend(templates);
    let edited = project_of(dir2.path(), &files);
    let f = &edited.funnels[0];
    let now = t0() + Duration::days(1);
    let rows = store
        .report_rows(&fid("edited"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let params = Params {
        from: Some("2026-11-02".into()),
        ..Params::default()
    };
    let req = Request::parse(What::Funnel, &params, now).unwrap();
    let a = funnel_both(&store, f, &rows, &req, now).await;
    let stages: Vec<(&str, u64, bool)> = a
        .report
        .stages
        .iter()
        .map(|s| (s.stage.as_str(), s.leads_in, s.removed))
        .collect();
    assert_eq!(
        stages,
        [
            ("application", 10, false),
            ("proposal", 0, false),
            ("offer", 4, true)
        ]
    );
    assert_eq!(a.report.stages[0].moved_on["offer"], 4);
    assert!(render::table(&a.report).contains("offer (removed)"));
    let req = Request::parse(What::Emails, &params, now).unwrap();
    let Answer::Emails(e) = both(&store, f, &rows, &req, now).await else {
        unreachable!()
    };
    let emails: Vec<(&str, u64, bool)> = e
        .emails
        .iter()
        .map(|m| (m.template.as_str(), m.queued, m.removed))
        .collect();
    assert_eq!(emails[0].0, "hello");
    assert_eq!((emails[1].0, emails[1].2), ("hi", true));
    assert_eq!(emails[0].1 + emails[1].1, 10, "each lead got one variant");
    assert!(emails[0].1 > 0 && emails[1].1 > 0, "{emails:?}");
    assert_eq!(emails[2], ("nudge", 10, true));
    assert!(render::email_table(&e).contains("nudge (removed)"));
    let req = Request::parse(What::Ab, &params, now).unwrap();
    let Answer::Ab(ab) = both(&store, f, &rows, &req, now).await else {
        unreachable!()
    };
    assert_eq!(ab.splits.len(), 1);
    let split = &ab.splits[0];
    assert!(!split.removed);
    let variants: Vec<(&str, u64, bool)> = split
        .variants
        .iter()
        .map(|v| (v.template.as_str(), v.leads, v.removed))
        .collect();
    assert_eq!(
        variants,
        [
            ("hello", emails[0].1, false),
            ("hey", 0, false),
            ("hi", emails[1].1, true)
        ],
        "the removed variant is shown after the split's own"
    );
    assert!(render::ab_table(&ab).contains("hi (removed)"));
    assert!(
        render::ab_csv(&ab)
            .lines()
            .last()
            .unwrap()
            .ends_with(",true")
    );
}

on_both_backends! {
    edits => history_survives_an_edit,
}

/// Days in the seller's zone: 30 leads enter at 22:00 UTC on 2 November — 01:00 on 3
/// November in Moscow — and 20 at 10:00 UTC on 3 November. In UTC the first 30 fall on
/// 2 November; with `tz` Europe/Moscow all 50 fall on 3 November, the table's times are
/// Moscow's and it says so. An unknown zone is refused, naming the parameter.
async fn days_in_the_sellers_zone(mut store: Store) {
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(dir.path(), &[("funnels/b2b.yaml", B2B)]);
    let late = Utc.with_ymd_and_hms(2026, 11, 2, 22, 0, 0).unwrap();
    let rt = crate::util::engine(&store, &p, late).await;
    let ids = confirmed_leads(&store, "z", 50).await;
    rt.enroll_many(&ids[..30], &fid("b2b"), late).await.unwrap();
    rt.enroll_many(&ids[30..], &fid("b2b"), late + Duration::hours(12))
        .await
        .unwrap();
    let now = late + Duration::days(2);
    let rows = store
        .report_rows(&fid("b2b"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let f = &p.funnels[0];
    let ask = |tz: Option<&str>| Params {
        from: Some("2026-11-02".into()),
        to: Some("2026-11-04".into()),
        by: Some("day".into()),
        tz: tz.map(str::to_string),
        ..Params::default()
    };
    let days =
        |a: &FunnelAnswer| -> Vec<u64> { a.periods.iter().flatten().map(|p| p.entered).collect() };
    let utc = Request::parse(What::Funnel, &ask(None), now).unwrap();
    assert!(matches!(utc.read(now, store.zone()), ReportRead::Counts(_)));
    assert_eq!(
        days(&funnel_both(&store, f, &rows, &utc, now).await),
        [30, 20]
    );
    let msk = Request::parse(What::Funnel, &ask(Some("Europe/Moscow")), now).unwrap();
    assert_eq!(
        msk.from,
        Utc.with_ymd_and_hms(2026, 11, 1, 21, 0, 0).unwrap()
    );
    assert!(
        matches!(msk.read(now, store.zone()), ReportRead::Counts(c) if !c.hours.is_empty()),
        "counters are per UTC day: the whole ones, and all runs' counters by the hour of the \
         hours around them"
    );
    let a = funnel_both(&store, f, &rows, &msk, now).await;
    assert_eq!(days(&a), [0, 50]);
    assert_eq!(a.report.tz, "Europe/Moscow");
    let table = render::funnel_table(&a);
    assert!(
        table.contains("from 2026-11-02 00:00 to 2026-11-04 00:00 (Europe/Moscow)"),
        "{table}"
    );
    assert!(table.contains("\n2026-11-03  50 "), "{table}");
    // With report_timezone Europe/Moscow the counters are made again per Moscow day: the
    // Moscow report reads them (and agrees with the rows), the UTC one reads the rows.
    assert!(
        store
            .count_in(chrono_tz::Europe::Moscow, &[], now)
            .await
            .unwrap()
    );
    assert!(
        !store
            .count_in(chrono_tz::Europe::Moscow, &[], now)
            .await
            .unwrap(),
        "once"
    );
    assert_eq!(
        store.counters_zone().await.unwrap(),
        chrono_tz::Europe::Moscow
    );
    assert!(matches!(msk.read(now, store.zone()), ReportRead::Counts(_)));
    assert_eq!(
        days(&funnel_both(&store, f, &rows, &msk, now).await),
        [0, 50]
    );
    assert!(matches!(
        utc.read(now, store.zone()),
        ReportRead::Counts(c) if !c.hours.is_empty()
    ));
    assert_eq!(
        days(&funnel_both(&store, f, &rows, &utc, now).await),
        [30, 20]
    );
    // New facts are counted in the zone too: 5 more leads at 23:30 UTC on 3 November are
    // Moscow's 4 November.
    // (The engine is started on the store as `run` starts it: after its zone is set.)
    let more = confirmed_leads(&store, "y", 5).await;
    let later = Utc.with_ymd_and_hms(2026, 11, 3, 23, 30, 0).unwrap();
    let rt = crate::util::engine(&store, &p, later).await;
    rt.enroll_many(&more, &fid("b2b"), later).await.unwrap();
    let rows = store
        .report_rows(&fid("b2b"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let week = Params {
        to: Some("2026-11-05".into()),
        ..ask(Some("Europe/Moscow"))
    };
    let req = Request::parse(What::Funnel, &week, now).unwrap();
    assert_eq!(
        days(&funnel_both(&store, f, &rows, &req, now).await),
        [0, 50, 5]
    );
    let err = Request::parse(What::Funnel, &ask(Some("Mars/Olympus")), now).unwrap_err();
    assert_eq!(err.param, "tz");
    assert!(
        err.message.contains("no time zone \"Mars/Olympus\""),
        "{}",
        err.message
    );
}

on_both_backends! {
    zones => days_in_the_sellers_zone,
}

/// A field the counters are kept by (`report_fields`): a slice by it reads the counters, by
/// the value each run's lead had when it entered, and agrees with the rows (whose runs' origins
/// hold it); any other field slices by the value now, from the rows. Declared later, the runs
/// take the value their leads have then.
async fn a_kept_field_slices_from_counters(mut store: Store) {
    store.migrate().await.unwrap();
    let region = vec!["region".to_string()];
    store.count_in(chrono_tz::UTC, &region, t0()).await.unwrap();
    assert_eq!(store.counters_fields().await.unwrap(), region);
    let dir = tempfile::tempdir().unwrap();
    let p = project_of(dir.path(), &[("funnels/b2b.yaml", B2B)]);
    let rt = crate::util::engine(&store, &p, t0()).await;
    // 6 leads in Moscow, 3 in Kazan, 1 without a region.
    let mut regions = vec![Some("Moscow"); 6];
    regions.extend([Some("Kazan"), Some("Kazan"), Some("Kazan"), None]);
    let ids = leads_in_regions(&store, "k", &regions).await;
    rt.enroll_many(&ids, &fid("b2b"), t0()).await.unwrap();
    // Offers to Moscow's first four (the fourth moving to Kazan with it) and Kazan's first.
    let at = t0() + Duration::hours(30);
    let batch: Vec<BatchEvent> = [0, 1, 2, 3, 6]
        .into_iter()
        .map(|i| {
            let mut fields = serde_json::Map::new();
            if i == 3 {
                fields.insert("region".into(), "Kazan".into());
            }
            BatchEvent {
                fields,
                who: LeadRef::Id(ids[i]),
                event: Event::of(EventKind::parse("offer_made").unwrap()),
                idempotency_key: Some(format!("offer:{i}")),
                occurred_at: at,
                touch: None,
            }
        })
        .collect();
    rt.record_batch(batch, at).await.unwrap();
    while rt.tick(at).await.unwrap() > 0 {}
    let now = t0() + Duration::days(3);
    let rows = store
        .report_rows(&fid("b2b"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    let f = &p.funnels[0];
    let ask = |tz: &str| Params {
        from: Some("2026-11-01".into()),
        slice: vec!["field:region".into()],
        tz: Some(tz.into()),
        ..Params::default()
    };
    let slices = |a: &FunnelAnswer| -> Vec<(String, u64, u64)> {
        a.slices
            .iter()
            .flatten()
            .map(|s| {
                (
                    s.value.clone(),
                    s.report.entered,
                    s.report.stages[1].leads_in,
                )
            })
            .collect()
    };
    let at_entry = [
        ("Moscow".to_string(), 6, 4),
        ("Kazan".to_string(), 3, 1),
        ("(none)".to_string(), 1, 0),
    ];
    let now_values = [
        ("Moscow".to_string(), 5, 3),
        ("Kazan".to_string(), 4, 2),
        ("(none)".to_string(), 1, 0),
    ];
    let req = Request::parse(What::Funnel, &ask("UTC"), now).unwrap();
    let kept = req.kept_by(store.kept_fields());
    assert!(matches!(
        kept.read(now, store.zone()),
        ReportRead::Counts(_)
    ));
    assert_eq!(
        slices(&funnel_both(&store, f, &rows, &kept, now).await),
        at_entry
    );
    // Over other hours: the counters of the whole days and the rows around, by the same origins.
    let msk = Request::parse(What::Funnel, &ask("Europe/Moscow"), now)
        .unwrap()
        .kept_by(store.kept_fields());
    assert!(matches!(
        msk.read(now, store.zone()),
        ReportRead::Parts { .. }
    ));
    assert_eq!(
        slices(&funnel_both(&store, f, &rows, &msk, now).await),
        at_entry
    );
    // A field the counters are not kept by: its value now, from the rows.
    let by_now = Request::parse(What::Funnel, &ask("UTC"), now).unwrap();
    assert!(matches!(
        by_now.read(now, store.zone()),
        ReportRead::Rows(_)
    ));
    let from_rows = answer(f, &ReportData::Rows(rows.clone()), &by_now, now).unwrap();
    let Answer::Funnel(from_rows) = from_rows else {
        unreachable!()
    };
    assert_eq!(slices(&from_rows), now_values);
    // Through the store, a few leads at a time: the whole report is the slice's runs counted
    // together, the same as without the slice.
    let unkept = store.clone().with_fields(&[]).with_lead_range(3);
    let make = autofunnel::runtime::report::make;
    let Answer::Funnel(ranged) = make(&unkept, f, &by_now, now).await.unwrap() else {
        unreachable!()
    };
    assert_eq!(slices(&ranged), now_values);
    let whole = Params {
        from: Some("2026-11-01".into()),
        ..Params::default()
    };
    let whole = Request::parse(What::Funnel, &whole, now).unwrap();
    let Answer::Funnel(whole) = make(&store, f, &whole, now).await.unwrap() else {
        unreachable!()
    };
    assert_eq!(ranged.report, whole.report);
    assert_eq!(whole.report.entered, 10);
    // Kept by no field, then by the region again: the runs take the values their leads have now.
    assert!(store.count_in(chrono_tz::UTC, &[], now).await.unwrap());
    assert!(store.count_in(chrono_tz::UTC, &region, now).await.unwrap());
    assert!(
        !store.count_in(chrono_tz::UTC, &region, now).await.unwrap(),
        "once"
    );
    let rows = store
        .report_rows(&fid("b2b"), now, ReportNeeds::ALL)
        .await
        .unwrap();
    assert_eq!(
        slices(&funnel_both(&store, f, &rows, &kept, now).await),
        now_values
    );
    // A value as long as a lead field may be (2,000 characters, four bytes each) is kept to
    // its first 100 bytes (25 such characters): the run starts and its slice is that. So are
    // the parts of its first touch, each as long as a UTM parameter may be (200 characters
    // of four bytes, and 200 quotes, which JSON doubles), and the product it buys (200 of
    // four bytes): PostgreSQL, which refuses to index a key of more than about 2,700 bytes,
    // stores the counters of the run and of its order.
    let long = "𝔐".repeat(2_000);
    let ids = leads_in_regions(&store, "long", &[Some(long.as_str())]).await;
    // Characters in no order, so PostgreSQL cannot compress the key below its limit.
    let scattered = |k: u32| -> String {
        (0..200u32)
            .filter_map(|i| char::from_u32(0x20000 + (i * 7919 + k * 104_729) % 40000))
            .collect()
    };
    let (utm, quotes) = (scattered(0), "\"".repeat(200));
    let first = autofunnel::store::NewTouch {
        channel: scattered(1),
        source: Some(utm.clone()),
        medium: Some(quotes.clone()),
        campaign: Some(scattered(2)),
        form: Some(scattered(3)),
        ..autofunnel::store::NewTouch::default()
    };
    store.record_touch(ids[0], first, now).await.unwrap();
    let rt = crate::util::engine(&store, &p, now).await;
    rt.enroll_many(&ids, &fid("b2b"), now).await.unwrap();
    let bought = Event {
        product: Some(utm.clone()),
        ..purchase("service", 10.0)
    };
    rt.event(
        ids[0],
        bought,
        Some("long".into()),
        now + Duration::minutes(1),
    )
    .await
    .unwrap();
    let later = now + Duration::hours(1);
    let rows = store
        .report_rows(&fid("b2b"), later, ReportNeeds::ALL)
        .await
        .unwrap();
    let kept = Request::parse(What::Funnel, &ask("UTC"), later)
        .unwrap()
        .kept_by(store.kept_fields());
    let values: Vec<String> = slices(&funnel_both(&store, f, &rows, &kept, later).await)
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert!(values.contains(&"𝔐".repeat(25)), "{values:?}");
    let by_source = Params {
        slice: vec!["utm_source".into(), "utm_medium".into()],
        ..ask("UTC")
    };
    let by_source = Request::parse(What::Funnel, &by_source, later).unwrap();
    assert!(matches!(
        by_source.read(later, store.zone()),
        ReportRead::Counts(_)
    ));
    let a = funnel_both(&store, f, &rows, &by_source, later).await;
    let values: Vec<&str> = a
        .slices
        .iter()
        .flatten()
        .map(|s| s.value.as_str())
        .collect();
    let cut: String = utm.chars().take(25).collect();
    assert!(
        values.contains(&cut.as_str()) && values.contains(&"\"".repeat(100).as_str()),
        "{values:?}"
    );
    let paid: Vec<String> = a
        .report
        .products
        .iter()
        .map(|p| p.product.clone())
        .collect();
    assert!(paid.contains(&cut), "{paid:?}");
}

on_both_backends! {
    kept_fields => a_kept_field_slices_from_counters,
}
