//! Charts as inline SVG, made from report figures: the funnel chart (a bar per stage, narrowing,
//! with each stage's conversion and revenue on it) — the dashboard's and `report --format svg`'s
//! — and a sparkline. Pure; no script, no external asset.

use crate::locale::{self, Language};
use crate::report::FunnelReport;

/// Text safe inside SVG (XML) content and attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The funnel chart of a report: the runs that entered, then a bar per stage as wide as the
/// leads that entered it, centred so the bars narrow; beside each, its conversion from entry
/// and to the next stage, and its revenue. `title` names it for screen readers.
pub fn funnel(r: &FunnelReport, lang: Language, title: &str) -> String {
    const W: i64 = 760;
    const LABEL: i64 = 170;
    const BARS: i64 = 360;
    const ROW: i64 = 54;
    let rows: Vec<(String, u64, Vec<String>)> = std::iter::once((
        match lang {
            Language::En => "entered".to_string(),
            Language::Ru => "вошли".to_string(),
        },
        r.entered,
        vec![format!(
            "{} {}",
            locale::percent(r.converted.percent, lang),
            match lang {
                Language::En => "converted",
                Language::Ru => "конверсия",
            }
        )],
    ))
    .chain(r.stages.iter().filter(|s| !s.removed).map(|s| {
        let mut notes = vec![format!(
            "{} {}",
            locale::percent(s.from_entry.as_ref().and_then(|x| x.percent), lang),
            match lang {
                Language::En => "of entries",
                Language::Ru => "от входа",
            }
        )];
        if let Some(n) = &s.to_next {
            notes.push(format!(
                "{} {}",
                locale::percent(n.percent, lang),
                match lang {
                    Language::En => "to next",
                    Language::Ru => "в следующий",
                }
            ));
        }
        for rev in &s.revenue {
            notes.push(locale::money(rev.total, &rev.currency, lang));
        }
        (s.stage.clone(), s.leads_in, notes)
    }))
    .collect();
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let height = 20 + ROW * rows.len() as i64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {height}\" width=\"100%\" \
         role=\"img\" aria-label=\"{}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"14\">\
         <title>{}</title>",
        esc(title),
        esc(title)
    );
    for (i, (name, n, notes)) in rows.iter().enumerate() {
        let y = 10 + ROW * i as i64;
        let width = ((*n as f64 / max as f64) * BARS as f64).round() as i64;
        let x = LABEL + (BARS - width) / 2;
        let bar = if width > 0 {
            format!(
                "<rect x=\"{x}\" y=\"{y}\" width=\"{width}\" height=\"38\" rx=\"3\" fill=\"#0b6bcb\"/>"
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#1f2328\">{}</text>{bar}\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{}\" font-weight=\"bold\">{}</text>",
            LABEL - 10,
            y + 24,
            esc(name),
            LABEL + BARS / 2,
            y + 24,
            if width > 70 { "#ffffff" } else { "#1f2328" },
            esc(&locale::count(*n, lang)),
        ));
        for (k, note) in notes.iter().take(3).enumerate() {
            out.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" fill=\"#57606a\" font-size=\"12\">{}</text>",
                LABEL + BARS + 14,
                y + 12 + 13 * k as i64,
                esc(note)
            ));
        }
    }
    out.push_str("</svg>");
    out
}

/// A sparkline of `values` (oldest first), `title` saying what it shows.
pub fn sparkline(values: &[u64], title: &str) -> String {
    const W: f64 = 150.0;
    const H: f64 = 32.0;
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = if values.len() > 1 {
        W / (values.len() - 1) as f64
    } else {
        0.0
    };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                H - 2.0 - (*v as f64 / max) * (H - 4.0)
            )
        })
        .collect();
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" \
         role=\"img\" aria-label=\"{t}\"><title>{t}</title>\
         <polyline points=\"{}\" fill=\"none\" stroke=\"#0b6bcb\" stroke-width=\"2\"/></svg>",
        points.join(" "),
        t = esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_in_charts_is_escaped() {
        assert_eq!(esc("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
        let s = sparkline(&[0, 5, 10], "a<b");
        assert!(s.contains("<title>a&lt;b</title>"), "{s}");
        assert!(s.contains("points=\"0.0,30.0 75.0,16.0 150.0,2.0\""), "{s}");
    }
}
