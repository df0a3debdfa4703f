//! A/B verdicts for every `split` step: per variant the leads who got it, unique clickers,
//! next-stage conversion and revenue per lead; a two-proportion z-test on conversion (two-sided
//! p-value), the probability that each variant converts better (Beta(1, 1) posteriors, normal
//! approximation), and a verdict in plain words once each variant has a minimum sample.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Cohort, Rate, ReportError, Window, entered_by_stage};
use crate::domain::{EnrollmentId, EventKind, LeadId};
use crate::funnel::{Action, Funnel, Send};
use crate::store::ReportRows;

/// Leads per variant before a verdict is given.
pub const MIN_SAMPLE: u64 = 100;

/// One variant's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variant {
    pub template: String,
    pub leads: u64,
    pub clicked: Rate,
    /// Of its leads, those who went on to the next stage.
    pub converted: Rate,
    /// Revenue of the stage's offer per lead who got the variant, per currency.
    pub revenue_per_lead: Vec<(String, f64)>,
    /// The probability that this variant's true conversion is the highest.
    pub p_best: Option<f64>,
}

/// One `split` step's test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Split {
    pub stage: String,
    pub step: String,
    pub variants: Vec<Variant>,
    /// Two-sided p-value of the two-proportion z-test on conversion (first two variants).
    pub p_value: Option<f64>,
    pub verdict: String,
}

/// The A/B report of a funnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbReport {
    pub funnel: String,
    pub cohort: Cohort,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub splits: Vec<Split>,
}

/// The standard normal distribution function, through `erfc` (Abramowitz and Stegun 7.1.26,
/// absolute error under 1.5e-7).
pub fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-z * z).exp();
    if x >= 0.0 {
        1.0 - erfc / 2.0
    } else {
        erfc / 2.0
    }
}

/// Two-sided p-value of the two-proportion z-test of `x1/n1` against `x2/n2` (pooled).
pub fn two_proportion_p(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<f64> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (x1, n1, x2, n2) = (x1 as f64, n1 as f64, x2 as f64, n2 as f64);
    let p = (x1 + x2) / (n1 + n2);
    let se = (p * (1.0 - p) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        return Some(1.0);
    }
    let z = (x1 / n1 - x2 / n2) / se;
    Some(2.0 * (1.0 - normal_cdf(z.abs())))
}

/// The probability that the first rate's true value exceeds the second's, with Beta(1, 1)
/// priors and the posteriors approximated as normal.
pub fn p_better(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    let post = |x: u64, n: u64| {
        let (a, b) = (x as f64 + 1.0, (n - x) as f64 + 1.0);
        let mean = a / (a + b);
        (mean, a * b / ((a + b).powi(2) * (a + b + 1.0)))
    };
    let ((m1, v1), (m2, v2)) = (post(x1, n1), post(x2, n2));
    normal_cdf((m1 - m2) / (v1 + v2).sqrt())
}

/// The A/B report of `f` over `[from, to)` (entry cohort: the period's runs; calendar: the
/// variants sent in it).
pub fn ab_report(
    f: &Funnel,
    rows: &ReportRows,
    cohort: Cohort,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<AbReport, ReportError> {
    let w = Window::new(cohort, from, to, now)?;
    let cohort_runs = w.cohort_runs(rows);
    let entered = entered_by_stage(rows);
    let mut splits = Vec::new();
    for (i, stage) in f.stages.iter().enumerate() {
        let next = f.stages.get(i + 1).map(|s| s.id.value.as_str());
        for step in &stage.steps {
            let Action::Send(Send::Split(variants)) = &step.action else {
                continue;
            };
            let mut figures = Vec::new();
            for v in variants {
                let sent: Vec<_> = rows
                    .emails
                    .iter()
                    .filter(|e| {
                        e.template == v.value.as_str()
                            && e.stage.as_deref() == Some(stage.id.value.as_str())
                            && w.counts_email(e, &cohort_runs)
                    })
                    .collect();
                let leads: BTreeSet<LeadId> = sent.iter().map(|e| e.lead).collect();
                let runs: BTreeSet<EnrollmentId> =
                    sent.iter().filter_map(|e| e.enrollment).collect();
                let clicked: BTreeSet<LeadId> = rows
                    .tracking
                    .iter()
                    .filter(|t| {
                        t.kind == EventKind::Click
                            && t.template.as_deref() == Some(v.value.as_str())
                            && leads.contains(&t.lead)
                    })
                    .map(|t| t.lead)
                    .collect();
                let converted = match next.and_then(|n| entered.get(n)) {
                    Some(there) => runs.intersection(there).count() as u64,
                    None => 0,
                };
                let first_send: HashMap<LeadId, DateTime<Utc>> =
                    sent.iter().map(|e| (e.lead, e.created_at)).collect();
                let mut revenue: std::collections::BTreeMap<String, crate::domain::Money> =
                    Default::default();
                if let Some(offer) = &stage.offer {
                    for p in &rows.purchases {
                        if p.product.as_deref() == Some(offer.value.as_str())
                            && first_send.get(&p.lead).is_some_and(|at| p.at >= *at)
                            && let Some(a) = p.amount
                        {
                            revenue
                                .entry(p.currency.clone().unwrap_or_else(|| "—".into()))
                                .or_default()
                                .0 += a.0;
                        }
                    }
                }
                let n = runs.len() as u64;
                figures.push(Variant {
                    template: v.value.to_string(),
                    leads: n,
                    clicked: Rate::of(clicked.len() as u64, leads.len() as u64),
                    converted: Rate::of(converted, n),
                    revenue_per_lead: revenue
                        .into_iter()
                        .map(|(c, t)| (c, if n > 0 { t.units() / n as f64 } else { 0.0 }))
                        .collect(),
                    p_best: None,
                });
            }
            let (p_value, verdict) = verdict(&mut figures);
            splits.push(Split {
                stage: stage.id.value.to_string(),
                step: step.id.to_string(),
                variants: figures,
                p_value,
                verdict,
            });
        }
    }
    Ok(AbReport {
        funnel: f.id.value.to_string(),
        cohort,
        from,
        to,
        splits,
    })
}

/// The p-value of the first two variants and the verdict in words; fills in `p_best`.
fn verdict(vs: &mut [Variant]) -> (Option<f64>, String) {
    let [a, b] = match vs {
        [a, b, ..] => [a.clone(), b.clone()],
        _ => return (None, "a split needs two variants".into()),
    };
    let (xa, na, xb, nb) = (a.converted.part, a.leads, b.converted.part, b.leads);
    let p = two_proportion_p(xa, na, xb, nb);
    if na > 0 && nb > 0 {
        let pa = p_better(xa, na, xb, nb);
        vs[0].p_best = Some((pa * 1000.0).round() / 1000.0);
        vs[1].p_best = Some(((1.0 - pa) * 1000.0).round() / 1000.0);
    }
    if na < MIN_SAMPLE || nb < MIN_SAMPLE {
        return (
            p,
            format!(
                "not enough data yet: {na} and {nb} leads; a verdict needs {MIN_SAMPLE} per variant"
            ),
        );
    }
    let (win, lose, p_win) = if vs[0].p_best >= vs[1].p_best {
        (&a, &b, vs[0].p_best)
    } else {
        (&b, &a, vs[1].p_best)
    };
    let pct = |r: &Rate| r.percent.unwrap_or(0.0);
    let sure = p_win.unwrap_or(0.5) * 100.0;
    let words = format!(
        "{} converts {:.1}% vs {:.1}% for {}; {:.0}% likely better; {} and {} leads",
        win.template,
        pct(&win.converted),
        pct(&lose.converted),
        lose.template,
        sure,
        na,
        nb
    );
    let shown = |p: f64| {
        if p < 0.001 {
            "p < 0.001".to_string()
        } else {
            format!("p = {p:.3}")
        }
    };
    match p {
        Some(p) if p < 0.05 => (Some(p), format!("{words}; significant ({})", shown(p))),
        Some(p) => (
            Some(p),
            format!("{words}; not significant yet ({})", shown(p)),
        ),
        None => (None, words),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_match_their_references() {
        // References from Python 3.11's math.erfc: 0.5 * math.erfc(-x / math.sqrt(2)).
        assert!((normal_cdf(1.96) - 0.975_002_104_851_780).abs() < 2e-7);
        assert!((normal_cdf(-1.0) - 0.158_655_253_931_457).abs() < 2e-7);
        // 41/1000 against 29/1000: pooled p = 0.035, se = sqrt(p(1 - p)(2/1000)), z = 1.46005,
        // two-sided p = 0.144 276 (Python: 2 * (1 - 0.5 * math.erfc(-z / math.sqrt(2)))).
        let p = two_proportion_p(41, 1000, 29, 1000).unwrap();
        assert!((p - 0.144_276).abs() < 1e-5, "{p}");
        // 60/1000 against 30/1000: z = 3.23592, p = 0.001 212 5 (the same way).
        let p = two_proportion_p(60, 1000, 30, 1000).unwrap();
        assert!((p - 0.001_212_5).abs() < 1e-5, "{p}");
        assert!(p_better(60, 1000, 30, 1000) > 0.99);
        assert!((p_better(30, 1000, 30, 1000) - 0.5).abs() < 1e-9);
        assert_eq!(two_proportion_p(0, 0, 1, 10), None);
    }
}
