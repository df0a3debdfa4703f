//! The dashboard's pages, made from the reports' own figures (`src/report/`, never a second
//! computation): server-rendered HTML with inline SVG charts and one small stylesheet, no
//! external asset and no script. Pure: the server's handlers (`server::dashboard`) read the
//! store and the reports and hand the answers here.
//!
//! - [`session`]: the signed session cookie, the forms' CSRF token, the login form's value.
//! - [`svg`]: the funnel chart and the sparklines; [`map`]: the funnel file as a diagram.
//! - [`i18n`]: every word shown, in English and Russian.

pub mod i18n;
pub mod map;
pub mod session;
pub mod svg;

use std::sync::OnceLock;

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;

use crate::funnel::Funnel;
use crate::locale::{self, Language};
use crate::report::ab::AbReport;
use crate::report::emails::EmailReport;
use crate::report::{Cohort, FunnelReport, Revenue};
use i18n::Strings;

const CSS: &str = include_str!("pages/style.css");

fn tera() -> &'static tera::Tera {
    static TERA: OnceLock<tera::Tera> = OnceLock::new();
    TERA.get_or_init(|| {
        let mut t = tera::Tera::default();
        t.autoescape_on(vec![".html"]);
        t.add_raw_templates(vec![
            ("base.html", include_str!("pages/base.html")),
            ("login.html", include_str!("pages/login.html")),
            ("overview.html", include_str!("pages/overview.html")),
            ("funnel.html", include_str!("pages/funnel.html")),
            ("map.html", include_str!("pages/map.html")),
            ("lead.html", include_str!("pages/lead.html")),
            ("tabs.html", include_str!("pages/tabs.html")),
            ("cohorts.html", include_str!("pages/cohorts.html")),
            ("attribution.html", include_str!("pages/attribution.html")),
            ("whatif.html", include_str!("pages/whatif.html")),
            ("slices.html", include_str!("pages/slices.html")),
            ("erase.html", include_str!("pages/erase.html")),
        ])
        .expect("the dashboard's pages parse");
        t
    })
}

/// A funnel in the navigation.
#[derive(Debug, Clone, Serialize)]
pub struct NavItem {
    pub id: String,
    pub name: String,
}

/// What every page of a signed-in session shows around its own content.
#[derive(Debug, Clone)]
pub struct Frame {
    pub t: &'static Strings,
    pub lang: Language,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: String,
    pub nav: Vec<NavItem>,
}

fn render(
    page: &str,
    title: &str,
    t: &Strings,
    frame: Option<&Frame>,
    mut cx: tera::Context,
) -> String {
    cx.insert("t", t);
    cx.insert("css", CSS);
    cx.insert("title", title);
    // Not signed in (the sign-in page): no navigation, no sign-out form.
    cx.insert("csrf", frame.map_or("", |f| f.csrf.as_str()));
    cx.insert("nav", frame.map_or(&[][..], |f| f.nav.as_slice()));
    if !cx.contains_key("current") {
        cx.insert("current", "");
    }
    tera().render(page, &cx).unwrap_or_else(|e| {
        format!(
            "<!doctype html><title>error</title><p>{}</p>",
            tera_error(&e)
        )
    })
}

fn tera_error(e: &tera::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace('&', "&amp;").replace('<', "&lt;")
}

/// The sign-in page: `form` is the value its hidden field and cookie share.
pub fn login_page(t: &'static Strings, form: &str, error: Option<&str>) -> String {
    let mut cx = tera::Context::new();
    cx.insert("form", form);
    cx.insert("error", &error);
    render("login.html", t.sign_in, t, None, cx)
}

/// Revenue per currency as the language writes money.
fn money(revenue: &[Revenue], lang: Language) -> Vec<String> {
    revenue
        .iter()
        .map(|r| locale::money(r.total, &r.currency, lang))
        .collect()
}

/// Sums revenue per currency.
fn add_revenue(into: &mut Vec<Revenue>, more: &[Revenue]) {
    for r in more {
        match into.iter_mut().find(|x| x.currency == r.currency) {
            Some(x) => {
                x.orders += r.orders;
                x.total += r.total;
                x.refunds += r.refunds;
                x.refunded += r.refunded;
            }
            None => into.push(r.clone()),
        }
    }
}

/// One period of a funnel on the overview.
#[derive(Debug, Clone, Serialize)]
struct PeriodFigures {
    key: &'static str,
    label: &'static str,
    signups: String,
    conversions: String,
    revenue: Vec<String>,
}

/// One funnel on the overview.
#[derive(Debug, Clone, Serialize)]
struct OverviewFunnel {
    id: String,
    name: String,
    awaiting: String,
    periods: Vec<PeriodFigures>,
    sparkline: String,
    stages: Vec<StageCount>,
}

#[derive(Debug, Clone, Serialize)]
struct StageCount {
    id: String,
    leads: String,
}

/// What the overview says of the machine.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub queued: u64,
    pub sending: u64,
    /// How long the most overdue timer has been due, in seconds.
    pub lag_secs: f64,
    pub failed_webhooks: u64,
    pub bounces: u64,
}

/// What the overview shows of one funnel: its calendar-view report of the last 30 days by
/// day (the last period is today), and its live runs per stage.
pub struct FunnelDay<'a> {
    pub funnel: &'a Funnel,
    pub days: &'a [FunnelReport],
    pub in_flight: Vec<(String, u64)>,
    /// Runs waiting for the double opt-in click (in no stage yet).
    pub awaiting: u64,
}

/// The overview: every funnel's signups, conversions and revenue today, this week (from
/// Monday, in the report zone) and over 30 days, a sparkline of its daily signups, its leads
/// in flight per stage; and the machine's health.
pub fn overview_page(
    frame: &Frame,
    funnels: &[FunnelDay],
    health: &Health,
    tz: chrono_tz::Tz,
) -> String {
    let (t, lang) = (frame.t, frame.lang);
    let n = |x: u64| locale::count(x, lang);
    let rows: Vec<OverviewFunnel> = funnels
        .iter()
        .map(|fd| {
            let sum = |days: &[FunnelReport]| {
                let mut revenue = Vec::new();
                for d in days {
                    add_revenue(&mut revenue, &d.revenue);
                }
                (
                    days.iter().map(|d| d.entered).sum::<u64>(),
                    days.iter().map(|d| d.converted.part).sum::<u64>(),
                    revenue,
                )
            };
            let today = fd.days.len().saturating_sub(1);
            // Days since Monday, today included.
            let week = fd.days.last().map_or(1, |d| {
                d.from.with_timezone(&tz).weekday().num_days_from_monday() + 1
            }) as usize;
            let periods = [
                ("today", t.today, &fd.days[today.min(fd.days.len())..]),
                (
                    "week",
                    t.this_week,
                    &fd.days[fd.days.len().saturating_sub(week)..],
                ),
                ("30d", t.last_30_days, fd.days),
            ]
            .into_iter()
            .map(|(key, label, days)| {
                let (signups, conversions, revenue) = sum(days);
                PeriodFigures {
                    key,
                    label,
                    signups: n(signups),
                    conversions: n(conversions),
                    revenue: money(&revenue, lang),
                }
            })
            .collect();
            let per_day: Vec<u64> = fd.days.iter().map(|d| d.entered).collect();
            OverviewFunnel {
                id: fd.funnel.id.value.to_string(),
                name: fd.funnel.name.clone(),
                awaiting: n(fd.awaiting),
                periods,
                sparkline: svg::sparkline(&per_day, t.signups_per_day),
                stages: fd
                    .in_flight
                    .iter()
                    .map(|(id, leads)| StageCount {
                        id: id.clone(),
                        leads: n(*leads),
                    })
                    .collect(),
            }
        })
        .collect();
    let mut cx = tera::Context::new();
    cx.insert("funnels", &rows);
    cx.insert(
        "health",
        &serde_json::json!({
            "queued": n(health.queued),
            "sending": n(health.sending),
            "lag": format!("{:.0} {}", health.lag_secs, t.seconds),
            "lagging": health.lag_secs > 60.0,
            "failed_webhooks": n(health.failed_webhooks),
            "bounces": n(health.bounces),
        }),
    );
    render("overview.html", t.overview, t, Some(frame), cx)
}

/// The period and view a funnel page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// The last this many days, today included.
    pub days: u32,
    pub cohort: Cohort,
}

impl View {
    /// The periods the page offers.
    pub const DAYS: [u32; 3] = [7, 30, 90];

    /// `?days=&cohort=` as a link's query.
    pub fn query(self) -> String {
        let cohort = match self.cohort {
            Cohort::Entry => "entry",
            Cohort::Calendar => "calendar",
        };
        format!("days={}&cohort={cohort}", self.days)
    }
}

/// The reports a funnel page shows, made for its period and view.
pub struct FunnelFigures<'a> {
    pub funnel: &'a Funnel,
    pub view: View,
    pub report: &'a FunnelReport,
    pub emails: &'a EmailReport,
    pub ab: &'a AbReport,
}

/// A funnel's page: the funnel chart and its table, the per-email table, the A/B tests; the
/// period and the cohort/calendar switch as links; the same figures as JSON and CSV.
pub fn funnel_page(frame: &Frame, f: &FunnelFigures) -> String {
    let (t, lang) = (frame.t, frame.lang);
    let id = f.funnel.id.value.as_str();
    let n = |x: u64| locale::count(x, lang);
    let pct = |r: Option<&crate::report::Rate>| locale::percent(r.and_then(|r| r.percent), lang);
    let r = f.report;
    let stages: Vec<serde_json::Value> = r
        .stages
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.stage,
                "removed": s.removed,
                "leads_in": n(s.leads_in),
                "to_next": pct(s.to_next.as_ref()),
                "from_entry": pct(s.from_entry.as_ref()),
                "still_there": n(s.still_there),
                "median": s.time_in_stage.p50_seconds.map_or("—".to_string(), |secs| {
                    locale::span(chrono::Duration::seconds(secs), lang)
                }),
                "revenue": money(&s.revenue, lang),
            })
        })
        .collect();
    let emails: Vec<serde_json::Value> = f
        .emails
        .emails
        .iter()
        .map(|e| {
            serde_json::json!({
                "template": e.template,
                "removed": e.removed,
                "stage": e.stage.clone().unwrap_or_default(),
                "queued": n(e.queued),
                "opened": pct(Some(&e.opened)),
                "clicked": pct(Some(&e.clicked)),
                "next_stage": pct(e.next_stage.as_ref()),
                "unsubscribed": n(e.unsubscribed),
                "bounced": n(e.bounced),
            })
        })
        .collect();
    let splits: Vec<serde_json::Value> = f
        .ab
        .splits
        .iter()
        .map(|s| {
            let variants: Vec<serde_json::Value> = s
                .variants
                .iter()
                .map(|v| {
                    serde_json::json!({
                        "template": v.template,
                        "removed": v.removed,
                        "sends": n(v.sends),
                        "runs": n(v.leads),
                        "clicked": pct(Some(&v.clicked)),
                        "converted": pct(Some(&v.converted)),
                        "p": v.p_value.map_or("—".to_string(), |p| if p < 0.001 { "< 0.001".into() } else { format!("{p:.3}") }),
                    })
                })
                .collect();
            serde_json::json!({ "stage": s.stage, "step": s.step, "variants": variants, "verdict": s.verdict })
        })
        .collect();
    // Links put in as they are (`| safe`): the id is an identifier, the rest ours.
    let link = |v: View| {
        format!(
            "/dashboard/funnels/{id}?{}",
            v.query().replace('&', "&amp;")
        )
    };
    let periods: Vec<serde_json::Value> = View::DAYS
        .iter()
        .zip([t.days_7, t.days_30, t.days_90])
        .map(|(d, label)| {
            let v = View { days: *d, ..f.view };
            serde_json::json!({ "label": label, "current": v == f.view, "href": link(v) })
        })
        .collect();
    let cohorts: Vec<serde_json::Value> = [
        (Cohort::Entry, t.entry_cohorts),
        (Cohort::Calendar, t.calendar_view),
    ]
    .into_iter()
    .map(|(c, label)| {
        let v = View {
            cohort: c,
            ..f.view
        };
        serde_json::json!({ "label": label, "current": v == f.view, "href": link(v) })
    })
    .collect();
    let mut cx = tera::Context::new();
    cx.insert("current", id);
    cx.insert("name", &f.funnel.name);
    let tz: chrono_tz::Tz = r.tz.parse().unwrap_or(chrono_tz::UTC);
    let day = |at: DateTime<Utc>| at.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
    let view = match r.cohort {
        Cohort::Entry => t.entry_cohorts,
        Cohort::Calendar => t.calendar_view,
    };
    cx.insert(
        "heading",
        &format!("{view}: {} — {} ({})", day(r.from), day(r.to), r.tz),
    );
    cx.insert(
        "chart",
        &svg::funnel(r, lang, &format!("{} — {}", t.funnel_chart, f.funnel.name)),
    );
    cx.insert("entered", &n(r.entered));
    cx.insert("converted", &pct(Some(&r.converted)));
    cx.insert("revenue", &money(&r.revenue, lang));
    cx.insert("stages", &stages);
    cx.insert("emails", &emails);
    cx.insert("splits", &splits);
    cx.insert("periods", &periods);
    cx.insert("cohorts", &cohorts);
    let query = f.view.query().replace('&', "&amp;");
    cx.insert(
        "json_href",
        &format!("/dashboard/funnels/{id}/report.json?{query}"),
    );
    cx.insert(
        "csv_href",
        &format!("/dashboard/funnels/{id}/report.csv?{query}"),
    );
    cx.insert("tabs", &tabs(t, id, Tab::Funnel));
    render("funnel.html", &f.funnel.name, t, Some(frame), cx)
}

/// Midnight `days - 1` days before `now`'s day in `tz`: the start of a page's period.
pub fn period_start(now: DateTime<Utc>, days: u32, tz: chrono_tz::Tz) -> DateTime<Utc> {
    let today = now.with_timezone(&tz).date_naive();
    let first = today - chrono::Duration::days(i64::from(days.max(1)) - 1);
    crate::report::midnight_in(first, tz)
}

/// A funnel's map: the diagram of its file with the leads in each stage now
/// (`in_stage`), and every way on as a table.
pub fn map_page(frame: &Frame, f: &Funnel, in_stage: &[(String, u64)]) -> String {
    let t = frame.t;
    let id = f.id.value.as_str();
    let edges: Vec<serde_json::Value> = map::edges(f)
        .into_iter()
        .map(|e| {
            let to = match e.to {
                map::To::Stage(s) => s,
                map::To::Exit(o) => format!("{} {o}", t.exit),
            };
            serde_json::json!({ "from": e.from, "to": to, "when": e.when })
        })
        .collect();
    let mut cx = tera::Context::new();
    cx.insert("current", id);
    cx.insert("id", id);
    cx.insert("name", &f.name);
    cx.insert(
        "svg",
        &map::svg(f, in_stage, frame.lang, &format!("{} — {}", t.map, f.name)),
    );
    cx.insert("edges", &edges);
    cx.insert("tabs", &tabs(t, id, Tab::Map));
    render("map.html", &f.name, t, Some(frame), cx)
}

/// One line of a lead's timeline.
#[derive(Debug, Clone, Serialize)]
struct Moment {
    at: String,
    what: String,
    detail: String,
    #[serde(skip)]
    sort: String,
}

/// A lead's timeline from its export (`Store::export_lead`): runs entered and left, stage
/// visits, events, emails, webhook calls, consent records and score milestones, oldest
/// first, times in `tz`.
fn timeline(export: &serde_json::Value, tz: chrono_tz::Tz, w: &i18n::Timeline) -> Vec<Moment> {
    use serde_json::Value;
    let text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_default();
    let mut out: Vec<Moment> = Vec::new();
    let mut push = |at: &Value, what: String, detail: String| {
        let Some(t) = at
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        else {
            return;
        };
        out.push(Moment {
            at: t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string(),
            what,
            detail,
            sort: t.with_timezone(&Utc).to_rfc3339(),
        });
    };
    let list = |k: &str| {
        export
            .get(k)
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default()
    };
    for e in list("enrollments") {
        let funnel = text(&e["funnel"]);
        push(
            &e["entered_at"],
            format!("{} {funnel}", w.entered),
            String::new(),
        );
        for h in e["history"].as_array().cloned().unwrap_or_default() {
            push(
                &h["entered_at"],
                format!("{funnel}: {} {}", w.stage, text(&h["stage"])),
                String::new(),
            );
            if !h["exited_at"].is_null() {
                let way = match (h["next_stage"].as_str(), h["reason"].as_str()) {
                    (Some(n), _) => format!("→ {n}"),
                    (None, Some(r)) => r.to_string(),
                    _ => String::new(),
                };
                push(
                    &h["exited_at"],
                    format!("{funnel}: {} {}", w.left, text(&h["stage"])),
                    way,
                );
            }
        }
        if !e["exited_at"].is_null() {
            push(
                &e["exited_at"],
                format!("{} {funnel}", w.left),
                text(&e["outcome"]),
            );
        }
    }
    for e in list("events") {
        let data = match &e["data"] {
            Value::Object(m) if !m.is_empty() => Value::Object(m.clone()).to_string(),
            _ => String::new(),
        };
        push(
            &e["occurred_at"],
            format!("{} {}", w.event, text(&e["event"])),
            data,
        );
    }
    for m in list("emails") {
        // What became of it: its status, then opened and the links clicked in it.
        let mut what = vec![text(&m["status"])];
        if m["opened"] == true {
            what.push(w.opened.into());
        }
        if m["clicked"] == true {
            let links: Vec<String> = m["links"]
                .as_array()
                .map(|l| l.iter().map(text).collect())
                .unwrap_or_default();
            what.push(if links.is_empty() {
                w.clicked.into()
            } else {
                format!("{} {}", w.clicked, links.join(", "))
            });
        }
        push(
            &m["created_at"],
            format!("{} {}", w.email, text(&m["template"])),
            format!("{} ({})", what.join(" · "), text(&m["funnel"])),
        );
    }
    for h in list("webhooks") {
        push(
            &h["created_at"],
            format!("{} {}", w.webhook, text(&h["webhook"])),
            text(&h["status"]),
        );
    }
    for c in list("consents") {
        push(
            &c["at"],
            format!("{} {}", w.consent, text(&c["status"])),
            text(&c["source"]),
        );
    }
    for m in list("milestones") {
        push(
            &m["at"],
            format!("{}: {}", w.score, text(&m["kind"])),
            text(&m["funnel"]),
        );
    }
    out.sort_by(|a, b| a.sort.cmp(&b.sort));
    out
}

/// What the lead page shows.
pub struct LeadView<'a> {
    /// The address searched for.
    pub query: &'a str,
    /// Why nothing is shown, or what an action did.
    pub message: Option<&'a str>,
    pub done: Option<&'a str>,
    /// The lead's export, when one was found.
    pub export: Option<&'a serde_json::Value>,
    /// The running funnels, to start one.
    pub funnels: &'a [NavItem],
    pub tz: chrono_tz::Tz,
}

/// The lead page: search by address; the lead's fields, consent, score and tags, the admin
/// actions (tag, start a funnel, take out of one, erase) and its timeline.
pub fn lead_page(frame: &Frame, v: &LeadView) -> String {
    let t = frame.t;
    let mut cx = tera::Context::new();
    cx.insert("current", "leads");
    cx.insert("query", v.query);
    cx.insert("message", &v.message);
    cx.insert("done", &v.done);
    cx.insert("funnels", v.funnels);
    if let Some(e) = v.export {
        let lead = &e["lead"];
        let created = lead["created_at"]
            .as_str()
            .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
            .map(|c| c.with_timezone(&v.tz).format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default();
        let fields: std::collections::BTreeMap<String, String> = lead["fields"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, x)| {
                        (
                            k.clone(),
                            x.as_str().map_or_else(|| x.to_string(), str::to_string),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        cx.insert(
            "lead",
            &serde_json::json!({
                "id": lead["id"], "email": lead["email"], "first_name": lead["first_name"],
                "consent": lead["consent"], "score": lead["score"], "tags": lead["tags"],
                "created_at": created, "fields": fields,
            }),
        );
        let live: Vec<String> = e["enrollments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| matches!(r["status"].as_str(), Some("active" | "unconfirmed")))
            .filter_map(|r| r["funnel"].as_str().map(str::to_string))
            .collect();
        cx.insert("live", &live);
        cx.insert("timeline", &timeline(e, v.tz, &t.tl));
    }
    render("lead.html", t.leads, t, Some(frame), cx)
}

/// The confirmation before a lead is erased: the address must be typed again.
pub fn erase_page(frame: &Frame, id: i64, email: &str) -> String {
    let mut cx = tera::Context::new();
    cx.insert("current", "leads");
    cx.insert("id", &id);
    cx.insert("email", email);
    render("erase.html", frame.t.erase, frame.t, Some(frame), cx)
}

/// The pages of one funnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Funnel,
    Cohorts,
    Slices,
    Attribution,
    WhatIf,
    Map,
}

fn tabs(t: &Strings, id: &str, current: Tab) -> Vec<serde_json::Value> {
    [
        (Tab::Funnel, t.funnel_chart, String::new()),
        (Tab::Cohorts, t.cohorts, "/cohorts".to_string()),
        (Tab::Slices, t.slices, "/slices".to_string()),
        (Tab::Attribution, t.attribution, "/attribution".to_string()),
        (Tab::WhatIf, t.whatif, "/whatif".to_string()),
        (Tab::Map, t.map, "/map".to_string()),
    ]
    .into_iter()
    .map(|(tab, label, path)| {
        serde_json::json!({ "label": label, "current": tab == current, "href": format!("/dashboard/funnels/{id}{path}") })
    })
    .collect()
}

/// The weeks a cohort page shows.
pub const COHORT_WEEKS: i64 = 12;

/// Entry cohorts by week as a heat map: per week of entry, the runs that entered and the share
/// of them that reached each stage since, and converted.
pub fn cohorts_page(frame: &Frame, f: &Funnel, weeks: &[FunnelReport]) -> String {
    let (t, lang) = (frame.t, frame.lang);
    let id = f.id.value.as_str();
    let stages: Vec<&str> = f.stages.iter().map(|s| s.id.value.as_str()).collect();
    let rows: Vec<serde_json::Value> = weeks
        .iter()
        .rev()
        .map(|w| {
            let tz: chrono_tz::Tz = w.tz.parse().unwrap_or(chrono_tz::UTC);
            let cells: Vec<serde_json::Value> = stages
                .iter()
                .map(|s| {
                    let st = w.stages.iter().find(|x| x.stage == *s);
                    let rate = st.and_then(|x| x.from_entry.as_ref());
                    let p = rate.and_then(|r| r.percent).unwrap_or(0.0);
                    serde_json::json!({
                        "text": format!("{} ({})", locale::percent(rate.and_then(|r| r.percent), lang), locale::count(st.map_or(0, |x| x.leads_in), lang)),
                        "alpha": format!("{:.2}", (p / 100.0).clamp(0.0, 1.0) * 0.6),
                    })
                })
                .collect();
            serde_json::json!({
                "week": w.from.with_timezone(&tz).format("%Y-%m-%d").to_string(),
                "entered": locale::count(w.entered, lang),
                "cells": cells,
                "converted": locale::percent(w.converted.percent, lang),
            })
        })
        .collect();
    let mut cx = tera::Context::new();
    cx.insert("current", id);
    cx.insert("name", &f.name);
    cx.insert("tabs", &tabs(t, id, Tab::Cohorts));
    cx.insert("stages", &stages);
    cx.insert("weeks", &rows);
    render("cohorts.html", &f.name, t, Some(frame), cx)
}

/// Attribution: the purchases of the last 30 days credited to channels, sources and campaigns
/// under a model, with the switch between models as links.
pub fn attribution_page(
    frame: &Frame,
    f: &Funnel,
    r: &crate::report::attribution::AttributionReport,
) -> String {
    let (t, lang) = (frame.t, frame.lang);
    let id = f.id.value.as_str();
    let money_of = |m: &std::collections::BTreeMap<String, f64>| {
        m.iter()
            .map(|(c, x)| locale::money(*x, c, lang))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let fraction = |x: f64| {
        let s = format!("{x:.2}");
        if lang == Language::Ru {
            s.replace('.', ",")
        } else {
            s
        }
    };
    let channels: Vec<serde_json::Value> = r
        .channels
        .iter()
        .map(|c| {
            serde_json::json!({
                "channel": c.channel, "conversions": fraction(c.conversions),
                "share": locale::percent(Some(c.share), lang), "revenue": money_of(&c.revenue),
            })
        })
        .collect();
    let credits: Vec<serde_json::Value> = r
        .credits
        .iter()
        .map(|c| {
            serde_json::json!({
                "channel": c.channel, "source": c.source.clone().unwrap_or_default(),
                "campaign": c.campaign.clone().unwrap_or_default(),
                "conversions": fraction(c.conversions), "revenue": money_of(&c.revenue),
            })
        })
        .collect();
    let models: Vec<serde_json::Value> = crate::tally::Model::ALL
        .iter()
        .map(|(name, m)| {
            serde_json::json!({ "label": name, "current": *m == r.model,
                "href": format!("/dashboard/funnels/{id}/attribution?model={name}") })
        })
        .collect();
    let mut cx = tera::Context::new();
    cx.insert("current", id);
    cx.insert("name", &f.name);
    cx.insert("tabs", &tabs(t, id, Tab::Attribution));
    cx.insert("models", &models);
    cx.insert("purchases", &locale::count(r.purchases, lang));
    cx.insert("unattributed", &locale::count(r.unattributed, lang));
    cx.insert("channels", &channels);
    cx.insert("credits", &credits);
    render("attribution.html", &f.name, t, Some(frame), cx)
}

/// What the what-if page was asked: the form's values as given.
pub struct WhatIfInputs<'a> {
    pub days: &'a str,
    pub inflow: &'a str,
    /// Per stage, the change in its conversion in per cent (as typed).
    pub changes: &'a [(String, String)],
    /// Why the projection could not be made from them.
    pub error: Option<&'a str>,
}

/// What if: the forecast of the funnel as observed and with the changes tried (inflow, a
/// stage's conversion), each figure its expected value and 80% interval.
pub fn whatif_page(
    frame: &Frame,
    f: &Funnel,
    inputs: &WhatIfInputs,
    r: Option<&crate::report::forecast::ForecastReport>,
) -> String {
    let (t, lang) = (frame.t, frame.lang);
    let id = f.id.value.as_str();
    let num = |x: f64| {
        let s = if x.abs() >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.1}")
        };
        if lang == Language::Ru {
            s.replace('.', ",")
        } else {
            s
        }
    };
    let est = |e: &crate::report::forecast::Estimate| {
        format!("{} [{}–{}]", num(e.expected), num(e.low), num(e.high))
    };
    let mut cx = tera::Context::new();
    cx.insert("current", id);
    cx.insert("id", id);
    cx.insert("name", &f.name);
    cx.insert("tabs", &tabs(t, id, Tab::WhatIf));
    cx.insert("error", &inputs.error);
    cx.insert("days", inputs.days);
    cx.insert("inflow", inputs.inflow);
    let given: Vec<serde_json::Value> = f
        .stages
        .iter()
        .map(|s| {
            let id = s.id.value.as_str();
            let value = inputs
                .changes
                .iter()
                .find(|(x, _)| x == id)
                .map_or("", |(_, v)| v.as_str());
            serde_json::json!({ "stage": id, "value": value })
        })
        .collect();
    cx.insert("inputs", &given);
    cx.insert(
        "observed_inflow",
        &r.map_or(String::new(), |r| num(r.inflow_per_day)),
    );
    if let Some(r) = r {
        let stages: Vec<serde_json::Value> = r
            .stages
            .iter()
            .map(|s| {
                let pct = |p: Option<f64>| locale::percent(p, lang);
                serde_json::json!({
                    "stage": s.stage,
                    "in_flight": locale::count(s.in_flight, lang),
                    "days": num(s.days_in_stage),
                    "conversion": format!("{} → {}", pct(s.conversion.baseline), pct(s.conversion.scenario)),
                    "leads": format!("{} → {}", est(&s.leads.baseline), est(&s.leads.scenario)),
                    "orders": format!("{} → {}", est(&s.orders.baseline), est(&s.orders.scenario)),
                })
            })
            .collect();
        let revenue: Vec<serde_json::Value> = r
            .revenue
            .iter()
            .map(|x| {
                let m = |e: &crate::report::forecast::Estimate| locale::money(e.expected, &x.currency, lang);
                serde_json::json!({ "baseline": m(&x.revenue.baseline), "scenario": m(&x.revenue.scenario) })
            })
            .collect();
        cx.insert("stages", &stages);
        cx.insert("revenue", &revenue);
        cx.insert(
            "conversions",
            &serde_json::json!({ "baseline": est(&r.conversions.baseline), "scenario": est(&r.conversions.scenario) }),
        );
        cx.insert("method", r.method);
    } else {
        cx.insert("stages", &Vec::<serde_json::Value>::new());
    }
    render("whatif.html", &f.name, t, Some(frame), cx)
}

/// The keys the sources page slices by, besides the funnel's declared fields
/// ([`slice_keys`]).
pub const SLICE_KEYS: [&str; 6] = [
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "channel",
    "form",
    "variant",
];

/// The funnel of the last 30 days per group of leads: by first touch (source, medium, campaign,
/// channel, form) or A/B variant — each group's entries, the share that reached each stage,
/// conversion and revenue.
pub fn slices_page(
    frame: &Frame,
    f: &Funnel,
    key: &str,
    a: &crate::report::request::FunnelAnswer,
) -> String {
    let (t, lang) = (frame.t, frame.lang);
    let id = f.id.value.as_str();
    let stages: Vec<&str> = f.stages.iter().map(|s| s.id.value.as_str()).collect();
    let rows: Vec<serde_json::Value> = a
        .slices
        .iter()
        .flatten()
        .map(|s| {
            let r = &s.report;
            let cells: Vec<String> = stages
                .iter()
                .map(|st| {
                    let x = r.stages.iter().find(|x| x.stage == *st);
                    locale::percent(
                        x.and_then(|x| x.from_entry.as_ref())
                            .and_then(|r| r.percent),
                        lang,
                    )
                })
                .collect();
            serde_json::json!({
                "value": s.value,
                "entered": locale::count(r.entered, lang),
                "cells": cells,
                "converted": locale::percent(r.converted.percent, lang),
                "revenue": money(&r.revenue, lang).join(", "),
            })
        })
        .collect();
    let keys: Vec<serde_json::Value> = slice_keys(f)
        .iter()
        .map(|k| {
            serde_json::json!({ "label": k, "current": *k == key,
                "href": format!("/dashboard/funnels/{id}/slices?by={k}") })
        })
        .collect();
    let r = &a.report;
    let tz: chrono_tz::Tz = r.tz.parse().unwrap_or(chrono_tz::UTC);
    let day = |at: DateTime<Utc>| at.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
    let mut cx = tera::Context::new();
    cx.insert("current", id);
    cx.insert("name", &f.name);
    cx.insert("tabs", &tabs(t, id, Tab::Slices));
    cx.insert("keys", &keys);
    cx.insert("key", key);
    cx.insert(
        "heading",
        &format!(
            "{}: {} — {} ({})",
            t.entry_cohorts,
            day(r.from),
            day(r.to),
            r.tz
        ),
    );
    cx.insert("stages", &stages);
    cx.insert("rows", &rows);
    render("slices.html", &f.name, t, Some(frame), cx)
}

/// What the sources page of `f` slices by: the first touch's parts, the A/B variant and each
/// field the funnel declares (`field:NAME`, read from the rows).
pub fn slice_keys(f: &Funnel) -> Vec<String> {
    SLICE_KEYS
        .iter()
        .map(|k| k.to_string())
        .chain(f.fields.keys().map(|n| format!("field:{n}")))
        .collect()
}
