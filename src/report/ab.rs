//! A/B verdicts for every `split` step. The unit is the run that got a variant, by its first
//! email of the step: per variant its sends, its runs, the runs whose first email of it was
//! clicked, the runs that entered the next stage for the first time after it, and the stage's
//! offer bought after it per run; each variant's conversion against the first's
//! (two-proportion z-test, two-sided p-value), a chi-square test across all the variants, the
//! probability that each converts best (Beta(1, 1) posteriors, drawn with a fixed seed), and
//! a verdict in plain words once every variant has a minimum sample. Made from the A/B
//! counters (`ab␟STEP␟TEMPLATE␟WHAT`), kept as the emails are written or made again from the
//! rows. Entry cohort: the period's runs, and what came of each one's first email of the split
//! up to now. Calendar view: the first emails queued in the period, and what came of them.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Cohort, Rate};
use crate::funnel::{Action, Funnel, Send};
use crate::tally::{Figures, Micros, View, ab, metric};

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

/// One variant's counters summed over the report's period.
#[derive(Debug, Clone, Default)]
struct Sums {
    sends: u64,
    runs: u64,
    clicked: u64,
    /// Runs that entered each stage for the first time after the email.
    reached: BTreeMap<String, u64>,
    /// Per product, per currency: the total of the orders credited after the email.
    bought: BTreeMap<(String, String), Micros>,
}

/// The A/B report of `f` from its counters summed over `[from, to)`
/// ([`crate::tally::metric::AB`]): the runs that entered in the period and what came of
/// each one's first email of the split (entry cohort), or the first emails queued in the
/// period and what came of them (calendar).
pub fn ab_report(
    f: &Funnel,
    fig: &Figures,
    cohort: Cohort,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> AbReport {
    let view = match cohort {
        Cohort::Entry => View::Entry,
        Cohort::Calendar => View::Calendar,
    };
    // (stage, step) → template → its sums.
    let mut found: BTreeMap<(String, String), BTreeMap<String, Sums>> = BTreeMap::new();
    for (stage, m, sum) in fig.of_view(view) {
        let Some(rest) = m.strip_prefix(metric::AB) else {
            continue;
        };
        let mut parts = rest.splitn(3, '\u{1f}');
        let (Some(step), Some(template), Some(what)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let s = found
            .entry((stage.to_string(), step.to_string()))
            .or_default()
            .entry(template.to_string())
            .or_default();
        let n = sum.n.max(0) as u64;
        match what {
            ab::SENDS => s.sends += n,
            ab::RUNS => s.runs += n,
            ab::CLICKED => s.clicked += n,
            _ => {
                if let Some(stage) = what.strip_prefix(ab::REACHED) {
                    *s.reached.entry(stage.to_string()).or_default() += n;
                } else if let Some((product, currency)) = what
                    .strip_prefix(ab::BUY)
                    .and_then(|r| r.split_once('\u{1f}'))
                {
                    s.bought
                        .entry((product.to_string(), currency.to_string()))
                        .or_default()
                        .0 += sum.total.0;
                }
            }
        }
    }
    let variant = |stage: &str, step: &str, template: &str, removed: bool| {
        let s = found
            .get(&(stage.to_string(), step.to_string()))
            .and_then(|ts| ts.get(template))
            .cloned()
            .unwrap_or_default();
        let i = f.stages.iter().position(|x| x.id.value.as_str() == stage);
        let next = i
            .and_then(|i| f.stages.get(i + 1))
            .map(|x| x.id.value.as_str());
        let offer = i
            .and_then(|i| f.stages[i].offer.as_ref())
            .map(|o| o.value.as_str());
        let n = s.runs;
        let converted = next.and_then(|x| s.reached.get(x)).copied().unwrap_or(0);
        Variant {
            template: template.to_string(),
            removed,
            sends: s.sends,
            leads: n,
            clicked: Rate::of(s.clicked, n),
            converted: Rate::of(converted, n),
            revenue_per_lead: s
                .bought
                .iter()
                .filter(|((product, _), _)| Some(product.as_str()) == offer)
                .map(|((_, c), t)| (c.clone(), if n > 0 { t.units() / n as f64 } else { 0.0 }))
                .collect(),
            p_value: None,
            p_best: None,
        }
    };
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
            .map(|v| variant(stage, &step, v, false))
            .collect();
        let (test, p_value, verdict) = verdict(&mut figures);
        // Variants sent before and no longer in the split: shown, out of the test.
        let gone = found
            .get(&(stage.to_string(), step.clone()))
            .into_iter()
            .flat_map(|ts| ts.keys())
            .filter(|t| !variants.contains(&t.as_str()));
        for t in gone {
            figures.push(variant(stage, &step, t, true));
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
    for ((stage, step), templates) in &found {
        if templates.len() < 2 || current.contains(&(stage.clone(), step.clone())) {
            continue;
        }
        let mut figures: Vec<Variant> = templates
            .keys()
            .map(|t| variant(stage, step, t, true))
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
        cohort,
        tz: "UTC".into(),
        from,
        to,
        splits,
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
