//! Multi-touch attribution: each purchase's conversion and revenue shared among the lead's
//! touches before it, within a lookback, by one of five models. The figures are summed per
//! channel, source and campaign.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::{Cohort, ReportError, Window};
use crate::funnel::Funnel;
use crate::store::{ReportRows, TouchRow};

/// How a purchase's credit is shared among the touches before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// All to the first touch.
    #[serde(rename = "first")]
    FirstTouch,
    /// All to the last touch.
    #[serde(rename = "last")]
    LastTouch,
    /// Equal shares.
    Linear,
    /// Halved for every 7 days a touch came before the purchase.
    TimeDecay,
    /// 40 % to the first, 40 % to the last, 20 % shared by those between.
    #[serde(rename = "position")]
    PositionBased,
}

impl Model {
    pub const ALL: [(&'static str, Model); 5] = [
        ("first", Model::FirstTouch),
        ("last", Model::LastTouch),
        ("linear", Model::Linear),
        ("time_decay", Model::TimeDecay),
        ("position", Model::PositionBased),
    ];

    /// The model's name on the command line.
    pub fn name(self) -> &'static str {
        Model::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .unwrap_or("linear")
    }

    pub fn parse(text: &str) -> Result<Model, String> {
        Model::ALL
            .iter()
            .find(|(n, _)| *n == text)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                format!("no attribution model \"{text}\": use first, last, linear, time_decay or position")
            })
    }
}

/// Each touch's share of one conversion, in order; the shares sum to 1. `ages` are how long
/// before the purchase each touch came, oldest touch first.
pub fn weights(model: Model, ages: &[Duration]) -> Vec<f64> {
    let n = ages.len();
    if n == 0 {
        return Vec::new();
    }
    let raw: Vec<f64> = match model {
        Model::FirstTouch => (0..n).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect(),
        Model::LastTouch => (0..n).map(|i| if i == n - 1 { 1.0 } else { 0.0 }).collect(),
        Model::Linear => vec![1.0; n],
        Model::TimeDecay => {
            let half_life = Duration::days(7).num_seconds() as f64;
            ages.iter()
                .map(|a| 0.5f64.powf(a.num_seconds().max(0) as f64 / half_life))
                .collect()
        }
        Model::PositionBased => match n {
            1 => vec![1.0],
            2 => vec![0.5, 0.5],
            _ => (0..n)
                .map(|i| {
                    if i == 0 || i == n - 1 {
                        0.4
                    } else {
                        0.2 / (n - 2) as f64
                    }
                })
                .collect(),
        },
    };
    let total: f64 = raw.iter().sum();
    raw.into_iter().map(|w| w / total).collect()
}

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
    pub lookback_days: i64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Purchases in the period by the funnel's leads.
    pub purchases: u64,
    /// Of those, with no touch in the lookback (credited to nothing).
    pub unattributed: u64,
    pub credits: Vec<Credit>,
}

/// Attribution of the purchases the funnel's leads made in `[from, to)` to their touches in
/// the `lookback` before each purchase.
pub fn attribution_report(
    f: &Funnel,
    rows: &ReportRows,
    model: Model,
    lookback: Duration,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<AttributionReport, ReportError> {
    let w = Window::new(Cohort::Calendar, from, to, now)?;
    let mut by_lead: BTreeMap<_, Vec<&TouchRow>> = BTreeMap::new();
    for t in &rows.touches {
        by_lead.entry(t.lead).or_default().push(t);
    }
    type Key = (String, Option<String>, Option<String>);
    let mut credits: BTreeMap<Key, (f64, BTreeMap<String, f64>)> = BTreeMap::new();
    let (mut purchases, mut unattributed) = (0, 0);
    for p in rows.purchases.iter().filter(|p| w.within(p.at)) {
        purchases += 1;
        let before: Vec<&&TouchRow> = by_lead
            .get(&p.lead)
            .map(|ts| {
                ts.iter()
                    .filter(|t| t.at <= p.at && p.at - t.at <= lookback)
                    .collect()
            })
            .unwrap_or_default();
        if before.is_empty() {
            unattributed += 1;
            continue;
        }
        let ages: Vec<Duration> = before.iter().map(|t| p.at - t.at).collect();
        for (t, share) in before.iter().zip(weights(model, &ages)) {
            let key = (t.channel.clone(), t.source.clone(), t.campaign.clone());
            let c = credits.entry(key).or_default();
            c.0 += share;
            *c.1.entry(p.currency.clone().unwrap_or_else(|| "—".into()))
                .or_default() += share * p.amount.unwrap_or(0.0);
        }
    }
    let mut credits: Vec<Credit> = credits
        .into_iter()
        .map(
            |((channel, source, campaign), (conversions, revenue))| Credit {
                channel,
                source,
                campaign,
                conversions,
                revenue,
            },
        )
        .collect();
    credits.sort_by(|a, b| b.conversions.total_cmp(&a.conversions));
    Ok(AttributionReport {
        funnel: f.id.value.to_string(),
        model,
        lookback_days: lookback.num_days(),
        from,
        to,
        purchases,
        unattributed,
        credits,
    })
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
