//! A/B verdicts for every `split` step. The unit is the run that got a variant: per variant
//! its sends, its runs, the runs whose lead clicked it after it was sent, the runs that went
//! on to the next stage after it was sent, and revenue per run; each variant's conversion
//! against the first's (two-proportion z-test, two-sided p-value), a chi-square test across
//! all the variants, the probability that each converts best (Beta(1, 1) posteriors, drawn
//! with a fixed seed), and a verdict in plain words once every variant has a minimum sample.
//! Entry cohort: the period's runs, and what they did after each send up to now. Calendar
//! view: the variants sent in the period, and the clicks, conversions and orders made in it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Cohort, Rate, ReportError, Window};
use crate::domain::{EnrollmentId, EventKind, LeadId, Money};
use crate::funnel::{Action, Funnel, Send};
use crate::store::ReportRows;

/// Runs per variant before a verdict is given (and the chance of being best is shown).
pub const MIN_SAMPLE: u64 = 100;

/// Draws of the variants' posteriors behind the chance that each is best.
const DRAWS: usize = 20_000;

/// One variant's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variant {
    pub template: String,
    /// A variant with sends that the split no longer has (removed or renamed in the file):
    /// shown, and left out of the test and the verdict.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// Its emails queued (a run that loops back to the step gets it again).
    pub sends: u64,
    /// Runs that got it: the unit every rate below divides by.
    pub leads: u64,
    /// Of them, runs whose lead clicked a link in it after it was sent.
    pub clicked: Rate,
    /// Of them, runs that entered the next stage after it was sent.
    pub converted: Rate,
    /// Revenue of the stage's offer per run that got it, per currency: orders its lead made
    /// after it was sent.
    pub revenue_per_lead: Vec<(String, f64)>,
    /// Two-sided p-value of its conversion against the first variant's (two-proportion
    /// z-test); none for the first.
    pub p_value: Option<f64>,
    /// The probability that its true conversion is the highest, once every variant has
    /// [`MIN_SAMPLE`] runs.
    pub p_best: Option<f64>,
}

/// One `split` step's test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Split {
    pub stage: String,
    pub step: String,
    /// A split step with sends that the funnel's file no longer has.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    pub variants: Vec<Variant>,
    /// The test across all the variants with runs: `chi-square, N variants, N−1 df` (for two
    /// variants the same as the two-proportion z-test).
    pub test: String,
    /// Its p-value.
    pub p_value: Option<f64>,
    pub verdict: String,
}

/// The A/B report of a funnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbReport {
    pub funnel: String,
    pub cohort: Cohort,
    /// The time zone its days are in.
    pub tz: String,
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

/// The chance that a chi-square variable with `df` degrees of freedom exceeds `x`: the
/// closed forms for one and two degrees, and `Q(x; k + 2) = Q(x; k) + (x/2)^(k/2) e^(−x/2) /
/// Γ(k/2 + 1)` up from there.
pub fn chi_square_sf(x: f64, df: u32) -> f64 {
    if df == 0 || x <= 0.0 {
        return 1.0;
    }
    let e = (-x / 2.0).exp();
    let (mut q, mut term, mut k) = if df.is_multiple_of(2) {
        (e, x / 2.0 * e, 2)
    } else {
        let gamma_3_2 = std::f64::consts::PI.sqrt() / 2.0;
        (
            2.0 * (1.0 - normal_cdf(x.sqrt())),
            (x / 2.0).sqrt() * e / gamma_3_2,
            1,
        )
    };
    while k < df {
        q += term;
        term *= x / f64::from(k + 2);
        k += 2;
    }
    q.clamp(0.0, 1.0)
}

/// The chi-square test of independence of conversion across variants (`(converted, runs)`
/// each): its p-value, with `k − 1` degrees of freedom; 1 when nothing or everything
/// converted; `None` with fewer than two variants.
pub fn chi_square_p(vs: &[(u64, u64)]) -> Option<f64> {
    if vs.len() < 2 {
        return None;
    }
    let (x, n): (u64, u64) = vs.iter().fold((0, 0), |(a, b), (x, n)| (a + x, b + n));
    if x == 0 || x == n {
        return Some(1.0);
    }
    let rate = x as f64 / n as f64;
    let mut chi = 0.0;
    for (xi, ni) in vs {
        let (e1, e0) = (*ni as f64 * rate, *ni as f64 * (1.0 - rate));
        chi += (*xi as f64 - e1).powi(2) / e1 + ((ni - xi) as f64 - e0).powi(2) / e0;
    }
    Some(chi_square_sf(chi, vs.len() as u32 - 1))
}

/// The probability that each rate's true value is the highest, with Beta(1, 1) priors, from
/// [`DRAWS`] draws of the posteriors with a fixed seed (the same data give the same answer).
pub fn p_best(vs: &[(u64, u64)]) -> Vec<f64> {
    use rand::SeedableRng;
    use rand_distr::{Beta, Distribution};
    let betas: Vec<Option<Beta<f64>>> = vs
        .iter()
        .map(|(x, n)| Beta::new(*x as f64 + 1.0, (n - x) as f64 + 1.0).ok())
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0ab);
    let mut wins = vec![0u64; vs.len()];
    for _ in 0..DRAWS {
        let best = betas
            .iter()
            .enumerate()
            .filter_map(|(i, b)| Some((i, b.as_ref()?.sample(&mut rng))))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((i, _)) = best {
            wins[i] += 1;
        }
    }
    wins.iter().map(|w| *w as f64 / DRAWS as f64).collect()
}

/// The A/B report of `f` over `[from, to)` (entry cohort: the period's runs, and what they did
/// after each send up to now; calendar: the variants sent in the period, and the clicks,
/// conversions and orders made in it).
pub fn ab_report(
    f: &Funnel,
    rows: &ReportRows,
    cohort: Cohort,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<AbReport, ReportError> {
    let mut fold = AbFold::new(cohort, from, to, now)?;
    fold.add(f, rows);
    Ok(fold.finish(f))
}

/// What one variant's sends added up to (sums over leads, so ranges of leads add up).
#[derive(Debug, Clone, Default)]
struct Sums {
    sends: u64,
    runs: u64,
    clicked: u64,
    converted: u64,
    revenue: BTreeMap<String, Money>,
}

/// (stage, step, template): one variant of one split step.
type Key = (String, String, String);

/// The A/B report counted from rows one range of leads at a time: everything it counts of a
/// run (its sends, clicks, next-stage entry, its lead's orders) is its own lead's.
#[derive(Debug, Clone)]
pub struct AbFold {
    w: Window,
    sums: BTreeMap<Key, Sums>,
    /// The templates each (stage, step) sent, to find the variants that left the file.
    sent_by: BTreeMap<(String, String), BTreeSet<String>>,
}

impl AbFold {
    pub fn new(
        cohort: Cohort,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<AbFold, ReportError> {
        Ok(AbFold {
            w: Window::new(cohort, from, to, now)?,
            sums: BTreeMap::new(),
            sent_by: BTreeMap::new(),
        })
    }

    /// Counts one range of leads' rows.
    pub fn add(&mut self, f: &Funnel, rows: &ReportRows) {
        let w = &self.w;
        let cohort_runs = w.cohort_runs(rows);
        // What happened after a send counts up to now (entry) or in the period (calendar).
        let counts = |t: DateTime<Utc>| match w.cohort {
            Cohort::Entry => t <= w.now,
            Cohort::Calendar => w.within(t),
        };
        let mut visits: HashMap<(EnrollmentId, &str), Vec<DateTime<Utc>>> = HashMap::new();
        for v in &rows.visits {
            visits
                .entry((v.enrollment, v.stage.as_str()))
                .or_default()
                .push(v.entered_at);
        }
        for e in &rows.emails {
            if let (Some(stage), Some(step)) = (e.stage.as_deref(), e.step.as_deref()) {
                let templates = self
                    .sent_by
                    .entry((stage.to_string(), step.to_string()))
                    .or_default();
                if !templates.contains(&e.template) {
                    templates.insert(e.template.clone());
                }
            }
        }
        // The variants to count: the file's splits', and whatever steps the file no longer has
        // sent (a step of the file that is not a split is no test).
        let mut keys: BTreeSet<Key> = BTreeSet::new();
        for (stage, step, variants) in splits_of(f) {
            for v in variants {
                keys.insert((stage.to_string(), step.clone(), v.to_string()));
            }
        }
        for ((stage, step), templates) in &self.sent_by {
            let known = f
                .stage(stage)
                .is_some_and(|s| s.steps.iter().any(|x| x.id.to_string() == *step));
            let split = keys.iter().any(|(a, b, _)| a == stage && b == step);
            if split || !known {
                for t in templates {
                    keys.insert((stage.clone(), step.clone(), t.clone()));
                }
            }
        }
        for key in keys {
            let (stage, step, template) = (&key.0, &key.1, &key.2);
            let i = f.stages.iter().position(|s| s.id.value.as_str() == stage);
            let next = i
                .and_then(|i| f.stages.get(i + 1))
                .map(|s| s.id.value.as_str());
            let offer = i
                .and_then(|i| f.stages[i].offer.as_ref())
                .map(|o| o.value.as_str());
            let sent: Vec<_> = rows
                .emails
                .iter()
                .filter(|e| {
                    e.template == *template
                        && e.stage.as_deref() == Some(stage.as_str())
                        && e.step.as_deref().is_none_or(|s| s == step)
                        && w.counts_email(e, &cohort_runs)
                })
                .collect();
            // Each run with its lead and the first time it was sent the variant.
            let mut first: BTreeMap<EnrollmentId, (LeadId, DateTime<Utc>)> = BTreeMap::new();
            for e in &sent {
                if let Some(run) = e.enrollment {
                    let f = first.entry(run).or_insert((e.lead, e.created_at));
                    f.1 = f.1.min(e.created_at);
                }
            }
            // A lead's runs that got it, by send time: what a click or an order of the lead
            // is about (the latest sent by then).
            let mut of_lead: HashMap<LeadId, Vec<(DateTime<Utc>, EnrollmentId)>> = HashMap::new();
            for (run, (lead, at)) in &first {
                of_lead.entry(*lead).or_default().push((*at, *run));
            }
            for runs in of_lead.values_mut() {
                runs.sort();
            }
            let run_at = |lead: LeadId, t: DateTime<Utc>| {
                of_lead
                    .get(&lead)?
                    .iter()
                    .rev()
                    .find(|(at, _)| *at <= t)
                    .map(|(_, r)| *r)
            };
            let by_id: HashMap<i64, Option<EnrollmentId>> =
                sent.iter().map(|e| (e.id, e.enrollment)).collect();
            let mut clicked: BTreeSet<EnrollmentId> = BTreeSet::new();
            for t in &rows.tracking {
                if t.kind != EventKind::Click || !counts(t.at) {
                    continue;
                }
                let run = match t.message {
                    Some(m) => by_id.get(&m).copied().flatten(),
                    None if t.template.as_deref() == Some(template.as_str()) => {
                        run_at(t.lead, t.at)
                    }
                    None => None,
                };
                if let Some(r) = run.filter(|r| first.get(r).is_some_and(|(_, at)| t.at >= *at)) {
                    clicked.insert(r);
                }
            }
            let converted = first
                .iter()
                .filter(|(run, (_, at))| {
                    next.and_then(|n| visits.get(&(**run, n)))
                        .is_some_and(|entries| entries.iter().any(|e| *e > *at && counts(*e)))
                })
                .count() as u64;
            let sums = self.sums.entry(key.clone()).or_default();
            if let Some(offer) = offer {
                for p in &rows.purchases {
                    if p.product.as_deref() == Some(offer)
                        && counts(p.at)
                        && run_at(p.lead, p.at).is_some()
                        && let Some(a) = p.amount
                    {
                        let currency = p.currency.clone().unwrap_or_else(|| "—".into());
                        sums.revenue.entry(currency).or_default().0 += a.0;
                    }
                }
            }
            sums.sends += sent.len() as u64;
            sums.runs += first.len() as u64;
            sums.clicked += clicked.len() as u64;
            sums.converted += converted;
        }
    }

    /// The report of every range counted.
    pub fn finish(self, f: &Funnel) -> AbReport {
        let variant = |key: Key, removed: bool| {
            let s = self.sums.get(&key).cloned().unwrap_or_default();
            let n = s.runs;
            Variant {
                template: key.2,
                removed,
                sends: s.sends,
                leads: n,
                clicked: Rate::of(s.clicked, n),
                converted: Rate::of(s.converted, n),
                revenue_per_lead: s
                    .revenue
                    .into_iter()
                    .map(|(c, t)| (c, if n > 0 { t.units() / n as f64 } else { 0.0 }))
                    .collect(),
                p_value: None,
                p_best: None,
            }
        };
        let key =
            |stage: &str, step: &str, t: &str| (stage.to_string(), step.to_string(), t.to_string());
        let mut splits = Vec::new();
        let mut current: BTreeSet<(String, String)> = BTreeSet::new();
        for s in &f.stages {
            for step in &s.steps {
                current.insert((s.id.value.to_string(), step.id.to_string()));
            }
        }
        for (stage, step, variants) in splits_of(f) {
            let mut figures: Vec<Variant> = variants
                .iter()
                .map(|v| variant(key(stage, &step, v), false))
                .collect();
            let (test, p_value, verdict) = verdict(&mut figures);
            // Variants sent before and no longer in the split: shown, out of the test.
            let gone = self
                .sent_by
                .get(&(stage.to_string(), step.clone()))
                .into_iter()
                .flatten()
                .filter(|t| !variants.contains(&t.as_str()));
            for t in gone {
                figures.push(variant(key(stage, &step, t), true));
            }
            splits.push(Split {
                stage: stage.to_string(),
                step,
                removed: false,
                variants: figures,
                test,
                p_value,
                verdict,
            });
        }
        // Splits no longer in the file (their step or stage removed or renamed): a step that
        // sent more than one template was one.
        for ((stage, step), templates) in &self.sent_by {
            if templates.len() < 2 || current.contains(&(stage.clone(), step.clone())) {
                continue;
            }
            let mut figures: Vec<Variant> = templates
                .iter()
                .map(|t| variant(key(stage, step, t), true))
                .collect();
            let (test, p_value, verdict) = verdict(&mut figures);
            splits.push(Split {
                stage: stage.clone(),
                step: step.clone(),
                removed: true,
                variants: figures,
                test,
                p_value,
                verdict: format!("removed from the funnel's file; as it stood: {verdict}"),
            });
        }
        AbReport {
            funnel: f.id.value.to_string(),
            cohort: self.w.cohort,
            tz: "UTC".into(),
            from: self.w.from,
            to: self.w.to,
            splits,
        }
    }
}

/// The funnel's split steps: (stage, step id, variants).
fn splits_of(f: &Funnel) -> Vec<(&str, String, Vec<&str>)> {
    let mut out = Vec::new();
    for stage in &f.stages {
        for step in &stage.steps {
            if let Action::Send(Send::Split(variants)) = &step.action {
                out.push((
                    stage.id.value.as_str(),
                    step.id.to_string(),
                    variants.iter().map(|v| v.value.as_str()).collect(),
                ));
            }
        }
    }
    out
}

/// The test across the variants, its p-value and the verdict in words; fills in each
/// variant's p-value against the first and, once every variant has [`MIN_SAMPLE`] runs, its
/// chance of being best.
fn verdict(vs: &mut [Variant]) -> (String, Option<f64>, String) {
    if vs.len() < 2 {
        return (String::new(), None, "a split needs two variants".into());
    }
    let (x0, n0) = (vs[0].converted.part, vs[0].leads);
    for v in vs.iter_mut().skip(1) {
        v.p_value = two_proportion_p(v.converted.part, v.leads, x0, n0);
    }
    let with_runs: Vec<(u64, u64)> = vs
        .iter()
        .filter(|v| v.leads > 0)
        .map(|v| (v.converted.part, v.leads))
        .collect();
    let test = format!(
        "chi-square across {} variants, {} df",
        with_runs.len(),
        with_runs.len().saturating_sub(1)
    );
    let p = chi_square_p(&with_runs);
    let sizes: Vec<String> = vs.iter().map(|v| v.leads.to_string()).collect();
    if vs.iter().any(|v| v.leads < MIN_SAMPLE) {
        return (
            test,
            p,
            format!(
                "not enough data yet: {} runs; a verdict needs {MIN_SAMPLE} per variant",
                sizes.join(", ")
            ),
        );
    }
    let all: Vec<(u64, u64)> = vs.iter().map(|v| (v.converted.part, v.leads)).collect();
    for (v, b) in vs.iter_mut().zip(p_best(&all)) {
        v.p_best = Some((b * 1000.0).round() / 1000.0);
    }
    let best = vs
        .iter()
        .max_by(|a, b| a.p_best.unwrap_or(0.0).total_cmp(&b.p_best.unwrap_or(0.0)))
        .cloned()
        .unwrap_or_else(|| vs[0].clone());
    let pct = |r: &Rate| r.percent.unwrap_or(0.0);
    let others: Vec<String> = vs
        .iter()
        .filter(|v| v.template != best.template)
        .map(|v| format!("{:.1}% for {}", pct(&v.converted), v.template))
        .collect();
    let words = format!(
        "{} converts {:.1}% vs {}; {:.0}% likely the best; {} runs",
        best.template,
        pct(&best.converted),
        others.join(", "),
        best.p_best.unwrap_or(0.0) * 100.0,
        sizes.join(", ")
    );
    let shown = |p: f64| {
        if p < 0.001 {
            "p < 0.001".to_string()
        } else {
            format!("p = {p:.3}")
        }
    };
    let verdict = match p {
        Some(p) if p < 0.05 => format!("{words}; the difference is significant ({})", shown(p)),
        Some(p) => format!("{words}; not significant yet ({})", shown(p)),
        None => words,
    };
    (test, p, verdict)
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
        // The chi-square test of two variants is the z-test: the same p.
        let chi = chi_square_p(&[(41, 1000), (29, 1000)]).unwrap();
        assert!((chi - 0.144_276).abs() < 1e-5, "{chi}");
        // The 5 % critical values for 1, 2, 3 and 4 degrees of freedom (any table; SciPy's
        // chi2.ppf(0.95, df)).
        for (x, df) in [
            (3.841_458_821, 1),
            (5.991_464_547, 2),
            (7.814_727_903, 3),
            (9.487_729_037, 4),
        ] {
            let q = chi_square_sf(x, df);
            assert!((q - 0.05).abs() < 1e-6, "df {df}: {q}");
        }
        assert_eq!(chi_square_p(&[(0, 10), (0, 12)]), Some(1.0));
        let best = p_best(&[(60, 1000), (30, 1000), (45, 1000)]);
        assert!(best[0] > 0.9 && best[1] < 0.01, "{best:?}");
        assert!((best.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(
            best,
            p_best(&[(60, 1000), (30, 1000), (45, 1000)]),
            "seeded"
        );
        assert_eq!(two_proportion_p(0, 0, 1, 10), None);
    }
}
