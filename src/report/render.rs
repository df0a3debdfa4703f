//! A funnel report as text: a table for people, CSV for spreadsheets, JSON for programs.

use std::fmt::Write as _;

use super::forecast::{Change, Estimate, ForecastReport, StageChange};
use super::request::{By, FunnelAnswer};
use super::{Cohort, FunnelReport, Rate, Spread, StageReport};

/// How long, for people: `3d 4h`, `5h 10m`, `12m`, `40s`.
fn span(secs: Option<i64>) -> String {
    let Some(s) = secs else {
        return "—".into();
    };
    let (d, h, m) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

fn rate(r: &Rate) -> String {
    match r.percent {
        Some(p) => format!("{p:.1}% ({})", r.part),
        None => "—".into(),
    }
}

fn list(items: &std::collections::BTreeMap<String, u64>) -> String {
    if items.is_empty() {
        return "—".into();
    }
    items
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Clicks per link, with how many of those emails' runs went on to the next stage.
fn links(items: &std::collections::BTreeMap<String, super::emails::LinkFigures>) -> String {
    if items.is_empty() {
        return "—".into();
    }
    items
        .iter()
        .map(|(k, l)| match &l.next_stage {
            Some(r) => format!("{k} {} ({} to next)", l.clicked, r.part),
            None => format!("{k} {}", l.clicked),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One currency's revenue: `750.00 RUB (2 × 375.00; 1 refund of 250.00)`.
fn revenue_line(r: &super::Revenue) -> String {
    let refunds = match r.refunds {
        0 => String::new(),
        1 => format!("; 1 refund of {:.2}", r.refunded),
        n => format!("; {n} refunds of {:.2}", r.refunded),
    };
    format!(
        "{:.2} {} ({} × {:.2}{refunds})",
        r.total, r.currency, r.orders, r.average
    )
}

fn money(s: &StageReport) -> String {
    let mut parts: Vec<String> = s.revenue.iter().map(revenue_line).collect();
    if s.orders_without_amount > 0 {
        parts.push(format!("{} without an amount", s.orders_without_amount));
    }
    if parts.is_empty() {
        return "—".into();
    }
    parts.join("; ")
}

fn spread(s: &Spread) -> String {
    format!("{} / {}", span(s.p50_seconds), span(s.p90_seconds))
}

/// The report as a table.
pub fn table(r: &FunnelReport) -> String {
    let mut out = String::new();
    let view = match r.cohort {
        Cohort::Entry => "entry cohort: leads who entered the funnel",
        Cohort::Calendar => "calendar view: stage entries and purchases made",
    };
    let _ = writeln!(out, "{} — {}", r.funnel, r.name);
    let _ = writeln!(
        out,
        "{view} from {} to {} ({})",
        local(r.from, &r.tz),
        local(r.to, &r.tz),
        r.tz
    );
    let waiting = match r.awaiting_confirmation {
        0 => String::new(),
        n => format!(" ({n} awaiting the double opt-in)"),
    };
    let converted = match r.cohort {
        Cohort::Entry => format!("converted {}", rate(&r.converted)),
        Cohort::Calendar => format!(
            "converted {} of the {} runs that left the funnel in the period",
            rate(&r.converted),
            r.converted.whole
        ),
    };
    let _ = writeln!(
        out,
        "entered {}{waiting}, {converted}, entry → converted p50 / p90: {}",
        r.entered,
        spread(&r.length_to_converted)
    );
    if r.cohort == Cohort::Calendar {
        let _ = writeln!(
            out,
            "to next stage: of the stage's visits that ended in the period, those that moved on to the next"
        );
    }
    if let Some(q) = &r.qualified {
        let part = |name: &str, r: &Option<Rate>| r.as_ref().map(|r| format!("{name} {}", rate(r)));
        let parts: Vec<String> = [part("MQL", &q.mql), part("SQL", &q.sql)]
            .into_iter()
            .flatten()
            .collect();
        let _ = writeln!(out, "qualified: {}", parts.join(", "));
    }
    if !r.revenue.is_empty() || r.orders_without_amount > 0 {
        let mut parts: Vec<String> = r.revenue.iter().map(revenue_line).collect();
        if r.orders_without_amount > 0 {
            parts.push(format!("{} without an amount", r.orders_without_amount));
        }
        let per_lead = match r.revenue_per_lead.is_empty() {
            true => String::new(),
            false => format!(
                "; per lead {}",
                in_currencies(r.revenue_per_lead.iter().map(|(c, x)| (c, x)), ", ")
            ),
        };
        let products: Vec<String> = r
            .products
            .iter()
            .map(|p| format!("{} {:.2} {}", p.product, p.total, p.currency))
            .collect();
        let _ = writeln!(
            out,
            "revenue {}{per_lead}; by product: {}",
            parts.join("; "),
            products.join(", ")
        );
    }
    let header = [
        "stage",
        "kind",
        "in",
        "to next stage",
        "from entry",
        "moved on",
        "exited",
        "still there",
        "revenue (orders × average)",
        "time in stage p50 / p90",
    ];
    let rows: Vec<[String; 10]> = r
        .stages
        .iter()
        .map(|s| {
            [
                if s.removed {
                    format!("{} (removed)", s.stage)
                } else {
                    s.stage.clone()
                },
                s.kind.unwrap_or("—").to_string(),
                s.leads_in.to_string(),
                s.to_next.as_ref().map(rate).unwrap_or_else(|| "—".into()),
                s.from_entry
                    .as_ref()
                    .map(rate)
                    .unwrap_or_else(|| "—".into()),
                list(&s.moved_on),
                list(&s.exited),
                s.still_there.to_string(),
                money(s),
                spread(&s.time_in_stage),
            ]
        })
        .collect();
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    out.push('\n');
    out.push_str(&grid(&header, &rows));
    out
}

/// A time as the tables show it: minutes, in the report's zone.
fn local(t: chrono::DateTime<chrono::Utc>, tz: &str) -> String {
    let zone: chrono_tz::Tz = tz.parse().unwrap_or(chrono_tz::UTC);
    t.with_timezone(&zone).format("%Y-%m-%d %H:%M").to_string()
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One CSV line of `cells`, each quoted where it needs to be.
fn csv_row(out: &mut String, cells: &[String]) {
    let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
    out.push_str(&line.join(","));
    out.push('\n');
}

/// Amounts per currency, `12.50 EUR; 3.00 USD` (joined by `sep`; empty for none).
fn in_currencies<'a>(items: impl IntoIterator<Item = (&'a String, &'a f64)>, sep: &str) -> String {
    items
        .into_iter()
        .map(|(cur, x)| format!("{x:.2} {cur}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// The report as CSV: a row for the funnel as a whole (`kind` = `funnel`, no stage: its runs,
/// conversion, every order whatever the product, revenue per lead and per product), then one
/// row per stage; plain numbers.
pub fn csv(r: &FunnelReport) -> String {
    let mut out = String::from(
        "funnel,cohort,from,to,stage,kind,offer,leads_in,to_next,to_next_percent,from_entry_percent,\
         moved_on,exited,still_there,revenue,refunded,orders_without_amount,time_in_stage_p50_seconds,\
         time_in_stage_p90_seconds,revenue_per_lead,products\n",
    );
    let pct = |r: Option<&Rate>| {
        r.and_then(|r| r.percent)
            .map(|p| format!("{p:.1}"))
            .unwrap_or_default()
    };
    let head = || {
        [
            r.funnel.clone(),
            format!("{:?}", r.cohort).to_lowercase(),
            r.from.to_rfc3339(),
            r.to.to_rfc3339(),
        ]
    };
    let totals = |revenue: &[super::Revenue]| {
        revenue
            .iter()
            .map(|m| format!("{:.2} {}", m.total, m.currency))
            .collect::<Vec<_>>()
            .join(";")
    };
    let refunded = |revenue: &[super::Revenue]| {
        revenue
            .iter()
            .filter(|m| m.refunds > 0)
            .map(|m| format!("{:.2} {}", m.refunded, m.currency))
            .collect::<Vec<_>>()
            .join(";")
    };
    let whole = [
        String::new(),
        "funnel".into(),
        String::new(),
        r.entered.to_string(),
        String::new(),
        String::new(),
        pct(Some(&r.converted)),
        String::new(),
        format!("converted={}", r.converted.part),
        String::new(),
        totals(&r.revenue),
        refunded(&r.revenue),
        r.orders_without_amount.to_string(),
        r.length_to_converted
            .p50_seconds
            .map(|v| v.to_string())
            .unwrap_or_default(),
        r.length_to_converted
            .p90_seconds
            .map(|v| v.to_string())
            .unwrap_or_default(),
        r.revenue_per_lead
            .iter()
            .map(|(c, x)| format!("{x:.2} {c}"))
            .collect::<Vec<_>>()
            .join(";"),
        r.products
            .iter()
            .map(|p| format!("{}={:.2} {}", p.product, p.total, p.currency))
            .collect::<Vec<_>>()
            .join(";"),
    ];
    csv_row(&mut out, &[head().as_slice(), &whole].concat());
    for s in &r.stages {
        let cells = [
            s.stage.clone(),
            s.kind.unwrap_or_default().to_string(),
            s.offer.clone().unwrap_or_default(),
            s.leads_in.to_string(),
            s.to_next.map(|t| t.part.to_string()).unwrap_or_default(),
            pct(s.to_next.as_ref()),
            pct(s.from_entry.as_ref()),
            s.moved_on
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(";"),
            s.exited
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(";"),
            s.still_there.to_string(),
            totals(&s.revenue),
            refunded(&s.revenue),
            s.orders_without_amount.to_string(),
            s.time_in_stage
                .p50_seconds
                .map(|v| v.to_string())
                .unwrap_or_default(),
            s.time_in_stage
                .p90_seconds
                .map(|v| v.to_string())
                .unwrap_or_default(),
            String::new(),
            String::new(),
        ];
        csv_row(&mut out, &[head().as_slice(), &cells].concat());
    }
    out
}

/// The per-email report as a table.
pub fn email_table(r: &super::emails::EmailReport) -> String {
    let mut out = String::new();
    let view = match r.cohort {
        Cohort::Entry => "emails to leads who entered the funnel",
        Cohort::Calendar => "emails queued",
    };
    let _ = writeln!(
        out,
        "{} — {view} from {} to {} ({})",
        r.funnel,
        local(r.from, &r.tz),
        local(r.to, &r.tz),
        r.tz
    );
    let _ = writeln!(out, "{}", r.note);
    let header = [
        "email",
        "stage",
        "queued",
        "accepted",
        "failed",
        "opened",
        "clicked",
        "click-to-open",
        "unsubscribed",
        "bounced",
        "complained",
        "next stage",
        "clicks by link (to next stage)",
    ];
    let rows: Vec<Vec<String>> = r
        .emails
        .iter()
        .map(|e| {
            vec![
                if e.removed {
                    format!("{} (removed)", e.template)
                } else {
                    e.template.clone()
                },
                e.stage.clone().unwrap_or_else(|| "—".into()),
                e.queued.to_string(),
                e.accepted.to_string(),
                e.failed.to_string(),
                rate(&e.opened),
                rate(&e.clicked),
                rate(&e.click_to_open),
                e.unsubscribed.to_string(),
                e.bounced.to_string(),
                e.complained.to_string(),
                e.next_stage
                    .as_ref()
                    .map(rate)
                    .unwrap_or_else(|| "—".into()),
                links(&e.links),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&grid(&header, &rows));
    out
}

/// The per-email report as CSV.
pub fn email_csv(r: &super::emails::EmailReport) -> String {
    let mut out = String::from(
        "funnel,template,stage,queued,accepted,failed,opened,clicked,click_to_open_percent,\
         unsubscribed,bounced,complained,next_stage,next_stage_percent,links,links_to_next_stage\n",
    );
    for e in &r.emails {
        let cells = [
            r.funnel.clone(),
            e.template.clone(),
            e.stage.clone().unwrap_or_default(),
            e.queued.to_string(),
            e.accepted.to_string(),
            e.failed.to_string(),
            e.opened.part.to_string(),
            e.clicked.part.to_string(),
            e.click_to_open
                .percent
                .map(|p| format!("{p:.1}"))
                .unwrap_or_default(),
            e.unsubscribed.to_string(),
            e.bounced.to_string(),
            e.complained.to_string(),
            e.next_stage.map(|n| n.part.to_string()).unwrap_or_default(),
            e.next_stage
                .and_then(|n| n.percent)
                .map(|p| format!("{p:.1}"))
                .unwrap_or_default(),
            e.links
                .iter()
                .map(|(k, l)| format!("{k}={}", l.clicked))
                .collect::<Vec<_>>()
                .join(";"),
            e.links
                .iter()
                .filter_map(|(k, l)| Some(format!("{k}={}", l.next_stage?.part)))
                .collect::<Vec<_>>()
                .join(";"),
        ];
        csv_row(&mut out, &cells);
    }
    out
}

/// A p-value as the A/B table shows it.
fn p_value(p: f64) -> String {
    if p < 0.001 {
        "p < 0.001".into()
    } else {
        format!("p = {p:.3}")
    }
}

/// The A/B report as a table: each split step, its variants, its verdict.
pub fn ab_table(r: &super::ab::AbReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} — A/B tests, {} from {} to {} ({})",
        r.funnel,
        match r.cohort {
            Cohort::Entry => "runs that entered the funnel (and what they did since)",
            Cohort::Calendar => "variants sent (and what followed in the period)",
        },
        local(r.from, &r.tz),
        local(r.to, &r.tz),
        r.tz
    );
    if r.splits.is_empty() {
        let _ = writeln!(out, "\nno `split` step in this funnel");
    }
    for s in &r.splits {
        let gone = if s.removed {
            " (removed from the file)"
        } else {
            ""
        };
        let _ = writeln!(out, "\nstage {}, step {}{gone}", s.stage, s.step);
        let header = [
            "variant",
            "sends",
            "runs",
            "clicked",
            "next stage",
            "p vs first",
            "revenue per run",
            "chance best",
        ];
        let rows: Vec<Vec<String>> = s
            .variants
            .iter()
            .map(|v| {
                vec![
                    if v.removed && !s.removed {
                        format!("{} (removed)", v.template)
                    } else {
                        v.template.clone()
                    },
                    v.sends.to_string(),
                    v.leads.to_string(),
                    rate(&v.clicked),
                    rate(&v.converted),
                    v.p_value.map_or_else(|| "—".into(), p_value),
                    if v.revenue_per_lead.is_empty() {
                        "—".into()
                    } else {
                        in_currencies(v.revenue_per_lead.iter().map(|(c, x)| (c, x)), "; ")
                    },
                    v.p_best
                        .map(|p| format!("{:.0}%", p * 100.0))
                        .unwrap_or_else(|| "—".into()),
                ]
            })
            .collect();
        out.push_str(&grid(&header, &rows));
        if let Some(p) = s.p_value {
            let _ = writeln!(out, "test: {}: {}", s.test, p_value(p));
        }
        let _ = writeln!(out, "verdict: {}", s.verdict);
    }
    out
}

/// The attribution report as a table.
pub fn attribution_table(r: &super::attribution::AttributionReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} — attribution ({}, touches up to {} days before each purchase), purchases from {} to {} ({})",
        r.funnel,
        r.model.name(),
        r.lookback_days,
        local(r.from, &r.tz),
        local(r.to, &r.tz),
        r.tz
    );
    let _ = writeln!(
        out,
        "{} purchases, {} without a touch in the lookback",
        r.purchases, r.unattributed
    );
    let header = ["channel", "source", "campaign", "conversions", "revenue"];
    let rows: Vec<Vec<String>> = r
        .credits
        .iter()
        .map(|c| {
            vec![
                c.channel.clone(),
                c.source.clone().unwrap_or_else(|| "—".into()),
                c.campaign.clone().unwrap_or_else(|| "—".into()),
                format!("{:.2}", c.conversions),
                in_currencies(&c.revenue, "; "),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&grid(&header, &rows));
    let header = ["channel", "conversions", "share", "revenue"];
    let rows: Vec<Vec<String>> = r
        .channels
        .iter()
        .map(|c| {
            vec![
                c.channel.clone(),
                format!("{:.2}", c.conversions),
                format!("{:.1}%", c.share),
                amounts(&c.revenue),
            ]
        })
        .collect();
    out.push_str("\nper channel\n");
    out.push_str(&grid(&header, &rows));
    let _ = writeln!(out, "revenue credited: {}", amounts(&r.revenue));
    out
}

/// Amounts per currency, `12.50 EUR; 3.00 USD`, or `—`.
fn amounts(m: &std::collections::BTreeMap<String, f64>) -> String {
    if m.is_empty() {
        return "—".into();
    }
    in_currencies(m, "; ")
}

/// The attribution report as CSV: one row per channel, source and campaign.
pub fn attribution_csv(r: &super::attribution::AttributionReport) -> String {
    let mut out = String::from(
        "funnel,model,lookback_days,from,to,channel,source,campaign,conversions,revenue\n",
    );
    for c in &r.credits {
        let cells = [
            r.funnel.clone(),
            r.model.name().to_string(),
            r.lookback_days.to_string(),
            r.from.to_rfc3339(),
            r.to.to_rfc3339(),
            c.channel.clone(),
            c.source.clone().unwrap_or_default(),
            c.campaign.clone().unwrap_or_default(),
            format!("{:.4}", c.conversions),
            in_currencies(&c.revenue, ";"),
        ];
        csv_row(&mut out, &cells);
    }
    out
}

/// The A/B report as CSV: one row per variant of each split step.
pub fn ab_csv(r: &super::ab::AbReport) -> String {
    let mut out = String::from(
        "funnel,cohort,from,to,stage,step,variant,sends,runs,clicked,converted,converted_percent,\
         p_vs_first,revenue_per_run,chance_best,test,test_p,removed\n",
    );
    let num = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_default();
    for s in &r.splits {
        for v in &s.variants {
            let cells = [
                r.funnel.clone(),
                format!("{:?}", r.cohort).to_lowercase(),
                r.from.to_rfc3339(),
                r.to.to_rfc3339(),
                s.stage.clone(),
                s.step.clone(),
                v.template.clone(),
                v.sends.to_string(),
                v.leads.to_string(),
                v.clicked.part.to_string(),
                v.converted.part.to_string(),
                v.converted
                    .percent
                    .map(|p| format!("{p:.1}"))
                    .unwrap_or_default(),
                num(v.p_value),
                in_currencies(v.revenue_per_lead.iter().map(|(c, x)| (c, x)), ";"),
                num(v.p_best),
                s.test.clone(),
                num(s.p_value),
                (s.removed || v.removed).to_string(),
            ];
            csv_row(&mut out, &cells);
        }
    }
    out
}

/// Rows under a header, each column as wide as its widest cell.
fn grid(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A report's table without its first two lines (the funnel's name and period).
fn body(t: &str) -> &str {
    t.split_once('\n')
        .and_then(|(_, rest)| rest.split_once('\n'))
        .map_or(t, |(_, rest)| rest)
}

/// The funnel report as tables: the whole period, then each period of `--by` as a row per
/// period, then each slice.
pub fn funnel_table(a: &FunnelAnswer) -> String {
    let mut out = table(&a.report);
    if let Some(w) = a.window_seconds {
        let _ = writeln!(
            out,
            "\nconversion window: what a lead did within {} of entering the funnel",
            span(Some(w))
        );
    }
    if let Some(by) = a.by {
        let by = match by {
            By::Day => "day",
            By::Week => "week",
            By::Month => "month",
        };
        let _ = writeln!(out, "\n── by {by} ──");
        let mut header = vec!["period".to_string(), "entered".to_string()];
        header.extend(a.report.stages.iter().map(|s| s.stage.clone()));
        header.push("converted".into());
        header.push("revenue".into());
        let rows: Vec<Vec<String>> = a
            .periods
            .iter()
            .flatten()
            .map(|p| {
                let mut row = vec![
                    local(p.from, &p.tz)[..10].to_string(),
                    p.entered.to_string(),
                ];
                // Each stage of the whole report's, found by name (a removed stage may have
                // figures in some periods only): its runs in, and from entry (entry cohort).
                row.extend(a.report.stages.iter().map(|whole| {
                    match p.stages.iter().find(|s| s.stage == whole.stage) {
                        Some(s) => match s.from_entry.and_then(|r| r.percent) {
                            Some(pct) if s.leads_in > 0 => format!("{} ({pct:.1}%)", s.leads_in),
                            _ => s.leads_in.to_string(),
                        },
                        None => "0".into(),
                    }
                }));
                row.push(rate(&p.converted));
                let revenue: Vec<String> = p
                    .revenue
                    .iter()
                    .map(|r| format!("{:.2} {}", r.total, r.currency))
                    .collect();
                row.push(if revenue.is_empty() {
                    "—".into()
                } else {
                    revenue.join("; ")
                });
                row
            })
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        out.push_str(&grid(&header, &rows));
    }
    for s in a.slices.iter().flatten() {
        let _ = write!(out, "\n── {} = {} ──\n", s.key.name(), s.value);
        out.push_str(body(&table(&s.report)));
    }
    out
}

/// The funnel report as CSV: one row per stage, first of the whole period, then of each
/// period (`slice_key` = `period`) and each slice; every row holds its own `from` and `to`.
pub fn funnel_csv(a: &FunnelAnswer) -> String {
    let whole = csv(&a.report);
    let (header, rows) = whole.split_once('\n').unwrap_or((&whole, ""));
    let mut out = format!("slice_key,slice_value,{header}\n");
    for line in rows.lines() {
        let _ = writeln!(out, ",,{line}");
    }
    let parts = a
        .periods
        .iter()
        .flatten()
        .map(|p| {
            (
                "period".to_string(),
                local(p.from, &p.tz)[..10].to_string(),
                p,
            )
        })
        .chain(
            a.slices
                .iter()
                .flatten()
                .map(|s| (s.key.name(), s.value.clone(), &s.report)),
        );
    for (key, value, report) in parts {
        for line in csv(report).lines().skip(1) {
            let _ = writeln!(out, "{},{},{line}", csv_cell(&key), csv_cell(&value));
        }
    }
    out
}

fn estimate(e: &Estimate, money: bool) -> String {
    if money {
        format!("{:.2} ({:.2}–{:.2})", e.expected, e.low, e.high)
    } else {
        format!("{:.0} ({:.0}–{:.0})", e.expected, e.low, e.high)
    }
}

/// The forecast as a table: each stage's projected leads and orders, baseline and scenario.
pub fn forecast_table(r: &ForecastReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} — {}", r.funnel, r.name);
    let _ = writeln!(
        out,
        "forecast for the {} days from {} ({}); inflow {:.1} leads/day ({})",
        r.days,
        local(r.from, &r.tz),
        r.tz,
        r.inflow_per_day,
        if r.inflow_source == "given" {
            "given".to_string()
        } else {
            format!(
                "observed: {} entered {} – {}",
                r.observed_entered,
                &local(r.observed_from, &r.tz)[..10],
                &local(r.observed_to, &r.tz)[..10]
            )
        }
    );
    let changes: Vec<String> = r
        .changes
        .iter()
        .map(
            |StageChange {
                 stage: s,
                 change: c,
             }| match c {
                Change::Relative(f) => format!("{s} {:+.0}%", (f - 1.0) * 100.0),
                Change::Absolute(v) => format!("{s} = {:.1}%", v * 100.0),
            },
        )
        .collect();
    let _ = writeln!(
        out,
        "scenario: {}",
        if changes.is_empty() {
            "as observed (no --set)".to_string()
        } else {
            changes.join(", ")
        }
    );
    let header = [
        "stage",
        "in flight",
        "days in stage",
        "conversion now",
        "scenario",
        "reached after",
        "leads: baseline (80%)",
        "scenario (80%)",
        "orders: baseline",
        "scenario",
    ];
    let pct = |p: Option<f64>| p.map_or("—".into(), |p| format!("{p:.1}%"));
    let rows: Vec<Vec<String>> = r
        .stages
        .iter()
        .map(|s| {
            vec![
                s.stage.clone(),
                s.in_flight.to_string(),
                format!("{:.1}d", s.days_in_stage),
                pct(s.conversion.baseline),
                pct(s.conversion.scenario),
                format!("{:.1}d", s.reached_after_days),
                estimate(&s.leads.baseline, false),
                estimate(&s.leads.scenario, false),
                estimate(&s.orders.baseline, false),
                estimate(&s.orders.scenario, false),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&grid(&header, &rows));
    let _ = writeln!(
        out,
        "\nconverted: {} baseline, {} scenario",
        estimate(&r.conversions.baseline, false),
        estimate(&r.conversions.scenario, false)
    );
    for m in &r.revenue {
        let _ = writeln!(
            out,
            "revenue {}: {} baseline, {} scenario",
            m.currency,
            estimate(&m.revenue.baseline, true),
            estimate(&m.revenue.scenario, true)
        );
    }
    let _ = writeln!(out, "\nmethod: {}", r.method);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans_read_like_people_write_them() {
        assert_eq!(super::span(Some(40)), "40s");
        assert_eq!(super::span(Some(720)), "12m");
        assert_eq!(super::span(Some(18_600)), "5h 10m");
        assert_eq!(super::span(Some(273_600)), "3d 4h");
        assert_eq!(super::span(None), "—");
    }
}
