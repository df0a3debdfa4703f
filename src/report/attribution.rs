//! Multi-touch attribution: each purchase's conversion and revenue shared among the lead's
//! touches before it, within a lookback, by one of five models. The figures are summed per
//! channel, source and campaign.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::{ReportError, check_period};
use crate::funnel::Funnel;
use crate::store::ReportRows;
use crate::tally::{Figures, Tally};

pub use crate::tally::{Model, weights};

/// The credit one channel, source and campaign earned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Credit {
    pub channel: String,
    pub source: Option<String>,
    pub campaign: Option<String>,
    /// Conversions (purchases) credited, in fractions.
    pub conversions: f64,
    /// Revenue credited, per currency.
    pub revenue: BTreeMap<String, f64>,
}

/// The attribution report of a funnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttributionReport {
    pub funnel: String,
    pub model: Model,
    /// The time zone its days are in.
    pub tz: String,
    pub lookback_days: i64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Purchases in the period by the funnel's leads.
    pub purchases: u64,
    /// Of those, with no touch in the lookback (credited to nothing).
    pub unattributed: u64,
    pub credits: Vec<Credit>,
    /// The credit summed per channel, most conversions first.
    pub channels: Vec<ChannelTotal>,
    /// All the revenue credited, per currency.
    pub revenue: BTreeMap<String, f64>,
}

/// One channel's credit over all its sources and campaigns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelTotal {
    pub channel: String,
    /// Conversions credited, in fractions.
    pub conversions: f64,
    /// Its share of the attributed purchases, in per cent (to 0.1).
    pub share: f64,
    /// Revenue credited, per currency.
    pub revenue: BTreeMap<String, f64>,
}

/// The attribution report from the counters of a period: the purchases, and each channel,
/// source and campaign's credit under `model` in `lookback` (the counters' changes of the
/// lookbacks up to it, summed), most conversions first (conversions to 0.0001, revenue to the
/// cent).
pub fn attribution_of(
    f: &Funnel,
    fig: &Figures,
    model: Model,
    lookback: Duration,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> AttributionReport {
    use crate::tally::{FUNNEL, Micros, View, metric};
    type Key = (String, Option<String>, Option<String>);
    let mut credits: BTreeMap<Key, (i64, BTreeMap<String, i64>)> = BTreeMap::new();
    let days = lookback.num_days();
    // A counter counts in the lookback when the days it was filed under are within it.
    let within = |from: i64| from <= days;
    for (k, sum) in fig.with_prefix(View::Calendar, FUNNEL, metric::CREDIT) {
        let Ok((parts, from)) = serde_json::from_str::<([Option<String>; 5], i64)>(k) else {
            continue;
        };
        let [Some(name), Some(channel), source, campaign, currency] = parts else {
            continue;
        };
        if name != model.name() || !within(from) {
            continue;
        }
        let c = credits.entry((channel, source, campaign)).or_default();
        match currency {
            None => c.0 += sum.total.0,
            Some(cur) => *c.1.entry(cur).or_default() += sum.total.0,
        }
    }
    let round = |x: i64, by: f64| (Micros(x).units() * by).round() / by;
    let mut credits: Vec<Credit> = credits
        .into_iter()
        .map(
            |((channel, source, campaign), (conversions, revenue))| Credit {
                channel,
                source,
                campaign,
                conversions: round(conversions, 10_000.0),
                revenue: revenue
                    .into_iter()
                    .map(|(c, v)| (c, round(v, 100.0)))
                    .collect(),
            },
        )
        .collect();
    credits.sort_by(|a, b| b.conversions.total_cmp(&a.conversions));
    let count = |m: &str| u64::try_from(fig.n(View::Calendar, FUNNEL, m)).unwrap_or(0);
    let unattributed: i64 = fig
        .with_prefix(View::Calendar, FUNNEL, metric::UNATTRIBUTED)
        .filter(|(from, _)| from.parse().is_ok_and(within))
        .map(|(_, s)| s.n)
        .sum();
    let unattributed = u64::try_from(unattributed).unwrap_or(0);
    AttributionReport {
        funnel: f.id.value.to_string(),
        model,
        tz: "UTC".into(),
        lookback_days: days,
        from,
        to,
        purchases: count(metric::PURCHASES),
        unattributed,
        channels: channels(
            &credits,
            count(metric::PURCHASES).saturating_sub(unattributed),
        ),
        revenue: credits.iter().fold(BTreeMap::new(), |mut total, c| {
            for (cur, x) in &c.revenue {
                *total.entry(cur.clone()).or_default() += x;
            }
            total
        }),
        credits,
    }
}

/// The credits summed per channel, with each channel's share of the `attributed` purchases.
fn channels(credits: &[Credit], attributed: u64) -> Vec<ChannelTotal> {
    let mut by: BTreeMap<&str, (f64, BTreeMap<String, f64>)> = BTreeMap::new();
    for c in credits {
        let e = by.entry(&c.channel).or_default();
        e.0 += c.conversions;
        for (cur, x) in &c.revenue {
            *e.1.entry(cur.clone()).or_default() += x;
        }
    }
    let round = |x: f64, by: f64| (x * by).round() / by;
    let mut out: Vec<ChannelTotal> = by
        .into_iter()
        .map(|(channel, (conversions, revenue))| ChannelTotal {
            channel: channel.to_string(),
            conversions: round(conversions, 10_000.0),
            share: if attributed > 0 {
                round(conversions * 100.0 / attributed as f64, 10.0)
            } else {
                0.0
            },
            revenue: revenue
                .into_iter()
                .map(|(c, x)| (c, round(x, 100.0)))
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| b.conversions.total_cmp(&a.conversions));
    out
}

/// Attribution of the purchases the funnel's leads made in `[from, to)`, after they entered
/// it, to their touches in the `lookback` before each purchase, from the stored rows.
pub fn attribution_report(
    f: &Funnel,
    rows: &ReportRows,
    model: Model,
    lookback: Duration,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<AttributionReport, ReportError> {
    check_period(from, to)?;
    let mut tally = credit_tally(from, to, now);
    credit(rows, &mut tally);
    let fig = crate::tally::figures(&tally)
        .remove(&(0, crate::tally::ALL.to_string()))
        .unwrap_or_default();
    Ok(attribution_of(f, &fig, model, lookback, from, to))
}

/// A tally of the credit of the orders made in `[from, to)`, up to `now`.
pub fn credit_tally(from: DateTime<Utc>, to: DateTime<Utc>, now: DateTime<Utc>) -> Tally {
    let until = now + Duration::milliseconds(1);
    Tally::in_periods(vec![(from, to.min(until))], false)
}

/// Shares the rows' orders among their leads' touches in every lookback, into `tally`.
pub fn credit(rows: &ReportRows, tally: &mut Tally) {
    let attribution = crate::store::Replay {
        attribution: true,
        ..crate::store::Replay::default()
    };
    rows.replay(tally, attribution, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    /// A purchase after four touches, 21, 14, 7 and 0 days before it. By hand: first and last
    /// give all to one; linear a quarter each; time decay 1/8, 1/4, 1/2, 1 over their sum
    /// 15/8 (so 1/15, 2/15, 4/15, 8/15); position-based 40 %, 10 %, 10 %, 40 %.
    #[test]
    fn each_model_shares_as_worked_out_by_hand() {
        let ages: Vec<Duration> = [21, 14, 7, 0].map(Duration::days).to_vec();
        let w = |m| weights(m, &ages);
        assert!(close(&w(Model::FirstTouch), &[1.0, 0.0, 0.0, 0.0]));
        assert!(close(&w(Model::LastTouch), &[0.0, 0.0, 0.0, 1.0]));
        assert!(close(&w(Model::Linear), &[0.25; 4]));
        assert!(close(
            &w(Model::TimeDecay),
            &[1.0 / 15.0, 2.0 / 15.0, 4.0 / 15.0, 8.0 / 15.0]
        ));
        assert!(close(&w(Model::PositionBased), &[0.4, 0.1, 0.1, 0.4]));
        assert!(close(
            &weights(Model::PositionBased, &ages[..2]),
            &[0.5, 0.5]
        ));
        assert!(close(&weights(Model::TimeDecay, &ages[3..]), &[1.0]));
        assert!(weights(Model::Linear, &[]).is_empty());
        assert!(Model::parse("last").is_ok() && Model::parse("u-shaped").is_err());
    }
}
